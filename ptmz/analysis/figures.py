"""Phase-diagram figures: heatmaps over temperature (rows) x load (columns), one panel per
metric, each cell the mean over the seeds of a grid point; a phase map with the labels and the
boundaries between phases; the phase map's evolution over epochs as small multiples.

Colour scales: logarithmic for Hessian metrics and losses (they span orders of magnitude
across a phase diagram, and the phase thresholds cut them in log space; published `log_*`
columns are already logarithms and stay linear), a diverging map centred at 0 for
signed quantities (mc, barriers, deltas, gains, gaps: the sign is the finding), sequential
otherwise. Rows are ordered hottest first (small batch size, large learning rate), so the
figure reads like the published ones: noisier training at the top.

Figures are `matplotlib.figure.Figure` objects made without pyplot: no backend is chosen
and no global state kept, so a notebook can display them and a task can save them.
"""

from __future__ import annotations

import logging
import math
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import colormaps, colors, ticker
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ptmz.analysis.phases import (
    DEFAULT,
    PhaseClassification,
    PhaseThresholds,
    classify_phases,
    grid_point_means,
)
from ptmz.errors import ConfigError, PtmzError
from ptmz.train.spec import LOADS, TEMPERATURES
from ptmz.zoo.population import COORDINATES

log = logging.getLogger(__name__)

AXIS_LABELS = {
    "batch_size": "temperature: batch size (smaller = noisier)",
    "lr": "temperature: learning rate (larger = noisier)",
    "width": "load: width (wider = less data per parameter)",
    "data_fraction": "load: fraction of the training set",
    "beta": "load: convection coefficient beta (larger = harder PDE)",
}
HOTTEST_FIRST = {"batch_size": True, "lr": False}  # sort ascending?
# Okabe-Ito colours, told apart with every common colour-vision deficiency
PHASE_COLOURS = {
    "I": "#D55E00",
    "II": "#CC79A7",
    "III": "#56B4E9",
    "IV-A": "#0072B2",
    "IV-B": "#009E73",
}
UNKNOWN = "#e8e8e8"  # a cell whose phase cannot be told
# (pattern on a column name, panel title, colour-bar label); the first match names a column
LABELS = (
    (r"(^|\.)train_loss$", "train loss", "mean loss (nats for cross-entropy)"),
    (r"(^|\.)test_loss$", "test loss", "mean loss (nats for cross-entropy)"),
    (r"(^|\.)train_acc$", "train accuracy", "fraction correct"),
    (r"(^|\.)test_acc$", "test accuracy", "fraction correct"),
    (r"(^|\.)train_error$", "train error", "fraction misclassified"),
    (r"test_rel_l2$", "test relative L2 error", "||u - u*|| / ||u*||"),
    (r"^(generalization_gap|ggap)$", "generalisation gap", "train - test accuracy"),
    (
        r"top_eigenvalue|top_ev",
        "Hessian top eigenvalue (train)",
        "largest eigenvalue of the loss Hessian",
    ),
    (r"trace", "Hessian trace (train)", "trace of the loss Hessian"),
    (
        r"mc_train_error",
        "mode connectivity mc (train error)",
        "< 0 barrier, > 0 curve below its ends",
    ),
    (
        r"mc_train_loss",
        "mode connectivity mc (train loss)",
        "< 0 barrier, > 0 curve below its ends",
    ),
    (
        r"cka|representation_similarity",
        "CKA between seeds (logits)",
        "linear CKA, 0 (unrelated) to 1",
    ),
    (
        r"barrier_train_error",
        "linear-path barrier (train error)",
        "barrier height, fraction misclassified",
    ),
    (r"ensemble_gain", "ensemble gain (test accuracy)", "ensemble - mean member"),
    (r"average_epochs\.delta", "epoch average (test accuracy)", "averaged - final weights"),
    (r"average_seeds|gitrebasin", "aligned seed average (test accuracy)", "average - mean member"),
    (r"wiseft", "WiSE-FT (test accuracy)", "best mix - fine-tuned"),
)


def describe(column: str) -> tuple[str, str]:
    """(title, colour-bar label) of a table column; its own name where none is known."""
    for pattern, title, label in LABELS:
        if re.search(pattern, column):
            prefix = "log " if column.rsplit(".", 1)[-1].startswith("log_") else ""
            return prefix + title, prefix + label
    return column, ""


