"""Global magnitude pruning: zero the smallest-magnitude weights across the whole network."""

from __future__ import annotations

import torch
from torch import nn

from ptmz.errors import ConfigError
from ptmz.weights import State


def prunable(model: nn.Module) -> list[str]:
    """The state keys of `model`'s convolution and linear weights. Biases, norms, embeddings and
    position or class tokens are never pruned."""
    layers = (nn.modules.conv._ConvNd, nn.Linear)
    return [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, layers)]


def magnitude_prune(state: State, sparsity: float, keys: list[str]) -> State:
    """A copy of `state` with exactly round(sparsity * N) of the N entries of its `keys` (see
    `prunable`) zeroed, those of smallest magnitude over all of them (ties broken by position)."""
    if not 0 <= sparsity < 1:
        raise ConfigError("sparsity", sparsity, "a fraction in [0, 1)")
    flat = torch.cat([state[k].abs().flatten() for k in keys])
    drop = torch.zeros(len(flat), dtype=torch.bool)
    drop[flat.argsort(stable=True)[: round(sparsity * len(flat))]] = True
    out = {k: v.clone() for k, v in state.items()}
    for key, mask in zip(keys, drop.split([state[k].numel() for k in keys]), strict=True):
        out[key][mask.view_as(out[key])] = 0
    return out
