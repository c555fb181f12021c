"""The results table of a population: one row per run and epoch, every number measured on it.

Columns, in order:

    run, grid_point, format, state, dataset,      which run (format: ptmz | published; state:
    model                                         done | diverged, its records up to divergence)
    width, batch_size, lr, data_fraction, seed    its grid coordinates
    epoch                                         the state after this many epochs
    train_loss, train_acc, test_loss, test_acc,   that epoch's training record, as stored (ptmz:
    ...                                           metrics.jsonl; published: the result.json line)
    train_error                                   1 - train_acc: how far the model is from
                                                  fitting its training data (phases' `fit`)
    generalization_gap                            train_acc - test_acc (accuracy points)
    <result>.<key>.<key>...                       every result file of the run, or of its grid
                                                  point, at this epoch
    phase                                         I | II | III | IV-A | IV-B, or missing
                                                  (`ptmz.analysis.phases`)
    config.<key>...                               the rest of the run's config

Result columns are the result's name (the file's stem without `_epoch_XXXX`) and the path of
keys down to a number, joined by dots: `hessian.train.trace`, `cka.mean.logits`,
`curve.mean.mc_train_error`, `prune.sparsity.0.9.test_acc`, `ensemble.ensemble_gain_acc`;
flags (`hessian.train.eigen_converged`) are 1.0 or 0.0.
Any result file a task writes shows up this way without code here. Left out: `inputs` (what
the result was computed from), `seconds` (how long it took), `pairs` (per seed pair, with run
names as keys: their mean is the grid point's value), strings and lists (curves, spectra),
except that a list of `eigenvalues` gives its largest as `top_eigenvalue`. A grid-point result
is repeated on the rows of every seed of that grid point; one marked `"applicable": false`
(a seed-pair metric on a single seed) contributes nothing.

Published result.json lines carry some landscape values of the published zoo beside the
training metrics (`representation_similarity`, `curve_mc_train_error`,
`log_hessian_trace_train`, `log_hessian_top_ev_val`, `ggap`, `wiseft_acc_test_delta`, ...):
every numeric key of a line becomes a column under its own name, except ray.tune's
bookkeeping (timestamps, iteration counters, pids). The published curve code recorded errors
in percent: `curve_*error*` keys are read as fractions, like every ptmz error. A record key
that is also a grid or config column (the scheduled `lr` of the epoch) is renamed
`record.<key>`.

Why train_acc - test_acc for the generalisation gap: it is bounded and comparable across
datasets and grid points, where the loss gap is dominated by the overconfidence of
overfitted models (it grows without bound as their test loss does).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from ptmz.analysis.phases import DEFAULT, PhaseThresholds, is_number, phase_column
from ptmz.columns import GRID_KEYS, IDENTITY
from ptmz.errors import DamagedFile, PtmzError
from ptmz.io import atomic_write, read_json
from ptmz.zoo.population import Population, Run

log = logging.getLogger(__name__)
_RESULT_FILE = re.compile(r"^(?P<name>.+)_epoch_(?P<epoch>\d+)\.json$")
_SKIPPED_KEYS = {"inputs", "seconds", "pairs", "applicable", "reason"}
# ray.tune's own keys in a published result.json line: when and where, not what was measured
_TUNE_BOOKKEEPING = {
    "done",
    "training_iteration",
    "timestamp",
    "time_this_iter_s",
    "time_total_s",
    "time_since_restore",
    "timesteps_since_restore",
    "iterations_since_restore",
    "timesteps_total",
    "episodes_total",
    "episode_reward_mean",
    "pid",
    "warmup_time",
    "should_checkpoint",
}


def results_table(
    population: Population | str | Path, phases: PhaseThresholds | None = DEFAULT
) -> pd.DataFrame:
    """One row per run and epoch of `population` (a `Population` or its path), with every
    training record and result; see the module docstring for the columns.

    `phases`: the thresholds the `phase` column is classified with (None: no phase column).

    A damaged file (records, a result) leaves out what it holds (a run's rows, a result's
    columns); each is logged, and their messages are in `table.attrs["damaged"]`.
    """
    if not isinstance(population, Population):
        population = Population(population)
    damaged: list[str] = []
    grid_results = _grid_point_results(population, damaged)
    rows, results = [], set()
    for run in [*population.runs, *population.diverged]:  # a diverged seed is a result too
        try:
            rows += _run_rows(run, grid_results.get(run.grid_point, {}), results, damaged)
        except DamagedFile as error:
            damaged.append(str(error))
    for message in damaged:
        log.error("left out of the table: %s", message)
    if not rows:
        raise PtmzError(f"{population.path}: no run has training records or results to tabulate")
    table = frame_of(rows)
    empty = [c for c in results if table[c].isna().all()]  # e.g. a density never asked for
    table = table.drop(columns=empty)
    table = _ordered(table.sort_values(["grid_point", "seed", "run", "epoch"], ignore_index=True))
    if phases is not None:
        position = _phase_position(table)
        phase = phase_column(table, phases).rename("phase")
        table = pd.concat([table.iloc[:, :position], phase, table.iloc[:, position:]], axis=1)
    table.attrs["damaged"] = damaged
    return table


def frame_of(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The rows as a DataFrame whose integer columns with gaps (a config key some runs lack)
    are nullable integers: pandas would make them floats, and `checkpoints: 1` read back 1.0."""
    table = pd.DataFrame(rows)
    kinds: dict[str, set[type]] = defaultdict(set)
    for row in rows:
        for key, value in row.items():
            if value is not None and value is not pd.NA:
                kinds[key].add(type(value))
    for column, types in kinds.items():
        if types == {int} and table[column].dtype == float:
            table[column] = table[column].astype("Int64")
    return table


