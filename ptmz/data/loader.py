"""A loader over a dataset held on the training device: index batches, augment whole batches."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from ptmz.data.augment import Augment, Draws, apply, draw
from ptmz.data.datasets import Split


class DeviceLoader:
    """Batches of (normalised float images, labels) from a Split held on `device` as uint8
    (or of float points, as they are, when `mean` is None).

    Each pass draws a permutation, then each batch's augmentation draws in turn, from
    `generator`, so the data order of a run is a function of its seed and resumes exactly from a
    saved generator state. The last, smaller batch is kept.

    All draws of a pass are made up front and sent to the device in one copy: a copy from host
    memory per step would make the host wait for the device every step.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        mean: tuple[float, ...] | None,
        std: tuple[float, ...] | None,
        device: torch.device,
        augment: Augment | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size = batch_size
        self.augment = augment if augment is not None and augment.active else None
        self.generator = generator  # None: fixed order, no augmentation draws
        self.mean = self.std = None  # float points are used as they are
        if mean is not None:
            shape = (1, -1, 1, 1)
            self.mean = torch.tensor(mean, device=device).view(shape) * 255
            self.std = torch.tensor(std, device=device).view(shape) * 255

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.generator is None:
            order = torch.arange(n, device=self.labels.device)
        else:
            order = torch.randperm(n, generator=self.generator).to(self.labels.device)
        starts = range(0, n, self.batch_size)
        if self.augment is not None:
            sizes = [min(self.batch_size, n - start) for start in starts]
            per_batch = [draw(size, self.augment, self.generator) for size in sizes]
            draws = Draws.cat(per_batch).to(self.labels.device)
        for start in starts:
            batch = slice(start, start + self.batch_size)
            x, y = self.images[order[batch]], self.labels[order[batch]]
            if self.augment is not None:
                x = apply(x, self.augment, draws[batch])
            yield x if self.mean is None else (x.float() - self.mean) / self.std, y