PHASE_RULES = (
    "I: loss high, Hessian large, mc < 0    II: loss high, Hessian large, mc > 0",
    "III: loss low, Hessian small, mc < 0    IV-A / IV-B: loss low, Hessian small, mc ~ 0, "
    "CKA low / high",
    "mc = m - E(t*), E the error along the seeds' curve, m the mean of its ends: < 0 a barrier, "
    "~0 connected, > 0 the curve below its ends",
    "?: metrics missing, or matching no phase (`reason` in ptmz.analysis.classify_phases)",
)
_SIGNED = re.compile(r"(^|[._])(mc|barrier|delta|gain|gap|ggap)|_delta$")
PANEL = (3.7, 3.1)  # inches per panel
FOOTER_SIZE = 7.5  # points


@dataclass(frozen=True)
class Axes2D:
    """Which grid coordinates are the two axes of the diagram."""

    temperature: str = "batch_size"
    load: str = "width"

    def __post_init__(self) -> None:
        for key, value, allowed in (
            ("task.temperature", self.temperature, TEMPERATURES),
            ("task.load", self.load, LOADS),
        ):
            if value not in allowed:
                raise ConfigError(key, value, f"one of {', '.join(allowed)}")

    @classmethod
    def of(cls, table: pd.DataFrame, temperature: str | None, load: str | None) -> Axes2D:
        """The given axes; where one is None, the coordinate of its kind that varies over the
        table's runs (the first of its kind when none does)."""

        def varied(key: str, given: str | None, options: tuple[str, ...]) -> str:
            if given is not None:
                return given
            found = [c for c in options if c in table and table[c].nunique(dropna=False) > 1]
            if len(found) > 1:
                raise ConfigError(
                    key,
                    None,
                    f"one of {' or '.join(options)}: the population varies both, so say which",
                )
            return found[0] if found else options[0]

        return cls(
            varied("task.temperature", temperature, TEMPERATURES),
            varied("task.load", load, LOADS),
        )


def resolve_metrics(table: pd.DataFrame, metrics: Sequence[str]) -> tuple[list[str], list[str]]:
    """(columns to draw, notes on those left out). An entry "a|b" draws the first of its
    alternatives that the table holds (ptmz's column, or the published zoo's)."""
    drawn, notes = [], []
    for entry in metrics:
        options = entry.split("|")
        found = [c for c in options if c in table.columns and table[c].notna().any()]
        if found:
            drawn.append(found[0])
        else:
            notes.append(f"{entry}: not in the table")
    return list(dict.fromkeys(drawn)), notes


def cells(grid: pd.DataFrame, column: str, axes: Axes2D) -> tuple[np.ndarray, list, list]:
    """`column` of one epoch's grid-point means as a temperature x load matrix, with the row
    and column coordinates."""
    rows = sorted(grid[axes.temperature].unique(), reverse=not HOTTEST_FIRST[axes.temperature])
    cols = sorted(grid[axes.load].unique())
    matrix = np.full((len(rows), len(cols)), np.nan, dtype=object if column == "phase" else float)
    if column == "phase":
        matrix[:] = None
    for r in grid.itertuples():
        value = getattr(r, column) if column == "phase" else grid.at[r.Index, column]
        matrix[rows.index(getattr(r, axes.temperature)), cols.index(getattr(r, axes.load))] = value
    return matrix, rows, cols


def _check_axes(grid: pd.DataFrame, axes: Axes2D) -> None:
    """Every cell must be one grid point: other varied coordinates would be averaged away."""
    duplicated = grid.duplicated(["epoch", axes.temperature, axes.load], keep=False)
    if duplicated.any():
        others = [
            c
            for c in COORDINATES
            if c in grid
            and c not in (axes.temperature, axes.load)
            and grid[c].nunique(dropna=False) > 1
        ]
        raise PtmzError(
            f"several grid points share a ({axes.temperature}, {axes.load}) cell: they also "
            f"differ in {', '.join(others) or 'other config keys'}; choose the axes with "
            "task.temperature / task.load, or plot a population that varies only those"
        )


