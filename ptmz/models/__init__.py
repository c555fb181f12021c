"""Width-parameterised model families, built by name."""

from __future__ import annotations

from functools import partial

from torch import nn

from ptmz.errors import ConfigError, choose
from ptmz.models.resnet import DEPTHS, ResNet, resnet

MODELS = {name: partial(resnet, name) for name in DEPTHS}


def build_model(name: str, width: int, in_channels: int, num_classes: int) -> nn.Module:
    builder = choose("model", name, MODELS)
    if width < 1:
        raise ConfigError("width", width, "a positive integer")
    return builder(width=width, in_channels=in_channels, num_classes=num_classes)


__all__ = ["MODELS", "ResNet", "build_model", "resnet"]
