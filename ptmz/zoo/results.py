"""Where population tasks store their results, beside the runs.

    <run dir>/landscape/<name>_epoch_0008.json                      per-run metrics (hessian)
    <population>/landscape/<grid point>/<name>_epoch_0008.json      per-grid-point metrics
                                                                    (cka, curve, interpolate)

Each file is one JSON object written atomically by exactly one job: the unit of work of a
task (a run, or a grid point) is also the unit of sharding, so parallel jobs never share a file.
A grid-point file names its runs and the seed pairs it measured; a metric that needs two seeds
on a single-seed grid point is stored as {"applicable": false, "reason": ...}.
"""

from __future__ import annotations

from pathlib import Path

from ptmz.zoo.population import Population, Run


def run_result(run: Run, name: str, epoch: int) -> Path:
    return run.path / "landscape" / f"{name}_epoch_{epoch:04d}.json"


def grid_point_result(population: Population, grid_point: str, name: str, epoch: int) -> Path:
    return population.path / "landscape" / grid_point / f"{name}_epoch_{epoch:04d}.json"
