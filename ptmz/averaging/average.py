"""Averaging networks in weight space (over epochs or seeds) and in output space (ensembles)."""

from __future__ import annotations

import torch
from torch import nn

from ptmz.data import DeviceLoader
from ptmz.models.mode import eval_mode
from ptmz.objectives import CLASSIFICATION, Objective
from ptmz.weights import State, combine


def average_states(states: list[State]) -> State:
    """The uniform average of every floating-point entry, biases and BN statistics included
    (the published code skipped bias keys). Recalibrate BN before using the result."""
    return combine(states, [1 / len(states)] * len(states))


class Ensemble(nn.Module):
    """The members' outputs averaged: logits for classifiers and language models, the field u
    for a PINN (whose loss then differentiates the average)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(0)


def ensemble_metrics(
    models: list[nn.Module], loader: DeviceLoader, objective: Objective = CLASSIFICATION
) -> dict[str, float]:
    """The objective's loss and metric of the output-averaged ensemble of `models`, next to the
    mean of the members' own, and the ensemble's gain in the metric over that mean (ensemble
    minus members: positive is better for accuracy, negative for an error or a perplexity)."""
    with eval_mode(*models):
        ensemble = objective.evaluate(Ensemble(models), loader)
        members = [objective.evaluate(model, loader) for model in models]
    out = {}
    for key, value in ensemble.items():
        if value is not None:
            out[f"ensemble_{key}"] = value
            out[f"members_{key}"] = sum(m[key] for m in members) / len(members)
    metric = objective.metric
    if f"ensemble_{metric}" in out:
        out[f"ensemble_gain_{metric}"] = out[f"ensemble_{metric}"] - out[f"members_{metric}"]
    return out
