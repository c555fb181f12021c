"""Pre-flight: a sweep checks every job, and makes its datasets present, before launching any;
on a problem it launches nothing and names each distinct problem once."""

from __future__ import annotations

from pathlib import Path

from conftest import launch


def _launched(out: Path) -> list[Path]:
    """What any launched job would have left: run directories or a sweep's log folder."""
    return [*out.glob("*/w*"), *out.glob("logs/*")]


def test_a_missing_dataset_is_named_once_and_nothing_is_launched(tmp_path):
    data, out = tmp_path / "data", tmp_path / "zoos"
    grid = ["zoo=cifar10_resnet18", "width=8,16", "seed=0,1", "epochs=1"]
    refused = ["dataset.download=false", f"data_root={data}", f"out_dir={out}"]
    result = launch("-m", *grid, *refused)
    assert result.returncode == 1
    log = result.stdout + result.stderr
    problems = [line for line in log.splitlines() if "pre-flight: dataset=cifar10" in line]
    assert len(problems) == 1, log
    assert f"not found in {data}" in problems[0] and "[32 jobs, e.g. " in problems[0]
    assert "stopping 32 of 32 jobs" in log and "nothing was launched" in log
    assert "Launching" not in log and not _launched(out)


def test_one_bad_grid_value_among_good_ones_launches_nothing(tmp_path):
    out = tmp_path / "zoos"
    result = launch("-m", "width=2", "batch_size=9999,64", "seed=0,1", "epochs=1", f"out_dir={out}")
    assert result.returncode == 1
    log = result.stdout + result.stderr
    assert log.count("batch_size=9999 is not allowed") == 1  # once, for its 2 jobs
    assert "[2 jobs, e.g. width=2 batch_size=9999 seed=0" in log
    assert "stopping 2 of 4 jobs" in log
    assert not _launched(out)


def test_population_tasks_are_checked_too(tmp_path):
    missing = tmp_path / "nothing"
    result = launch("-m", "task=cka", f"population={missing}", "num_shards=2", "shard=0,1")
    assert result.returncode == 1
    log = result.stdout + result.stderr
    assert log.count(f"population='{missing}' is not allowed") == 1
    assert "[2 jobs, e.g. task=cka" in log


def test_a_sweep_with_nothing_left_checks_nothing(tmp_path):
    grid = ["-m", "width=2", "batch_size=128", "seed=0", "epochs=1", f"out_dir={tmp_path}"]
    first = launch(*grid)
    assert first.returncode == 0, first.stderr
    assert "pre-flight: 1 jobs checked" in first.stdout + first.stderr
    # finished runs are skipped first: even a data_root that cannot hold data is never looked at
    again = launch(*grid, "data_root=/proc/no-such-folder")
    assert again.returncode == 0, again.stderr
    assert "pre-flight" not in again.stdout + again.stderr
    assert "1 of 1 jobs already finished" in again.stdout + again.stderr
