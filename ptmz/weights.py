"""Weight-space basics shared by the landscape metrics and averaging: points between state
dicts, and BatchNorm recalibration (any point off a trained model needs fresh BN statistics)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

State = dict[str, torch.Tensor]


def combine(states: list[State], coefficients: list[float]) -> State:
    """sum_i c_i * state_i for every floating-point entry (weights, biases, BN statistics);
    integer entries (BN's num_batches_tracked) are taken from the first state."""
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = sum(c * s[key] for c, s in zip(coefficients, states, strict=True))
        else:
            out[key] = first.clone()
    return out


def lerp(a: State, b: State, t: float) -> State:
    """The point (1 - t) a + t b of the straight line between two state dicts."""
    return combine([a, b], [1 - t, t])


def bezier(a: State, bend: State, b: State, t: float) -> State:
    """The quadratic Bezier curve (1-t)^2 a + 2t(1-t) bend + t^2 b; t=0 is a, t=1 is b."""
    return combine([a, bend, b], [(1 - t) ** 2, 2 * t * (1 - t), t**2])


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> nn.Module:
    """Reset every BatchNorm's running statistics and recompute them over `batches`
    (unaugmented training data), as needed after averaging or interpolation.

    Each batch is weighted by its size, so the running mean is exactly the mean over all
    samples and the running variance the size-weighted mean of the per-batch (unbiased)
    variances. The model's train/eval flag and the BN momenta are restored.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
    model.train()
    seen = 0
    for x, _ in batches:
        for m in norms:  # new = old + b / (seen + b) * (batch - old): a running exact average
            m.momentum = len(x) / (seen + len(x))
        model(x)
        seen += len(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return model
