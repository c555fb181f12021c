"""Paths between two trained networks: the straight line and a trained quadratic Bezier curve.

Both evaluate the network at points t in [0, 1] of the path: at every t the BatchNorm
statistics are recomputed on unaugmented training data (a point between two networks has no
valid statistics of its own), then train and test loss and error are measured in eval mode.

Definitions (E(t) = loss or error at t, m = (E(0) + E(1)) / 2):
- `barrier` (straight line; Frankle et al. 2020, Entezari et al. 2022): the largest rise above
  the chord between the ends, max_t [E(t) - ((1 - t) E(0) + t E(1))] over the evaluated t.
  Positive = the line climbs over a barrier; 0 = never above the chord (a path that only
  descends has none, whatever its ends).
- `mc` (curve; Yang et al. 2021 and the published zoo): t* maximises |E(t) - m| over the
  evaluated t, endpoints included, and mc = m - E(t*). Negative mc = a barrier remains on the
  curve; positive = the curve is better than its ends; ~0 = connected.
- `mc_interior`: the same with t* restricted to interior points, so a flat path gives exactly
  0 rather than the endpoint half-difference.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from ptmz.data import DeviceLoader
from ptmz.errors import ConfigError
from ptmz.objectives import CLASSIFICATION, Loss, Objective, cross_entropy
from ptmz.weights import State, bezier, lerp, recalibrate_bn


def mode_connectivity(values: Sequence[float], interior: bool = False, tol: float = 1e-9) -> float:
    """mc = m - E(t*), t* = argmax |E(t) - m| (see the module docstring for the sign).

    Deviations within `tol` of the largest count as ties and the first evaluated t wins, as an
    argmax does: on a monotone path both ends deviate equally, and without the tolerance float
    rounding would pick the sign. Such a path gets mc = (E(1) - E(0)) / 2; `interior=True`
    looks only between the ends. A path with a non-finite E(t) (diverged) has no mc: NaN.
    """
    if not all(math.isfinite(e) for e in values):
        return math.nan
    mean_ends = (values[0] + values[-1]) / 2
    candidates = values[1:-1] if interior else values
    deviations = [abs(e - mean_ends) for e in candidates]
    largest = max(deviations)
    extreme = next(e for e, d in zip(candidates, deviations, strict=True) if d >= largest - tol)
    return mean_ends - extreme


def barrier(values: Sequence[float], ts: Sequence[float] | None = None) -> float:
    """max_t [E(t) - ((1 - t) E(0) + t E(1))] over the evaluated `ts` (default: evenly spaced
    from 0 to 1); NaN for a path with a non-finite E(t)."""
    if not all(math.isfinite(e) for e in values):
        return math.nan
    if ts is None:
        ts = [i / (len(values) - 1) for i in range(len(values))]
    ends = values[0], values[-1]
    return max(e - ((1 - t) * ends[0] + t * ends[1]) for t, e in zip(ts, values, strict=True))


@dataclass(frozen=True)
class PathData:
    """The data a path is measured on: BN recalibration batches and the two evaluation splits
    (all unaugmented, fixed order)."""

    bn: DeviceLoader
    train: DeviceLoader
    test: DeviceLoader
    objective: Objective = CLASSIFICATION  # the loss and error measured (and curves fit to)


def evaluate_path(
    model: nn.Module, point: Callable[[float], State], ts: Sequence[float], data: PathData
) -> dict[str, list[float]]:
    """Loss and error (the objective's: 1 - accuracy for classifiers) on train and test data
    at every t of a path; None where the objective has no error on a split."""
    out: dict[str, list[float]] = {
        "t": list(ts),
        "train_loss": [],
        "train_error": [],
        "test_loss": [],
        "test_error": [],
    }
    probe = copy.deepcopy(model)
    for t in ts:
        probe.load_state_dict(point(t))
        recalibrate_bn(probe, data.bn)
        for split, loader in (("train", data.train), ("test", data.test)):
            scores = data.objective.evaluate(probe, loader)
            out[f"{split}_loss"].append(scores["loss"])
            out[f"{split}_error"].append(data.objective.error(scores))
    return out


def _summaries(path: dict[str, list[float]], metric: Callable, name: str) -> dict[str, float]:
    keys = ("train_loss", "train_error", "test_loss", "test_error")
    return {f"{name}_{k}": metric(path[k]) for k in keys if None not in path[k]}


def path_ts(points: int, key: str = "points") -> list[float]:
    """`points` evenly spaced t in [0, 1], ends included: at least one between them, or mc and
    the barrier would say nothing about the path."""
    if isinstance(points, bool) or not isinstance(points, int) or points < 3:
        raise ConfigError(key, points, "an integer >= 3 (both ends and a point between)")
    return torch.linspace(0, 1, points).tolist()


def interpolation_metrics(
    model: nn.Module, a: State, b: State, data: PathData, points: int = 11
) -> dict:
    """Loss/error along the straight line from a to b and its barrier."""
    path = evaluate_path(model, lambda t: lerp(a, b, t), path_ts(points), data)
    return {**_summaries(path, partial(barrier, ts=path["t"]), "barrier"), "path": path}


@dataclass(frozen=True)
class CurveSettings:
    """The published curve-fitting settings (Garipov et al.'s recipe, as the zoo code uses it)."""

    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9
    l2: float = 5e-4  # on the curve's weights at the sampled t, as 0.5 * l2 * ||theta(t)||^2
    points: int = 5  # evaluated t, endpoints included
    seed: int = 0


def curve_lr_factor(progress: float) -> float:
    """Held for the first half, then linear decay to 1% at 90% of training, then 1%.
    A function of progress alone (the published code multiplied it into the lr every epoch)."""
    if progress <= 0.5:
        return 1.0
    if progress <= 0.9:
        return 1.0 - (progress - 0.5) / 0.4 * 0.99
    return 0.01


def fit_bezier(
    model: nn.Module,
    a: State,
    b: State,
    loader: DeviceLoader,
    settings: CurveSettings = CurveSettings(),
    progress: bool = False,
    loss_fn: Loss = cross_entropy,
) -> State:
    """Train the middle bend of a quadratic Bezier curve from a to b (ends fixed) and return it.

    The bend starts at the midpoint of the line. Each step samples t ~ U(0, 1) and minimises the
    loss (the zoo's objective) of the network at theta(t) plus 0.5 * l2 * ||theta(t)||^2, through
    `torch.func.functional_call`, so any nn.Module works without a curve-specific class.
    """
    net = copy.deepcopy(model).train()
    names = [n for n, _ in net.named_parameters()]
    device = next(net.parameters()).device
    ends = [{n: s[n].to(device) for n in names} for s in (a, b)]
    bend = {n: ((ends[0][n] + ends[1][n]) / 2).requires_grad_() for n in names}
    optimizer = torch.optim.SGD(bend.values(), lr=settings.lr, momentum=settings.momentum)
    generator = torch.Generator().manual_seed(settings.seed)
    terminal = progress and sys.stderr.isatty()
    bar = tqdm(total=settings.epochs * len(loader), disable=not terminal, desc="curve", leave=False)
    for epoch in range(settings.epochs):
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * curve_lr_factor(epoch / settings.epochs)
        for x, y in loader:
            t = torch.rand((), generator=generator).item()
            theta = bezier(ends[0], bend, ends[1], t)
            loss = loss_fn(partial(functional_call, net, theta), x, y)
            loss = loss + 0.5 * settings.l2 * sum(p.pow(2).sum() for p in theta.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update()
    bar.close()
    return {n: p.detach() for n, p in bend.items()}


def curve_metrics(
    model: nn.Module,
    a: State,
    b: State,
    train_loader: DeviceLoader,
    data: PathData,
    settings: CurveSettings = CurveSettings(),
    progress: bool = False,
) -> dict:
    """Fit a Bezier curve from a to b and measure it: mc, mc_interior and the E(t) arrays."""
    ts = path_ts(settings.points)
    bend = fit_bezier(model, a, b, train_loader, settings, progress, data.objective.loss)
    full_bend = {**a, **{n: v.to(a[n].device) for n, v in bend.items()}}
    path = evaluate_path(model, lambda t: bezier(a, full_bend, b, t), ts, data)
    return {
        **_summaries(path, mode_connectivity, "mc"),
        **_summaries(path, lambda v: mode_connectivity(v, interior=True), "mc_interior"),
        "path": path,
    }
