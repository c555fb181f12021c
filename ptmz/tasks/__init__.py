"""Tasks: one small function per `task=NAME`, translating a Hydra config into library calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from ptmz.errors import choose
from ptmz.tasks.train import train

TASKS: dict[str, Callable[[DictConfig], Any]] = {"train": train}


def run_task(cfg: DictConfig) -> Any:
    return choose("task", cfg.task.name, TASKS)(cfg)
