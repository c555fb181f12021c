"""What a task shows while it runs: bars in a terminal only, log lines a person can read
elsewhere, and the threads it computes with."""

import os
import re

import pytest
import torch

from ptmz.errors import ConfigError
from ptmz.progress import remaining
from ptmz.tasks import usable_cpus, use_threads
from ptmz.train.run import epoch_line

from conftest import launch


def test_time_left_is_the_pace_so_far_times_the_units_left():
    assert remaining(3, 12, 90.0) == "3/12, about 4 min 30 s left"
    assert remaining(1, 400, 30.0) == "1/400, about 3 h 19 min left"
    assert remaining(12, 12, 500.0) == "12/12"


def test_an_epoch_is_logged_as_a_line_not_a_dict():
    record = {"epoch": 3, "train_loss": 0.123456, "test_acc": 0.95, "lr": None, "seconds": 1.26}
    assert epoch_line(record) == "train_loss 0.1235  test_acc 0.95  (1.3 s)"


def test_output_that_is_not_a_terminal_gets_log_lines_and_no_bars(tmp_path):
    # launch() captures the output: stderr is a pipe, as in a batch job's log file
    result = launch("width=2", "batch_size=128", "epochs=2", f"out_dir={tmp_path}", "progress=true")
    assert result.returncode == 0, result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    epochs = [line for line in lines if " epoch 2/2: train_loss " in line]
    assert len(epochs) == 1 and "{" not in epochs[0]
    assert not any("it/s" in line or "\r" in line for line in lines)  # no redrawn bar


def test_threads_default_to_the_cpus_this_process_may_use(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")  # a SLURM allocation of one CPU
        assert usable_cpus() == 1
        use_threads(None)
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("SLURM_CPUS_PER_TASK")
        assert usable_cpus() == len(os.sched_getaffinity(0))
        use_threads(None)
        assert torch.get_num_threads() == len(os.sched_getaffinity(0))
        use_threads(3)  # the key wins
        assert torch.get_num_threads() == 3
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # set by the user: left to torch
        use_threads(None)
        assert torch.get_num_threads() == 3
        with pytest.raises(ConfigError, match="threads=0 is not allowed"):
            use_threads(0)
    finally:
        torch.set_num_threads(before)


def test_log_folders_are_named_after_the_task(tmp_path):
    result = launch("task=status", f"out_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    (folder,) = (tmp_path / "logs").iterdir()
    assert folder.name.endswith("_status")


def test_a_local_sweep_says_how_many_jobs_are_done_and_how_long_the_rest_takes(tmp_path):
    result = launch(
        "-m", "width=2", "batch_size=64,128", "seed=0", "epochs=1", f"out_dir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr
    log = result.stdout + result.stderr
    assert re.search(r"sweep jobs done: 1/2, about \d+ min \d\d s left", log), log
    assert "sweep jobs done: 2/2" in log
