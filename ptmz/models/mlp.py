"""MLP-w: a fully connected tanh network, the usual PINN architecture (4 hidden layers of w
units; the convection zoo uses w = 50). Xavier-normal weights and zero biases, as in the PINN
literature."""

from __future__ import annotations

import torch
from torch import nn

DEPTH = 4


class MLP(nn.Module):
    def __init__(self, width: int, depth: int, inputs: int, outputs: int) -> None:
        super().__init__()
        sizes = [inputs, *[width] * depth]
        layers: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:], strict=False):
            layers += [nn.Linear(a, b), nn.Tanh()]
        self.net = nn.Sequential(*layers, nn.Linear(width, outputs))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mlp(width: int, in_channels: int = 2, num_classes: int = 1, image_size: int = 0) -> MLP:
    """`in_channels` input features, `num_classes` outputs; `image_size` is not used."""
    return MLP(width, DEPTH, in_channels, num_classes)
