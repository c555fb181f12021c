"""Tasks: one small function per `task=NAME`, translating a Hydra config into library calls."""

from __future__ import annotations

import importlib
from typing import Any

from omegaconf import DictConfig

from ptmz.errors import choose

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
    return getattr(importlib.import_module(module), function)(cfg)
