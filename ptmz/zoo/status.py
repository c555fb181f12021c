"""The state of every run of a sweep: what a user checks the morning after submitting it."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptmz.zoo.rundir import RunDir

# one short code per state, so a grid cell shows all seeds of a grid point side by side
CODES = {
    "done": "D",
    "running": "R",
    "failed": "F",
    "diverged": "X",
    "damaged": "!",
    "not started": ".",
}


@dataclass(frozen=True)
class RunStatus:
    """A run of the sweep (`grid`: its width, batch size, ... and seed) and how far it got."""

    path: Path
    grid: dict[str, object]
    state: str
    epoch: int | None
    epochs: int | None
    error: str | None
    idle_seconds: float | None  # since its status last changed: a stale `running` is dead

    @classmethod
    def of(cls, path: Path, grid: dict[str, object], verify: bool = False) -> RunStatus:
        """`verify`: also read the records and check the checkpoints against their digests."""
        run = RunDir(path)
        if damage := run.damage or (verify and path.is_dir() and run.verify_all()):
            return cls(path, grid, "damaged", None, None, damage, None)
        status = run.status or {}
        changed = (path / "status.json").stat().st_mtime if status else None
        return cls(
            path=path,
            grid=grid,
            state=status.get("state", "not started"),
            epoch=status.get("epoch"),
            epochs=status.get("epochs"),
            error=status.get("error"),
            idle_seconds=time.time() - changed if changed else None,
        )

    @property
    def cell(self) -> str:
        """D, X, F, !, . or R3/8 (running, 3 of 8 epochs done)."""
        code = CODES[self.state]
        return f"{code}{self.epoch}/{self.epochs}" if self.state == "running" else code


def _unset_first(value: Any) -> tuple[bool, Any]:
    """Axis values sort with None (a run that does not set the axis) ahead of the numbers."""
    return value is not None, value


def status_grid(runs: list[RunStatus], rows: str, columns: str, stale_after: float = 3600) -> str:
    """The sweep as text: `rows` (temperature) x `columns` (load), each cell the codes of its
    seeds in seed order, then the totals and every failed or stale run."""
    row_values = sorted({r.grid[rows] for r in runs}, key=_unset_first)
    column_values = sorted({r.grid[columns] for r in runs}, key=_unset_first)
    cells = {}
    for run in sorted(runs, key=lambda r: _unset_first(r.grid["seed"])):
        key = (run.grid[rows], run.grid[columns])
        cells[key] = f"{cells[key]} {run.cell}" if key in cells else run.cell
    head = [f"{rows} \\ {columns}", *map(str, column_values)]
    table = [head] + [[str(r), *(cells.get((r, c), "") for c in column_values)] for r in row_values]
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in table]
    counts = Counter(r.state for r in runs)
    lines.append("")
    lines.append(
        f"{len(runs)} runs: "
        + ", ".join(f"{counts[s]} {s}" for s in CODES if counts[s])
        + "   (D done, R running epochs/total, F failed, X diverged, ! damaged, . not started)"
    )
    for run in runs:
        if run.state == "failed":
            lines.append(f"failed: {run.path}: {run.error}")
        elif run.state == "damaged":
            lines.append(f"damaged: {run.error}")
        elif run.state == "running" and (run.idle_seconds or 0) > stale_after:
            minutes = run.idle_seconds / 60
            lines.append(
                f"stale: {run.path}: running, no progress for {minutes:.0f} min "
                "(its job may have died: relaunching resumes it)"
            )
    return "\n".join(lines)
