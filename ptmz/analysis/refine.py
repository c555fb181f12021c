"""Adaptive refinement of a phase diagram: wherever two neighbouring grid points were placed in
different phases, the point between them, so that the next round spends its runs where the
phases change rather than deep inside one.

Neighbours are consecutive points along one axis that share the other coordinate. Both axes
are logarithmic in this field (batch sizes and widths double, learning rates decade), so the
point between is the geometric midpoint, rounded to a value the axis takes: a whole width or
batch size, a learning rate or data fraction to two significant digits."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pandas as pd

WHOLE = ("width", "batch_size")  # integer axes; the others (lr, data_fraction, beta) are real


def midpoint(key: str, a: float, b: float) -> float | int | None:
    """The geometric midpoint of `a` and `b` on axis `key`, rounded to a value of that axis;
    None where no such value lies strictly between them (widths 2 and 3, say)."""
    if a <= 0 or b <= 0:  # off a log axis
        return None
    mid = math.sqrt(a * b)
    value: float | int = round(mid) if key in WHOLE else float(f"{mid:.2g}")
    return value if min(a, b) < value < max(a, b) else None


def boundary_points(phases: pd.DataFrame, temperature: str, load: str) -> list[dict[str, Any]]:
    """The points to add: one between every two neighbours whose phases are both known and
    differ. `phases` has one row per grid point: its `temperature` and `load` coordinates and
    its `phase` (None where it could not be told, which refines nothing). Points already in
    `phases` are not proposed again."""
    known = {(row[temperature], row[load]) for _, row in phases.iterrows()}
    added: dict[tuple, dict[str, Any]] = {}
    for along, across in ((temperature, load), (load, temperature)):
        for value, line in phases.groupby(across, sort=True):
            ordered = line.sort_values(along)
            for (_, a), (_, b) in itertools.pairwise(ordered.iterrows()):
                if not (isinstance(a.phase, str) and isinstance(b.phase, str)):
                    continue
                if a.phase == b.phase:
                    continue
                mid = midpoint(along, a[along], b[along])
                if mid is None:
                    continue
                point = {along: mid, across: value}
                key = (point[temperature], point[load])
                if key not in known:
                    added[key] = point
    return [added[key] for key in sorted(added)]
