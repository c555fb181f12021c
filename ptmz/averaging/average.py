"""Averaging networks in weight space (over epochs or seeds) and in output space (ensembles)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ptmz.data import DeviceLoader
from ptmz.models.mode import eval_mode
from ptmz.weights import State, combine


def average_states(states: list[State]) -> State:
    """The uniform average of every floating-point entry, biases and BN statistics included
    (the published code skipped bias keys). Recalibrate BN before using the result."""
    return combine(states, [1 / len(states)] * len(states))


@torch.no_grad()
def ensemble_metrics(models: list[nn.Module], loader: DeviceLoader) -> dict[str, float]:
    """Loss and accuracy of the logit-averaged ensemble of `models`, next to the mean of the
    members' own, and the ensemble's gain in accuracy over that mean."""
    n = len(loader.labels)
    loss = torch.zeros(len(models) + 1, dtype=torch.float64)
    correct = torch.zeros(len(models) + 1, dtype=torch.float64)
    with eval_mode(*models):
        for x, y in loader:
            logits = [model(x) for model in models]
            logits.append(torch.stack(logits).mean(0))  # the ensemble is the last entry
            for i, out in enumerate(logits):
                loss[i] += F.cross_entropy(out, y, reduction="sum").item()
                correct[i] += (out.argmax(1) == y).sum().item()
    members_acc = float(correct[:-1].mean() / n)
    return {
        "ensemble_acc": float(correct[-1] / n),
        "ensemble_loss": float(loss[-1] / n),
        "members_acc": members_acc,
        "members_loss": float(loss[:-1].mean() / n),
        "ensemble_gain_acc": float(correct[-1] / n) - members_acc,
    }