def _norm(column: str, values: np.ndarray) -> tuple[colors.Normalize, str]:
    finite = values[np.isfinite(values)]
    name = column.rsplit(".", 1)[-1]
    spans_decades = "hessian" in column or (name.endswith("loss") and not _SIGNED.search(column))
    if spans_decades and not name.startswith("log_") and finite.size and (finite > 0).all():
        return colors.LogNorm(finite.min(), finite.max()), "viridis"
    if _SIGNED.search(column):
        half = float(np.abs(finite).max()) if finite.size else 1.0
        return colors.Normalize(-(half or 1.0), half or 1.0), "RdBu"
    return colors.Normalize(*(finite.min(), finite.max()) if finite.size else (0, 1)), "viridis"


def _ticks(ax, rows: list, cols: list, axes: Axes2D, left: bool, bottom: bool) -> None:
    ax.set_xticks(range(len(cols)), [f"{c:g}" for c in cols], fontsize=8)
    ax.set_yticks(range(len(rows)), [f"{r:g}" for r in rows], fontsize=8)
    if bottom:
        ax.set_xlabel(AXIS_LABELS[axes.load], fontsize=8)
    if left:
        ax.set_ylabel(AXIS_LABELS[axes.temperature], fontsize=8)


def _annotate(ax, matrix: np.ndarray, norm: colors.Normalize, cmap: str) -> None:
    if matrix.size > 36:  # more cells leave no room for the numbers
        return
    mapper = colormaps[cmap]
    for (i, j), value in np.ndenumerate(matrix):
        if np.isfinite(value):
            r, g, b, _ = mapper(float(norm(value)))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            text = f"{value:.2g}" if abs(value) < 100 else f"{value:.0f}"
            text = "0" if abs(value) < 1e-12 else text  # rounding noise of a mean
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="w" if dark else "k")


def _heatmap(fig, ax, grid, column, axes, left, bottom) -> None:
    matrix, rows, cols = cells(grid, column, axes)
    norm, cmap = _norm(column, matrix)
    colormap = colormaps[cmap].with_extremes(bad="#dddddd")  # cells without a value
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=colormap, norm=norm, aspect="auto")
    _annotate(ax, matrix, norm, cmap)
    bar = fig.colorbar(image, ax=ax, fraction=0.08, pad=0.03)
    if isinstance(norm, colors.LogNorm):  # 1-2-5 steps, so a range within a decade has ticks
        bar.ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        bar.ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    bar.ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.4g}"))
    bar.ax.tick_params(which="both", labelsize=7)
    title, label = describe(column)
    bar.set_label(label, fontsize=7)
    ax.set_title(f"{title}\n{column}, mean of {_seeds(grid['seeds'])}", fontsize=8)
    _ticks(ax, rows, cols, axes, left, bottom)


def _seeds(seeds: pd.Series) -> str:
    lo, hi = int(seeds.min()), int(seeds.max())
    n = f"{lo}" if lo == hi else f"{lo}-{hi}"
    return f"{n} seed" + ("" if hi == 1 else "s")


def phase_map(ax, grid: pd.DataFrame, axes: Axes2D, left=True, bottom=True, title=None) -> None:
    """The phase of every cell, coloured and labelled, with lines between different phases."""
    labels, rows, cols = cells(grid, "phase", axes)
    rgb = np.ones((*labels.shape, 3))
    for (i, j), label in np.ndenumerate(labels):
        rgb[i, j] = colors.to_rgb(PHASE_COLOURS.get(label, UNKNOWN))
    ax.imshow(rgb, aspect="auto")
    small = labels.size <= 36
    why = grid.set_index([axes.temperature, axes.load]) if small else None
    for (i, j), label in np.ndenumerate(labels):
        if label in PHASE_COLOURS:
            ax.text(
                j, i, label, ha="center", va="center", fontsize=9 if small else 7, weight="bold"
            )
            continue
        ax.text(j, i, "?", ha="center", va="center", fontsize=9 if small else 7, weight="bold")
        if small and (rows[i], cols[j]) in why.index:
            verdict = _verdict(why.loc[(rows[i], cols[j])])
            ax.text(j, i + 0.12, verdict, ha="center", va="top", fontsize=6, color="#444444")
    for i, j in _boundaries(labels, below=True):
        ax.plot([j - 0.5, j + 0.5], [i + 0.5, i + 0.5], color="k", lw=2.5)
    for i, j in _boundaries(labels, below=False):
        ax.plot([j + 0.5, j + 0.5], [i - 0.5, i + 0.5], color="k", lw=2.5)
    ax.set_xlim(-0.5, len(cols) - 0.5)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_title(title or "phase", fontsize=9)
    _ticks(ax, rows, cols, axes, left, bottom)
    _phase_key(ax, {label for label in labels.ravel() if label in PHASE_COLOURS})


