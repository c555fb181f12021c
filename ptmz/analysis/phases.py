"""Phase classification of grid points, following Yang et al. 2021 (the phase table of the
docs/results.md): per grid point and epoch, from the mean over its seeds of

    train loss          high | low          (`fit`: train error; else `loss`: train loss)
    Hessian             large | small       (`hessian`: trace by default)
    mode connectivity   < 0 | ~ 0 | > 0     (`mc`: of the train error by default)
    CKA between seeds   high | low          (`cka`: of the logits; only phase IV needs it)

    I     high loss, large Hessian, mc < 0      III   low loss, small Hessian, mc < 0
    II    high loss, large Hessian, mc > 0      IV-A  low loss, small Hessian, mc ~ 0, low CKA
                                                IV-B  low loss, small Hessian, mc ~ 0, high CKA

No published code fixes numeric thresholds, so every one is explicit (`PhaseThresholds`,
`task.thresholds.*` on the command line) and printed on the figure. The defaults:

- High train loss: Yang et al.'s phases I and II are models that do not fit their training
  data, so where the table has a train error (classifiers: 1 - train_acc) "high loss" is the
  absolute cut `fit`: more than 5% of the training set misclassified. 5% is far below chance
  for every dataset here (90% error for 10 classes) and loose enough for a training accuracy
  measured under augmentation (the published zoo's records). A cut relative to the
  population's range would split any zoo into "high" and "low", even one whose models all fit.
  Zoos without a train error (PINN, GPT), or with `fit_metric: []`, fall back to `loss`.
- `loss` (train loss, the fallback) and Hessian: a `Cut` halfway (`fraction` 0.5) between the
  population's smallest and largest value, in log space. Their absolute scales depend on the
  dataset (the loss at chance is ln(classes)), the architecture and the number of samples, so
  no absolute number carries over between zoos; both span orders of magnitude across a phase
  diagram, so the geometric middle is where the regimes meet. A population whose values span
  less than `min_spread` (0.5 decades, a factor of 3) does not contain both regimes: it gets no
  label rather than an arbitrary split. Set `value` for an absolute threshold instead.
- CKA: halfway between the population's smallest and largest CKA, on its linear [0, 1]
  scale, with `min_spread` 0.1.
- mc ~ 0: |mc| <= `mc_tolerance` = 0.01. mc of the train *error* is a fraction of the
  training set, comparable across datasets: 0.01 is one percentage point of training error.

A grid point's value is the mean over all its seeds (`grid_point_means`): a seed without the
value, or one that diverged before that epoch, leaves no value rather than the others' mean.
The ranges are taken over the finite values of the grid points and epochs being classified:
those with a train loss, a Hessian and an mc value. A grid point lacking one of them, or whose
values match no row of the table (high loss with a small Hessian, low loss with mc > 0, ...),
gets no label and a `reason`: never a guessed phase.

Published populations store the published zoo's values in result.json
(`log_hessian_trace_train`, `curve_mc_train_error`, `representation_similarity`): each metric
is the first of its candidate columns that the table holds. A column named `log_*` already
holds logarithms, so its cut is made on those values as they are (a fraction of a log range
does not depend on the logarithm's base); an absolute `value`, and `min_spread`, are in the
column's own units.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ptmz.errors import ConfigError
from ptmz.zoo.population import COORDINATES

PHASES = ("I", "II", "III", "IV-A", "IV-B")
ROLES = ("loss", "hessian", "mc", "cka")
GRID_POINT = ("grid_point", "epoch")


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def is_number(value: Any) -> bool:
    """An int or float, not a bool (which Python counts as an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Cut:
    """Where a metric turns from low to high: at `value` (in the metric's units) when set,
    otherwise `fraction` of the way from the population's minimum to its maximum (in log10
    space if `log`), provided that range spans at least `min_spread` (decades if `log`)."""

    value: float | None = None
    fraction: float = 0.5
    log: bool = True
    min_spread: float = 0.5

    def __post_init__(self) -> None:
        _check(self.value is None or is_number(self.value), "value", self.value, "a number or null")
        fraction_ok = is_number(self.fraction) and 0 <= self.fraction <= 1
        _check(fraction_ok, "fraction", self.fraction, "a number in [0, 1]")
        spread_ok = is_number(self.min_spread) and self.min_spread >= 0
        _check(spread_ok, "min_spread", self.min_spread, "a number >= 0")
        _check(isinstance(self.log, bool), "log", self.log, "true or false")


@dataclass(frozen=True)
class PhaseThresholds:
    """Every number the classification uses, and which table columns it reads (each metric:
    the first candidate column the table holds)."""

    fit: Cut = Cut(value=0.05, log=False, min_spread=0.1)  # on fit_metric: no fit = high loss
    loss: Cut = Cut()  # on loss_metric, where the table has no fit_metric column
    hessian: Cut = Cut()
    cka: Cut = Cut(log=False, min_spread=0.1)
    mc_tolerance: float = 0.01
    fit_metric: tuple[str, ...] = ("train_error",)
    loss_metric: tuple[str, ...] = ("train_loss",)
    hessian_metric: tuple[str, ...] = (
        "hessian.train.trace",
        "hessian_published.train.trace",  # task=hessian_published: the published budget
        "log_hessian_trace_train",
        "hessian.train.top_eigenvalue",
        "hessian_published.train.top_eigenvalue",
        "log_hessian_top_ev_val",
    )
    mc_metric: tuple[str, ...] = (
        "curve.mean.mc_train_error",
        "curve_published.mean.mc_train_error",  # task=curve_published: every seed pair
        "curve_mc_train_error",
        "curve.mean.mc_train_loss",
    )
    cka_metric: tuple[str, ...] = (
        "cka.mean.logits",
        "cka_published.mean.logits",
        "representation_similarity",
    )

    def __post_init__(self) -> None:
        tolerance_ok = is_number(self.mc_tolerance) and self.mc_tolerance >= 0
        _check(tolerance_ok, "mc_tolerance", self.mc_tolerance, "a number >= 0")
        for role in ("fit", *ROLES):
            columns = getattr(self, f"{role}_metric")
            named = (columns or role == "fit") and all(isinstance(c, str) and c for c in columns)
            allowed = "a column name or a list of them" + (" ([]: none)" if role == "fit" else "")
            _check(named, f"{role}_metric", columns, allowed)

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], key: str = "task.thresholds"
    ) -> PhaseThresholds:
        """From a (Hydra) mapping such as {"loss": {"value": 0.1}, "mc_tolerance": 0.02}; a
        wrong key or value is reported with its full name."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        try:
            for name, value in config.items():
                _check(name in names, f"{key}.{name}", value, f"one of {', '.join(sorted(names))}")
                if name in ("fit", "loss", "hessian", "cka"):
                    kwargs[name] = _cut(value, f"{key}.{name}", getattr(cls(), name))
                elif name.endswith("_metric"):
                    kwargs[name] = (value,) if isinstance(value, str) else tuple(value or ())
                else:
                    kwargs[name] = value
            return cls(**kwargs)
        except ConfigError as error:
            if error.key.startswith(key):
                raise
            raise ConfigError(f"{key}.{error.key}", error.value, error.allowed) from None


def _cut(config: Any, key: str, default: Cut) -> Cut:
    names = {f.name for f in dataclasses.fields(Cut)}
    if not isinstance(config, Mapping):
        allowed = f"settings of a cut, e.g. {key}.value={config} ({', '.join(sorted(names))})"
        raise ConfigError(key, config, allowed)
    for name, value in config.items():
        _check(name in names, f"{key}.{name}", value, f"one of {', '.join(sorted(names))}")
    try:
        return dataclasses.replace(default, **config)
    except ConfigError as error:
        raise ConfigError(f"{key}.{error.key}", error.value, error.allowed) from None


DEFAULT = PhaseThresholds()


@dataclass(frozen=True)
class Threshold:
    """A threshold as applied: the column it was read from, its value in that column's units
    (None: no cut could be made) and how it was set (or why not)."""

    column: str | None
    value: float | None
    note: str

    def describe(self, what: str) -> str:
        if self.column is None:
            return f"{what}: {self.note}"
        if self.value is None:
            return f"{what} ({self.column}): no threshold, {self.note}"
        return f"{what} ({self.column}) {self.value:.3g}: {self.note}"


@dataclass
class PhaseClassification:
    """Per grid point and epoch: the seed means used, the verdict on each metric, the phase
    (None when it cannot be told) and the reason; with the thresholds as applied."""

    grid: pd.DataFrame
    thresholds: dict[str, Threshold] = field(default_factory=dict)

    def classified_epochs(self) -> list[int]:
        """The epochs at which some grid point has the train loss, Hessian and mc a phase
        needs."""
        measured = self.grid[["loss", "hessian", "mc"]].notna().all(axis=1)
        return sorted(int(e) for e in self.grid.loc[measured, "epoch"].unique())

    def lines(self) -> list[str]:
        """The thresholds in words, one line per metric, as the figure prints them."""
        t = self.thresholds
        return [
            t["loss"].describe("high train loss (no fit) above"),
            t["hessian"].describe("Hessian large above"),
            t["mc"].describe("mc ~ 0 within +/-"),
            t["cka"].describe("CKA high above"),
        ]


def pick_column(table: pd.DataFrame, candidates: tuple[str, ...]) -> str | None:
    """The first of `candidates` that the table holds a value for."""
    for column in candidates:
        if column in table.columns and table[column].notna().any():
            return column
    return None


def grid_point_means(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per grid point and epoch of the table: its coordinates, its number of seeds (over
    all epochs), how many of them had diverged by then, and the mean over its seeds of `columns`
    (grid-point results are the same on every seed). A mean needs every seed's value: a seed
    without it (not measured, or diverged) makes it NaN, never the other seeds' mean; a grid
    point whose seeds all diverged keeps its rows, empty, at the later epochs."""
    table = table.reset_index(drop=True)
    coordinates = [c for c in COORDINATES if c in table]
    points = table.groupby("grid_point", sort=True)
    groups = table.groupby(list(GRID_POINT), sort=True)
    epochs = sorted(table["epoch"].unique())
    index = pd.MultiIndex.from_product([list(points.groups), epochs], names=list(GRID_POINT))
    point = index.get_level_values("grid_point")
    out = points[coordinates].first().reindex(point).set_axis(index)
    if "run" in table:
        seeds = points["run"].nunique()
    else:  # rows cannot be told apart by run: as many seeds as rows at its fullest epoch
        seeds = groups.size().groupby(level="grid_point").max()
    out["seeds"] = seeds.reindex(point).to_numpy()
    diverged_at: dict[str, list[int]] = {}  # grid point -> the epochs its seeds diverged at
    if {"run", "state"} <= set(table.columns):
        last = table[table["state"] == "diverged"].groupby(["grid_point", "run"])["epoch"].max()
        for (name, _), epoch in last.items():
            diverged_at.setdefault(name, []).append(epoch)
    out["diverged"] = [sum(e <= epoch for e in diverged_at.get(p, [])) for p, epoch in index]
    for column in dict.fromkeys(columns):
        counts = groups[column].count().reindex(index, fill_value=0)
        out[column] = groups[column].mean().reindex(index).where(counts == out["seeds"])
    return out.reset_index()


