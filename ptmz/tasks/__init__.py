"""Tasks: one small function per `task=NAME`, translating a Hydra config into library calls."""

from __future__ import annotations

import importlib
import os
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm.contrib.logging import logging_redirect_tqdm

from ptmz.errors import ConfigError, choose

# task name -> "module:function", imported on use so a training job loads no metric code
TASKS = {
    "train": "ptmz.tasks.train:train",
    "status": "ptmz.tasks.status:status",
    "hessian": "ptmz.tasks.hessian:hessian",
    "cka": "ptmz.tasks.pairs:cka",
    "curve": "ptmz.tasks.pairs:curve",
    "interpolate": "ptmz.tasks.pairs:interpolate",
    "average_epochs": "ptmz.tasks.averaging:average_epochs",
    "average_seeds": "ptmz.tasks.averaging:average_seeds",
    "ensemble": "ptmz.tasks.averaging:ensemble",
    "finetune": "ptmz.tasks.averaging:finetune_run",
    "prune": "ptmz.tasks.averaging:prune",
    "collect": "ptmz.tasks.analysis:collect",
    "export": "ptmz.tasks.export:export",
    "plot": "ptmz.tasks.analysis:plot",
    "study": "ptmz.tasks.study:study",
}
# the population tasks: what task=study may measure; those of the second kind write one result
# per grid point (comparing its seeds), the others one per run
RUN_TASKS = ("hessian", "average_epochs", "finetune", "prune")
GRID_POINT_TASKS = ("cka", "curve", "interpolate", "average_seeds", "ensemble")


def run_task(cfg: DictConfig) -> Any:
    module, function = choose("task", cfg.task.name, TASKS).split(":")
    use_threads(cfg.get("threads"))
    with logging_redirect_tqdm():  # log lines above a terminal's bars, not through them
        return getattr(importlib.import_module(module), function)(cfg)


def usable_cpus() -> int:
    """The CPUs this process may use: its SLURM allocation inside a job, else its affinity
    mask (a container's or taskset's share), not the machine's count that torch assumes."""
    allocated = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(allocated) if allocated.isdigit() else len(os.sched_getaffinity(0))


def use_threads(threads: Any) -> None:
    """torch's CPU threads: `threads`, or else (null) what OMP_NUM_THREADS says where it is set,
    else the CPUs this process may use."""
    if threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return
        threads = usable_cpus()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError("threads", threads, "a number of CPU threads >= 1, or null (automatic)")
    torch.set_num_threads(threads)
