"""Global magnitude pruning: zero the smallest-magnitude weights across the whole network."""

from __future__ import annotations

import torch

from ptmz.errors import ConfigError
from ptmz.weights import State


def prunable(state: State) -> list[str]:
    """The weight matrices and kernels (conv and linear weights: 2 or more dimensions); biases
    and BatchNorm entries are never pruned."""
    return [k for k, v in state.items() if k.endswith("weight") and v.dim() >= 2]


def magnitude_prune(state: State, sparsity: float) -> State:
    """A copy of `state` with exactly round(sparsity * N) of its N prunable weights zeroed,
    those of smallest magnitude over all layers together (ties broken by position)."""
    if not 0 <= sparsity < 1:
        raise ConfigError("sparsity", sparsity, "a fraction in [0, 1)")
    keys = prunable(state)
    flat = torch.cat([state[k].abs().flatten() for k in keys])
    drop = torch.zeros(len(flat), dtype=torch.bool)
    drop[flat.argsort(stable=True)[: round(sparsity * len(flat))]] = True
    out = {k: v.clone() for k, v in state.items()}
    for key, mask in zip(keys, drop.split([state[k].numel() for k in keys]), strict=True):
        out[key][mask.view_as(out[key])] = 0
    return out