def _phase_key(ax, shown: set[str]) -> None:
    """A colour key of the phases drawn (and of '?') below the panel."""
    handles = [Patch(color=c, label=p) for p, c in PHASE_COLOURS.items() if p in shown]
    handles.append(Patch(color=UNKNOWN, label="? not told"))
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.22),
        ncols=min(len(handles), 3),
        fontsize=7,
        frameon=False,
    )


def _boundaries(labels: np.ndarray, below: bool) -> list[tuple[int, int]]:
    """Cells whose neighbour below (or to the right) holds a different known phase."""
    out = []
    for (i, j), label in np.ndenumerate(labels):
        k, m = (i + 1, j) if below else (i, j + 1)
        if k < labels.shape[0] and m < labels.shape[1]:
            other = labels[k, m]
            if label in PHASE_COLOURS and other in PHASE_COLOURS and other != label:
                out.append((i, j))
    return out


def _verdict(row: pd.Series) -> str:
    """What the metrics of an unlabelled cell said, in a few words."""
    words = [f"{row['diverged']}/{row['seeds']} diverged"] if row.get("diverged") else []
    if row.get("loss_high") is not None:
        words.append("loss " + ("high" if row["loss_high"] else "low"))
    if row.get("hessian_large") is not None:
        words.append("H " + ("large" if row["hessian_large"] else "small"))
    if row.get("mc_sign") is not None:
        words.append({"<0": "mc < 0", "~0": "mc ~ 0", ">0": "mc > 0"}[row["mc_sign"]])
    return "\n".join([", ".join(words[:2]), *words[2:]]) if words else "no data"