def flatten(result: dict[str, Any], prefix: str) -> dict[str, float]:
    """The scalar entries of one result file as {"<prefix>.<key>.<key>": value}; None (a
    metric that was not finite) becomes NaN."""
    out: dict[str, float] = {}
    for key, value in result.items():
        name = f"{prefix}.{key}"
        if key in _SKIPPED_KEYS:
            continue
        if isinstance(value, dict):
            out.update(flatten(value, name))
        elif key == "eigenvalues" and value and all(is_number(v) for v in value):
            out[f"{prefix}.top_eigenvalue"] = float(max(value))
        elif value is None:
            out[name] = math.nan
        elif isinstance(value, int | float):  # flags such as eigen_converged become 1.0 / 0.0
            out[name] = float(value)
    return out


def _result_files(directory: Path) -> Iterator[tuple[str, int, Path]]:
    """(name, epoch, path) of every result file in `directory`."""
    if not directory.is_dir():
        return
    for path in sorted(directory.iterdir()):
        if match := _RESULT_FILE.match(path.name):
            yield match["name"], int(match["epoch"]), path


def _read_results(directory: Path, damaged: list[str]) -> dict[int, dict[str, float]]:
    """epoch -> flattened columns of every applicable result file in `directory`; a damaged
    one is added to `damaged`."""
    by_epoch: dict[int, dict[str, float]] = defaultdict(dict)
    for name, epoch, path in _result_files(directory):
        try:
            result = read_json(path, "recompute it: rerun its task (overwrite=true is not needed)")
        except DamagedFile as error:
            damaged.append(str(error))
            continue
        if result.get("applicable", True) is False:
            continue
        by_epoch[epoch].update(flatten(result, name))
    return by_epoch


def _grid_point_results(
    population: Population, damaged: list[str]
) -> dict[str, dict[int, dict[str, float]]]:
    root = population.path / "landscape"
    if not root.is_dir():
        return {}
    return {d.name: _read_results(d, damaged) for d in sorted(root.iterdir()) if d.is_dir()}


