"""Eval mode for measurements, without disturbing a model's own train/eval flags."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Eval mode inside (BN running statistics, no dropout); afterwards every submodule gets
    its own flag back, mixed flags included."""
    flags = [(module, module.training) for model in models for module in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for module, training in flags:
            module.training = training