def _figure(n_panels: int, ncols: int, footer: list[str]) -> tuple[Figure, list]:
    """A figure of `n_panels` axes in `ncols` columns, with the `footer` lines below them,
    wrapped to the figure's width."""
    nrows = math.ceil(n_panels / ncols)
    width = max(PANEL[0] * ncols, 6.5)
    chars = int(width * 72 / (0.7 * FOOTER_SIZE)) - 2  # monospace: about 0.66 em per character
    lines = [part for line in footer for part in textwrap.wrap(line, chars, subsequent_indent="  ")]
    height = 0.16 * len(lines) + 0.2
    fig = Figure(figsize=(width, PANEL[1] * nrows + height + 0.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[PANEL[1] * nrows + 0.5, height])
    axes = top.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    text = "\n".join(lines)
    bottom.text(0.01, 0.98, text, va="top", ha="left", fontsize=FOOTER_SIZE, family="monospace")
    return fig, list(axes[:n_panels])


def phase_diagram(
    table: pd.DataFrame,
    epoch: int,
    metrics: Sequence[str],
    thresholds: PhaseThresholds = DEFAULT,
    axes: Axes2D = Axes2D(),
    title: str = "",
    classification: PhaseClassification | None = None,
) -> tuple[Figure, list[str], list[str]]:
    """The figure at `epoch`: a heatmap per metric found in `table` and the phase map.
    Returns (figure, the columns drawn, notes on the metrics left out)."""
    classification = classification or classify_phases(table, thresholds)
    drawn, notes = resolve_metrics(table, metrics)
    grid = grid_point_means(table, drawn)  # all epochs: a seed that diverged earlier counts
    grid = grid[grid["epoch"] == epoch]
    _check_axes(grid, axes)
    present = [c for c in drawn if grid[c].notna().any()]
    notes += [f"{c}: no value at epoch {epoch}" for c in drawn if c not in present]
    phases = classification.grid[classification.grid["epoch"] == epoch]
    ncols = min(4, len(present) + 1)
    footer = [*classification.lines(), *PHASE_RULES]
    absent = [n.split("|")[0].split(".")[0] for n in notes if n.endswith("not in the table")]
    others = [n for n in notes if not n.endswith("not in the table")]
    if absent:
        footer.append(f"not measured, so not drawn: {', '.join(dict.fromkeys(absent))}")
    if others:
        footer.append("not drawn: " + "; ".join(others))
    fig, panels = _figure(len(present) + 1, ncols, footer)
    # the phase map first, where the eye starts; then the metrics it is made of, and the rest
    for k, (ax, column) in enumerate(zip(panels, ["phase", *present], strict=True)):
        left, last_row = k % ncols == 0, k >= len(panels) - ncols
        if column == "phase":
            phase_map(ax, phases, axes, left, last_row, title="phase (thresholds below)")
        else:
            _heatmap(fig, ax, grid, column, axes, left, last_row)
    fig.suptitle(f"{title}  epoch {epoch}".strip(), fontsize=11)
    for note in notes:
        log.info("panel omitted: %s", note)
    return fig, present, notes


def phase_evolution(
    table: pd.DataFrame,
    epochs: Sequence[int],
    thresholds: PhaseThresholds = DEFAULT,
    axes: Axes2D = Axes2D(),
    title: str = "",
    classification: PhaseClassification | None = None,
) -> Figure:
    """The phase map at each of `epochs`, side by side (one threshold set for all)."""
    classification = classification or classify_phases(table, thresholds)
    grid = classification.grid
    _check_axes(grid, axes)
    ncols = min(5, len(epochs))
    footer = [*classification.lines(), *PHASE_RULES]
    fig, panels = _figure(len(epochs), ncols, footer)
    for k, (ax, epoch) in enumerate(zip(panels, epochs, strict=True)):
        at = grid[grid["epoch"] == epoch]
        last_row = k >= len(panels) - ncols
        phase_map(ax, at, axes, left=k % ncols == 0, bottom=last_row, title=f"epoch {epoch}")
    fig.suptitle(f"{title}  phases over training".strip(), fontsize=11)
    return fig


def landscape_epochs(table: pd.DataFrame, thresholds: PhaseThresholds = DEFAULT) -> list[int]:
    """The epochs at which any metric of the phase classification besides the loss exists."""
    candidates = [*thresholds.hessian_metric, *thresholds.mc_metric, *thresholds.cka_metric]
    columns = [c for c in candidates if c in table.columns]
    if not columns:
        return []
    has = table[columns].notna().any(axis=1)
    return sorted(int(e) for e in table.loc[has, "epoch"].unique())


def refinement_map(
    grid: pd.DataFrame, axes: Axes2D, added: set[tuple], notes: Sequence[str], title: str = ""
) -> Figure:
    """Every grid point of one epoch's classification (`PhaseClassification.grid`) at its
    coordinates on log axes, coloured by phase: a refined grid does not fill a table, so its
    points are drawn where they are rather than as cells. The (temperature, load) points in
    `added` (by refinement) are ringed; `notes` go in the footer."""
    fig, (ax,) = _figure(1, 1, [*notes, *PHASE_RULES, "ringed: added by refinement"])
    x = grid[axes.load].astype(float).to_numpy()
    y = grid[axes.temperature].astype(float).to_numpy()
    labels = grid["phase"].where(grid["phase"].notna(), "?").to_numpy()
    for label in [*PHASE_COLOURS, "?"]:
        at = labels == label
        if at.any():
            colour = PHASE_COLOURS.get(label, UNKNOWN)
            ax.scatter(x[at], y[at], s=150, color=colour, label=label, zorder=2)
    temperatures, loads = grid[axes.temperature], grid[axes.load]
    ring = np.array([point in added for point in zip(temperatures, loads, strict=True)])
    if ring.any():
        ax.scatter(x[ring], y[ring], s=320, facecolors="none", edgecolors="k", lw=1.5, zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis, values in ((ax.xaxis, x), (ax.yaxis, y)):
        axis.set_major_locator(ticker.FixedLocator(sorted(set(values))))
        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_locator(ticker.NullLocator())
    ax.tick_params(labelsize=7)
    ax.margins(0.15)
    if HOTTEST_FIRST[axes.temperature]:  # noisier training at the top, as in the phase map
        ax.invert_yaxis()
    ax.set_xlabel(AXIS_LABELS[axes.load], fontsize=8)
    ax.set_ylabel(AXIS_LABELS[axes.temperature], fontsize=8)
    ax.legend(
        fontsize=7, title="phase", title_fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5)
    )
    fig.suptitle(f"{title}  phase of every grid point".strip(), fontsize=11)
    return fig