def _already_log(column: str) -> bool:
    return column.rsplit(".", 1)[-1].startswith("log_")


def resolve(cut: Cut, column: str | None, values: pd.Series) -> Threshold:
    """`cut` applied to the population's `values` of `column`."""
    if column is None:
        return Threshold(None, None, "not measured")
    if cut.value is not None:
        return Threshold(column, float(cut.value), "set")
    log = cut.log and not _already_log(column)
    values = values[np.isfinite(values)]
    # a Hutchinson trace can come out <= 0 near a flat minimum: below any cut, off the log axis
    left_out = int((values <= 0).sum()) if log else 0
    if log:
        values = values[values > 0]
    if values.empty:
        return Threshold(column, None, "no grid point has finite train loss, Hessian and mc")
    besides = f"; {left_out} values <= 0 left out of the log range" if left_out else ""
    lo, hi = float(values.min()), float(values.max())
    x_lo, x_hi = (math.log10(lo), math.log10(hi)) if log else (lo, hi)
    space = "in log space" if log else "of logarithms" if _already_log(column) else "linear"
    if x_hi - x_lo < cut.min_spread:
        unit = " decades" if log else ""
        return Threshold(
            column,
            None,
            f"range {lo:.3g}..{hi:.3g} spans {x_hi - x_lo:.2g}{unit} < min_spread "
            f"{cut.min_spread:g}: one regime only{besides}",
        )
    x = x_lo + cut.fraction * (x_hi - x_lo)
    value = 10**x if log else x
    return Threshold(
        column, value, f"{cut.fraction:.0%} from min {lo:.3g} to max {hi:.3g} ({space}){besides}"
    )


