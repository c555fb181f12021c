"""Width-parameterised model families, built by name."""

from __future__ import annotations

from functools import partial

from torch import nn

from ptmz.errors import ConfigError, choose
from ptmz.models.gpt import GPT, gpt
from ptmz.models.mlp import MLP, mlp
from ptmz.models.resnet import DEPTHS, ResNet, resnet
from ptmz.models.vit import ViT, vit

MODELS = {**{name: partial(resnet, name) for name in DEPTHS}, "vit": vit, "mlp": mlp, "gpt": gpt}
READS = {"mlp": "points", "gpt": "tokens"}  # the kind of input a family reads, if not images


def reads(model: str) -> str:
    """The kind of input (images, points, tokens) the `model` family reads."""
    return READS.get(model, "images")


def smallest_batch(model: str, image_size: int) -> int:
    """The smallest batch the `model` family trains on at `image_size`: batch norm needs two
    values per channel, and a ResNet's last stage (1/8 of the image a side) is 1x1 below 9."""
    return 2 if model in DEPTHS and -(-image_size // 8) == 1 else 1


def build_model(
    name: str, width: int, in_channels: int, num_classes: int, image_size: int = 32
) -> nn.Module:
    """The `name` family at `width` for inputs of `in_channels` x `image_size` pixels (the
    ResNets take any size; a ViT's patches and positions depend on it; an MLP takes
    `in_channels` features; a GPT reads token windows of `image_size`) and `num_classes`
    outputs (a GPT's vocabulary)."""
    builder = choose("model", name, MODELS)
    if width < 1:
        raise ConfigError("width", width, "a positive integer")
    return builder(width, in_channels, num_classes, image_size)


__all__ = [
    "GPT",
    "MLP",
    "MODELS",
    "ResNet",
    "ViT",
    "build_model",
    "gpt",
    "mlp",
    "reads",
    "resnet",
    "smallest_batch",
    "vit",
]
