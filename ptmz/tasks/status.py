"""task=status: the zoo's sweep grid with the state of every run (run it without -m)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from ptmz.columns import GRID_KEYS
from ptmz.errors import ConfigError, PtmzError, choose
from ptmz.study.record import StudyRecord
from ptmz.tasks.train import RUN_KEYS, spec_from_config
from ptmz.train.spec import LOADS, TEMPERATURES
from ptmz.zoo.rundir import FINISHED, RunDir
from ptmz.zoo.status import RunStatus, status_grid


def hydra_node(cfg: DictConfig) -> DictConfig | None:
    """The Hydra settings `cfg` was composed with: those of the running app, or those composed
    into it (`compose(..., return_hydra_config=True)`, in a notebook); None without Hydra."""
    if "hydra" in cfg:
        return cfg.hydra
    return HydraConfig.get() if HydraConfig.initialized() else None


def sweep_axes(cfg: DictConfig) -> tuple[dict[str, list], dict[str, list]]:
    """The values of every axis of the zoo's sweep (`hydra.sweeper.params`), with the values
    named on the command line in place of the zoo's: `width=8` narrows the grid, `seed=[0,1,2]`
    (a list: Hydra accepts commas only with -m) extends it; and the axes the command line
    named."""
    axes: dict[str, list] = {}
    named: dict[str, list] = {}
    hydra = hydra_node(cfg)
    if hydra is None:
        raise PtmzError("the zoo's sweep is read from Hydra: compose with return_hydra_config")
    for key, text in (hydra.sweeper.params or {}).items():
        if "(" in str(text):
            raise ConfigError(key, text, "a comma-separated list (status expands no functions)")
        axes[key] = _values(f"{key}={text}")
    for override in hydra.overrides.task:
        key = override.partition("=")[0]
        if key in axes or key in RUN_KEYS:
            axes[key] = named[key] = _values(override)
    return axes, named


def values_grid(zoo: Path, names: list[str], column: str, rows: str, columns: str) -> str:
    """`column` of the results table at each grid point (mean over its seeds, at its last
    epoch) as a rows x columns text grid."""
    from ptmz.analysis.phases import grid_point_means
    from ptmz.analysis.table import results_table
    from ptmz.zoo.population import Population

    if not names:
        return f"{column}: no finished run to show"
    table = results_table(Population(zoo, only=names))
    if column not in table.columns:
        shown = [c for c in table.columns if c not in ("run", "grid_point", "path")][:12]
        raise ConfigError("task.show", column, f"a column of the results table, e.g. {shown}")
    means = grid_point_means(table, [column])
    last = means.sort_values("epoch").groupby("grid_point").tail(1)
    row_values, col_values = sorted(last[rows].unique()), sorted(last[columns].unique())
    cells = {(r[rows], r[columns]): r[column] for _, r in last.iterrows()}
    text = [[f"{rows} \\ {columns}", *(f"{c:g}" for c in col_values)]]
    for row in row_values:
        values = [cells.get((row, c)) for c in col_values]
        text.append([f"{row:g}", *("" if v is None or v != v else f"{v:.4g}" for v in values)])
    widths = [max(len(line[i]) for line in text) for i in range(len(text[0]))]
    grid = "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in text
    )
    return f"\n{column} (mean over seeds, last epoch)\n{grid}"


def with_values(cfg: DictConfig, values: dict[str, Any]) -> DictConfig:
    """A copy of `cfg` with the grid `values` (width, seed, ...) set: one run's config."""
    cfg = cfg.copy()
    for key, value in values.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def _values(override: str) -> list:
    """The values `key=text` stands for, read by Hydra's own grammar as -m reads a sweep (1e-4
    is a number there, a string in YAML): a sweep's or a list's items, or the one value."""
    (parsed,) = OverridesParser.create().parse_overrides([override])
    if parsed.is_sweep_override():
        return list(parsed.sweep_iterator())
    value = parsed.value()
    return list(value) if isinstance(value, list) else [value]


def status(cfg: DictConfig) -> dict[str, int]:
    choose("task.temperature", cfg.task.temperature, dict.fromkeys(TEMPERATURES))
    choose("task.load", cfg.task.load, dict.fromkeys(LOADS))
    expected = {}
    axes, named = sweep_axes(cfg)
    for combo in itertools.product(*axes.values()):
        point = dict(zip(axes, combo, strict=True))
        spec = spec_from_config(with_values(cfg, point))
        expected[spec.run_dir.resolve()] = {k: getattr(spec, k) for k in GRID_KEYS}
    zoo = Path(cfg.out_dir) / cfg.zoo_name
    for run in sorted(zoo.glob("*/config.json")):  # runs of other sweeps into this zoo,
        path = run.parent.resolve()  # within what the command line narrowed the grid to
        if path not in expected:
            run = RunDir(path)
            config = {} if run.damage else run.config  # a damaged config: a run of no cell
            if all(config.get(key) in values for key, values in named.items()):
                expected[path] = {k: config.get(k) for k in GRID_KEYS}
    if not isinstance(cfg.task.verify, bool):
        raise ConfigError("task.verify", cfg.task.verify, "true or false")
    runs = [RunStatus.of(path, grid, cfg.task.verify) for path, grid in expected.items()]
    print(f"{zoo}\n" + status_grid(runs, cfg.task.temperature, cfg.task.load))
    if cfg.task.show is not None:
        finished = [r.path.name for r in runs if r.state in FINISHED]
        print(
            values_grid(zoo.resolve(), finished, cfg.task.show, cfg.task.temperature, cfg.task.load)
        )
    if record := StudyRecord.read(zoo.resolve()):
        print("\n".join(record.lines()))
    return {state: sum(r.state == state for r in runs) for state in {r.state for r in runs}}
