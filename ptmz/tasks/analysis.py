"""task=collect (the results table as parquet and CSV) and task=plot (the phase-diagram
figures), both written into the population's folder."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf

from ptmz.analysis.figures import Axes2D, landscape_epochs, phase_diagram, phase_evolution
from ptmz.analysis.phases import PhaseThresholds, classify_phases
from ptmz.analysis.table import results_table, save_table
from ptmz.errors import ConfigError
from ptmz.io import atomic_write
from ptmz.tasks.population import Workspace, fail_if_incomplete

log = logging.getLogger(__name__)


def _thresholds(cfg: DictConfig) -> PhaseThresholds:
    return PhaseThresholds.from_config(OmegaConf.to_container(cfg.task.thresholds))


def collect(cfg: DictConfig) -> dict[str, str]:
    population = Workspace(cfg).population
    table = results_table(population, _thresholds(cfg))
    parquet, csv = save_table(table, population.path / "results")
    print(f"{len(table)} rows (runs x epochs) x {len(table.columns)} columns")
    for path in (parquet, csv):
        print(f"wrote {path}")
    fail_if_incomplete(population.damaged, table.attrs["damaged"])  # written without them
    return {"parquet": str(parquet), "csv": str(csv)}


def _epochs(requested: Any, table: pd.DataFrame, measured: list[int]) -> tuple[list[int], bool]:
    """(epochs to draw a diagram at, whether to draw the evolution too)."""
    available = sorted(int(e) for e in table["epoch"].unique())
    latest = measured[-1] if measured else available[-1]
    if requested is None:
        return [latest], False
    if requested == "all":
        if len(measured) < 2:
            log.info("landscape results exist at epochs %s only: one phase map", measured)
        return [latest], True
    if isinstance(requested, str):
        raise ConfigError("epoch", requested, f"null, all, or epochs of the table: {available}")
    epochs = list(requested) if isinstance(requested, ListConfig | Sequence) else [requested]
    for epoch in epochs:
        if not isinstance(epoch, int) or epoch not in available:
            raise ConfigError("epoch", epoch, f"null, all, or epochs of the table: {available}")
    return epochs, len(epochs) > 1


def save_figure(fig: Any, stem: Path) -> list[Path]:
    """`fig` as `stem`.png and `stem`.pdf."""
    paths = []
    for fmt in ("png", "pdf"):
        path = stem.with_suffix(f".{fmt}")
        atomic_write(path, lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt, dpi=150))
        paths.append(path)
    return paths


def plot(cfg: DictConfig) -> dict[str, Any]:
    matplotlib.use("Agg")  # files only, also where no display exists
    t, population = cfg.task, Workspace(cfg).population
    thresholds = _thresholds(cfg)
    table = results_table(population, thresholds)
    axes = Axes2D.of(table, t.temperature, t.load)
    classification = classify_phases(table, thresholds)
    # where phases can be told; else where any landscape metric was measured, e.g. CKA alone
    measured = classification.classified_epochs() or landscape_epochs(table, thresholds)
    epochs, evolution = _epochs(cfg.epoch, table, measured)
    title = population.path.name
    written, drawn, omitted = [], {}, {}
    for epoch in epochs:
        fig, drawn[epoch], omitted[epoch] = phase_diagram(
            table, epoch, list(t.metrics), thresholds, axes, title, classification
        )
        written += save_figure(fig, population.path / f"phase_diagram_epoch_{epoch:04d}")
    if evolution:
        over = measured if cfg.epoch == "all" and measured else epochs
        fig = phase_evolution(table, over, thresholds, axes, title, classification)
        written += save_figure(fig, population.path / "phase_evolution")
    for line in classification.lines():
        log.info("threshold: %s", line)
    for path in written:
        print(f"wrote {path}")
    fail_if_incomplete(population.damaged, table.attrs["damaged"])  # drawn without them
    return {"files": [str(p) for p in written], "drawn": drawn, "omitted": omitted}
