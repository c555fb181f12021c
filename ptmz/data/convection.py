"""The convection zoo's data: points (x, t) of the domain x in [0, 2 pi), t in [0, 1] of

    u_t + beta u_x = 0,   u(x, 0) = sin(x),   u(0, t) = u(2 pi, t),

labelled by what they constrain: RESIDUAL (collocation points of the PDE), INITIAL (t = 0),
BOUNDARY (x = 0, compared with x = 2 pi). The test split holds SOLUTION points on a regular grid,
where a network is compared with the exact solution. None of it depends on beta, so one dataset
serves the whole zoo; beta belongs to the loss (`ptmz.objectives.ConvectionLoss`).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ptmz.data.split import Split

RESIDUAL, INITIAL, BOUNDARY, SOLUTION = range(4)
COLLOCATION, EDGE = 1000, 256  # residual points; initial and boundary points each
GRID = (64, 33)  # test grid: x (periodic, endpoint excluded) x t (both ends)
PERIOD = 2 * math.pi


def convection_points(root: Path, download: bool) -> tuple[Split, Split]:
    """Training points drawn uniformly with a fixed seed, and the test grid (float32 (N, 2),
    kinds as labels). Generated, so `root` and `download` are not used."""
    g = torch.Generator().manual_seed(0)
    residual = torch.stack(
        [torch.rand(COLLOCATION, generator=g) * PERIOD, torch.rand(COLLOCATION, generator=g)], 1
    )
    initial = torch.stack([torch.rand(EDGE, generator=g) * PERIOD, torch.zeros(EDGE)], 1)
    boundary = torch.stack([torch.zeros(EDGE), torch.rand(EDGE, generator=g)], 1)
    points = torch.cat([residual, initial, boundary])
    kinds = torch.cat(
        [
            torch.full((n,), k)
            for n, k in ((COLLOCATION, RESIDUAL), (EDGE, INITIAL), (EDGE, BOUNDARY))
        ]
    )
    x = torch.arange(GRID[0]) * (PERIOD / GRID[0])
    t = torch.linspace(0, 1, GRID[1])
    grid = torch.cartesian_prod(x, t)
    return Split(points, kinds), Split(grid, torch.full((len(grid),), SOLUTION))
