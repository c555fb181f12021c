"""task=train: the training runs of one job, one grid point or several packed together."""

from __future__ import annotations

import itertools
import threading
from functools import partial

import torch
from omegaconf import DictConfig, OmegaConf

from ptmz.data.text import corpus_id
from ptmz.errors import ConfigError
from ptmz.train import RunSpec, train_run, train_together
from ptmz.train.at_once import MAX_CUDA_WORKERS, at_once
from ptmz.train.loop import resolve_device
from ptmz.zoo import RunDir

RUN_KEYS = (
    "width",
    "batch_size",
    "lr",
    "data_fraction",
    "beta",
    "epochs",
    "seed",
    "subset_seed",
    "out_dir",
    "data_root",
    "device",
    "checkpoints",
    "progress",
    "precision",
    "eval_precision",
    "compile",
    "cuda_graph",
    "temperature",
    "load",
)


def spec_from_config(cfg: DictConfig) -> RunSpec:
    """The run spec of a composed ptmz config (top-level scalars + model/dataset/recipe groups)."""
    return RunSpec.from_dict(
        dict(
            zoo=cfg.zoo_name,
            dataset=cfg.dataset.name,
            download=cfg.dataset.download,
            model=cfg.model.name,
            recipe=OmegaConf.to_container(cfg.recipe, resolve=True),
            corpus=corpus_id(cfg.data_root) if cfg.dataset.name == "text" else None,
            logger=cfg.logger.name,
            **{
                k: OmegaConf.to_object(cfg[k]) if OmegaConf.is_config(cfg[k]) else cfg[k]
                for k in RUN_KEYS
            },
        )
    )


PACKABLE = ("width", "batch_size", "lr", "data_fraction", "seed", "subset_seed")


def packed_configs(cfg: DictConfig) -> list[DictConfig]:
    """The runs of one job. A list value of a grid key (`seed=[0,1,2]`) packs every combination
    of the list values into the job, trained one after another, so small models share one job
    (and its GPU) instead of holding one each."""
    lists = {key: list(cfg[key]) for key in PACKABLE if OmegaConf.is_list(cfg[key])}
    for key, values in lists.items():
        if not values:
            raise ConfigError(key, values, "a value, or a non-empty list of values to pack")
    configs = []
    for values in itertools.product(*lists.values()):
        run_cfg = cfg.copy()
        for key, value in zip(lists, values, strict=True):
            run_cfg[key] = value
        configs.append(run_cfg)
    return configs


def train(cfg: DictConfig) -> str | list[str]:
    """Train the job's runs, `concurrent` at a time (each in a thread and, on CUDA, a stream of
    its own), with `seeds_together` the seeds of each grid point as one vectorised model that
    counts as one. A failing run (marked `failed` in its directory) does not stop the others,
    and the first failure is raised after all have been tried."""
    if not isinstance(cfg.seeds_together, bool):
        raise ConfigError("seeds_together", cfg.seeds_together, "true or false")
    concurrent = cfg.concurrent
    if isinstance(concurrent, bool) or not isinstance(concurrent, int) or concurrent < 1:
        raise ConfigError("concurrent", concurrent, "a whole number of runs, 1 or more")
    if concurrent > 1 and cfg.compile is True:
        raise ConfigError(
            "compile", True, "false with concurrent > 1 (inductor's CUDA graphs are per thread)"
        )
    states, failures, specs = [], [], []
    for run_cfg in packed_configs(cfg):
        try:
            specs.append(spec_from_config(run_cfg))
        except ConfigError as error:  # one bad packed value: the other runs still train
            states.append("failed")
            failures.append(error)
    specs = list(dict.fromkeys(specs))  # a run named twice (seed=[0,0]) is trained once
    if cfg.seeds_together:
        groups = [
            [s for s in specs if s.grid_point == key]
            for key in dict.fromkeys(s.grid_point for s in specs)
        ]
    else:
        groups = [[spec] for spec in specs]
    device = resolve_device(specs[0].device) if specs and concurrent > 1 else torch.device("cpu")
    if device.type == "cuda" and concurrent > MAX_CUDA_WORKERS:
        raise ConfigError(
            "concurrent", concurrent, f"at most {MAX_CUDA_WORKERS} on CUDA: a stream each"
        )
    outcomes = at_once([partial(_train_group, group) for group in groups], concurrent, device)
    for group, outcome in zip(groups, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            states += [RunDir(s.run_dir).state for s in group]
            failures.append(outcome)
        else:
            states += outcome
    if failures:
        raise failures[0]
    return states[0] if len(states) == 1 else states


def _train_group(group: list[RunSpec], stop: threading.Event) -> list[str]:
    """The states of one grid point's runs, trained together where there are several."""
    return train_together(group, stop) if len(group) > 1 else [train_run(group[0], stop)]