def _above(value: float, threshold: Threshold) -> bool | None:
    if threshold.value is None or value is None or np.isnan(value):
        return None
    return bool(value > threshold.value)


def _mc_sign(mc: float, tolerance: float) -> str | None:
    if mc is None or np.isnan(mc):
        return None
    return "<0" if mc < -tolerance else ">0" if mc > tolerance else "~0"


def _phase(loss_high, hessian_large, mc, cka_high) -> tuple[str | None, str]:
    """The phase table; (None, why) where it does not decide."""
    missing = [
        name
        for name, v in (("train loss", loss_high), ("Hessian", hessian_large), ("mc", mc))
        if v is None
    ]
    if missing:
        return None, f"no {', no '.join(missing)} (or no threshold)"
    if loss_high != hessian_large:
        loss = "high" if loss_high else "low"
        hessian = "large" if hessian_large else "small"
        return None, f"train loss {loss} but Hessian {hessian}: in no phase"
    if loss_high:
        if mc == "~0":
            return None, "high loss with mc ~ 0: neither I (mc < 0) nor II (mc > 0)"
        return ("I" if mc == "<0" else "II"), ""
    if mc == "<0":
        return "III", ""
    if mc == ">0":
        return None, "low loss with mc > 0: neither III (mc < 0) nor IV (mc ~ 0)"
    if cka_high is None:
        return None, "phase IV, but no CKA (or no CKA threshold) to tell IV-A from IV-B"
    return ("IV-B" if cka_high else "IV-A"), ""