def _record_columns(record: dict[str, Any], taken: set[str]) -> dict[str, float]:
    """The numeric entries of a training record; see the module docstring for what is left out
    and renamed."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key == "epoch" or key in _TUNE_BOOKKEEPING:
            continue
        if value is None or is_number(value):
            name = f"record.{key}" if key in taken else key
            # published lines may hold Infinity; ptmz's own records store it as null
            finite = value is not None and math.isfinite(value)
            out[name] = float(value) if finite else math.nan
    return out


def config_columns(run: Run) -> dict[str, Any]:
    """`run`'s config but its grid keys, dataset and model, as `config.<key>...` columns."""
    out: dict[str, Any] = {}

    def walk(value: Any, name: str) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(inner, f"{name}.{key}")
        elif value is None or isinstance(value, bool | int | float | str):
            out[name] = value
        else:  # lists: one cell, as JSON
            out[name] = json.dumps(value, default=str)

    for key, value in run.config.items():
        if key not in GRID_KEYS and key not in ("dataset", "model"):
            walk(value, f"config.{key}")
    return out


def run_identity(run: Run) -> dict[str, Any]:
    """The identity columns of `run`'s rows, but the epoch."""
    return {
        "run": run.name,
        "grid_point": run.grid_point,
        "format": run.format,
        "state": run.state,
        "dataset": run.config.get("dataset"),
        "model": run.config.get("model"),
        **run.grid,
    }


def _run_rows(
    run: Run, grid_results: dict[int, dict[str, float]], results: set[str], damaged: list[str]
) -> list[dict[str, Any]]:
    """The rows of `run`; the names of its result columns are added to `results`."""
    identity = run_identity(run)
    config = config_columns(run)
    taken = set(identity) | set(IDENTITY)
    records = {int(r["epoch"]): _record_columns(r, taken) for r in run.records}
    own = _read_results(run.path / "landscape", damaged)
    for columns in [*own.values(), *grid_results.values()]:
        results.update(columns)
    rows = []
    for epoch in sorted(set(records) | set(own) | set(grid_results)):
        record = records.get(epoch, {})
        gap = record.get("train_acc", math.nan) - record.get("test_acc", math.nan)
        # train_error only where there is an accuracy (not for PINN or GPT zoos)
        fit = {"train_error": 1 - record["train_acc"]} if is_number(record.get("train_acc")) else {}
        rows.append(
            {
                **identity,
                "epoch": epoch,
                **record,
                **fit,
                "generalization_gap": gap,
                **own.get(epoch, {}),
                **grid_results.get(epoch, {}),
                **config,
            }
        )
    return rows


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    """Identity first, the run's config last, measurements in between."""
    config = [c for c in table.columns if c.startswith("config.")]
    middle = [c for c in table.columns if c not in IDENTITY and c not in config]
    return table[[c for c in IDENTITY if c in table.columns] + middle + config]


def _phase_position(table: pd.DataFrame) -> int:
    config = [i for i, c in enumerate(table.columns) if c.startswith("config.")]
    return config[0] if config else len(table.columns)


def save_table(table: pd.DataFrame, stem: Path) -> tuple[Path, Path]:
    """`table` as `<stem>.parquet` and `<stem>.csv`, each written atomically. A column of mixed
    Python types (a config key that is a number in one run and a list in another) is stored as
    strings, which parquet requires."""
    table = table.copy()
    for column in table.columns:
        if table[column].dtype == object:
            kinds = {type(v) for v in table[column] if v is not None and v == v}
            if len(kinds) > 1:
                table[column] = table[column].map(lambda v: None if v is None else str(v))
    parquet, csv = stem.with_suffix(".parquet"), stem.with_suffix(".csv")
    atomic_write(parquet, lambda tmp: table.to_parquet(tmp, index=False))
    atomic_write(csv, lambda tmp: table.to_csv(tmp, index=False))
    return parquet, csv
