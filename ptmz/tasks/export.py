"""task=export: the population as a dataset directory (`ptmz.zoo.export`)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ptmz.analysis.phases import PhaseThresholds
from ptmz.tasks.population import Workspace, fail_if_incomplete
from ptmz.zoo.export import export_population


def export(cfg: DictConfig) -> dict[str, Any]:
    population = Workspace(cfg).population
    epochs = list(cfg.epoch) if isinstance(cfg.epoch, ListConfig) else cfg.epoch
    summary = export_population(
        population,
        cfg.task.out or population.path / "export",
        epochs,
        PhaseThresholds.from_config(OmegaConf.to_container(cfg.task.thresholds)),
        cfg.task.shard_mb,
        cfg.task.license,
        cfg.overwrite,
    )
    for e in summary["excluded"]:
        print(f"left out {e['run']} epoch {e['epoch']}: {e['reason']}")
    print(
        f"exported {summary['models']} checkpoints of {summary['runs']} runs "
        f"({summary['shards']} shards) to {summary['out']}"
    )
    fail_if_incomplete(population.damaged)  # listed in the card; the job says so too
    return summary