def classify_phases(
    table: pd.DataFrame, thresholds: PhaseThresholds = DEFAULT
) -> PhaseClassification:
    """The phase of every grid point and epoch of a results table (`results_table`)."""
    fit = pick_column(table, thresholds.fit_metric)
    columns = {
        "loss": fit or pick_column(table, thresholds.loss_metric),
        "hessian": pick_column(table, thresholds.hessian_metric),
        "mc": pick_column(table, thresholds.mc_metric),
        "cka": pick_column(table, thresholds.cka_metric),
    }
    grid = grid_point_means(table, [c for c in columns.values() if c])
    for role, column in columns.items():
        grid[role] = grid[column] if column else np.nan
    measured = grid[["loss", "hessian", "mc"]].notna().all(axis=1)
    applied = {
        "loss": resolve(
            thresholds.fit if fit else thresholds.loss, columns["loss"], grid.loc[measured, "loss"]
        ),
        "hessian": resolve(thresholds.hessian, columns["hessian"], grid.loc[measured, "hessian"]),
        "mc": Threshold(columns["mc"], thresholds.mc_tolerance, "set")
        if columns["mc"]
        else Threshold(None, None, "not measured"),
        "cka": resolve(thresholds.cka, columns["cka"], grid.loc[measured, "cka"]),
    }
    verdicts = []
    for row in grid.itertuples():
        loss_high = _above(row.loss, applied["loss"])
        hessian_large = _above(row.hessian, applied["hessian"])
        mc = _mc_sign(row.mc, thresholds.mc_tolerance)
        cka_high = _above(row.cka, applied["cka"])
        phase, reason = _phase(loss_high, hessian_large, mc, cka_high)
        if phase is None and row.diverged:
            reason = f"{row.diverged} of {row.seeds} seeds diverged; {reason}"
        verdicts.append((loss_high, hessian_large, mc, cka_high, phase, reason))
    names = ["loss_high", "hessian_large", "mc_sign", "cka_high", "phase", "reason"]
    verdict = pd.DataFrame(verdicts, columns=names, index=grid.index, dtype=object)
    return PhaseClassification(pd.concat([grid, verdict], axis=1), applied)


def phase_column(table: pd.DataFrame, thresholds: PhaseThresholds = DEFAULT) -> pd.Series:
    """The phase of each row's grid point at its epoch, aligned with `table`."""
    grid = classify_phases(table, thresholds).grid
    phases = grid.set_index(list(GRID_POINT))["phase"]
    index = pd.MultiIndex.from_frame(table[list(GRID_POINT)])
    return pd.Series(phases.reindex(index).to_numpy(), index=table.index, dtype=object)
