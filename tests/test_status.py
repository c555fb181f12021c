"""task=status on a sweep whose runs are done, running, failed and not started."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ptmz.data import Augment
from ptmz.train import Recipe, RunSpec
from ptmz.zoo import RunDir

from conftest import launch


def test_status_shows_every_run_of_the_grid(digits_population, tmp_path):
    zoo = shutil.copytree(digits_population, tmp_path / "digits_resnet18")
    runs = {p.name.split("-")[0]: p for p in zoo.iterdir() if (p / "status.json").exists()}
    (runs["w4_bs32_s1"] / "status.json").write_text(
        json.dumps({"state": "running", "epoch": 2, "epochs": 3})
    )
    (runs["w4_bs64_s0"] / "status.json").write_text(
        json.dumps({"state": "failed", "epoch": 1, "epochs": 3, "error": "OutOfMemoryError: x"})
    )
    digits = Recipe(augment=Augment(crop_padding=1, hflip=False, rotation=10))
    spec = RunSpec(width=4, batch_size=32, seed=2, epochs=3, recipe=digits, out_dir=str(tmp_path))
    diverged = RunDir(spec.run_dir)
    diverged.create(spec.to_dict())
    diverged.write_status("diverged", epoch=1, epochs=3)
    grid = ["width=4", "batch_size=[32,64]", "seed=[0,1,2]", "epochs=3"]
    result = launch("task=status", f"out_dir={tmp_path}", *grid)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("batch_size \\ width"))
    # seeds 0, 1, 2 in order: done, at epoch 2 of 3, diverged; failed and never launched
    assert lines[header + 1].split() == ["32", "D", "R2/3", "X"]
    assert lines[header + 2].split() == ["64", "F", ".", "."]
    assert "6 runs: 1 done, 1 running, 1 failed, 1 diverged, 2 not started" in result.stdout
    assert f"failed: {runs['w4_bs64_s0'].resolve()}: OutOfMemoryError: x" in result.stdout


def test_values_named_on_the_command_line_narrow_the_runs_shown(digits_population, tmp_path):
    """Runs in the folder from other sweeps are shown only within the narrowed grid."""
    shutil.copytree(digits_population, tmp_path / "digits_resnet18")
    grid = ["width=4", "seed=[0,1]", "epochs=3"]
    narrowed = launch("task=status", f"out_dir={tmp_path}", "batch_size=32", *grid)
    assert narrowed.returncode == 0, narrowed.stderr
    assert "2 runs: 2 done" in narrowed.stdout
    rows = [line.split() for line in narrowed.stdout.splitlines()]
    assert ["32", "D", "D"] in rows and not [row for row in rows if row[:1] == ["64"]]
    wider = launch("task=status", f"out_dir={tmp_path}", "batch_size=[32,64]", *grid)
    assert "4 runs: 3 done, 1 not started" in wider.stdout


def test_command_line_values_are_read_as_a_sweep_reads_them(tmp_path):
    """`lr=1e-4` is a number to Hydra's grammar (and to a training sweep), a string to YAML."""
    result = launch("task=status", "zoo=convection_pinn", "lr=1e-4", f"out_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["0.0001"] + [".", "."] * 7 in rows  # lr 1e-4: 7 betas x 2 seeds, none started
    assert "14 runs: 14 not started" in result.stdout


def test_axes_the_status_cannot_draw_are_named(tmp_path):
    result = launch("task=status", "task.temperature=seeds", f"out_dir={tmp_path}")
    assert result.returncode == 2
    assert "task.temperature='seeds' is not allowed: choose one of batch_size, lr" in result.stderr


def test_runs_that_do_not_set_an_axis_sort_first():
    from ptmz.zoo.status import RunStatus, status_grid

    runs = [
        RunStatus(
            Path(f"/r{i}"), {"lr": lr, "width": 2, "seed": 0}, "not started", 0, 1, None, None
        )
        for i, lr in enumerate([0.1, None])
    ]
    rows = [line.split()[0] for line in status_grid(runs, "lr", "width").splitlines()[1:3]]
    assert rows == ["None", "0.1"]


def test_status_shows_a_results_column_in_each_cell(digits_population, tmp_path):
    zoo = shutil.copytree(digits_population, tmp_path / "digits_resnet18")
    grid = ["width=4", "batch_size=[32,64]", "seed=[0,1]", "epochs=3"]
    result = launch("task=status", f"out_dir={tmp_path}", *grid, "task.show=test_acc")
    assert result.returncode == 0, result.stderr
    # the oracle: each run's own last record, averaged over the grid point's seeds
    last = {}
    for path in zoo.glob("*/metrics.jsonl"):
        run = RunDir(path.parent)
        last.setdefault(run.config["batch_size"], []).append(run.records[-1]["test_acc"])
    lines = result.stdout.splitlines()
    at = lines.index("test_acc (mean over seeds, last epoch)")
    assert lines[at + 1].split() == ["batch_size", "\\", "width", "4"]
    for offset, batch_size in ((2, 32), (3, 64)):
        row = lines[at + offset].split()
        expected = sum(last[batch_size]) / len(last[batch_size])
        assert row[0] == str(batch_size) and float(row[1]) == pytest.approx(expected, abs=5e-4)
    wrong = launch("task=status", f"out_dir={tmp_path}", *grid, "task.show=accuracy")
    assert wrong.returncode == 2 and "task.show='accuracy' is not allowed" in wrong.stderr
