"""task=status on a sweep whose runs are done, running, failed and not started."""

from __future__ import annotations

import json
import shutil

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
    grid = ["width=4", "batch_size=[32,64]", "seed=[0,1]", "epochs=3"]
    result = launch("task=status", f"out_dir={tmp_path}", *grid)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("batch_size \\ width"))
    assert lines[header + 1].split() == ["32", "D", "R2/3"]  # seed 0 done, seed 1 at epoch 2
    assert lines[header + 2].split() == ["64", "F", "."]  # seed 1 was never launched
    assert "4 runs: 1 done, 1 running, 1 failed, 1 not started" in result.stdout
    assert f"failed: {runs['w4_bs64_s0'].resolve()}: OutOfMemoryError: x" in result.stdout
