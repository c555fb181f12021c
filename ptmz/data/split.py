"""A dataset split as two tensors: inputs and labels, whole."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 images (N, C, H, W), or float points (N, features)
    labels: torch.Tensor  # int64, (N,): classes, or the kind of each point

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index])

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))
