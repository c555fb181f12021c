"""A loader over a dataset held on the training device: index batches, augment whole batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ptmz.data.augment import Augment, Draws, apply, draw
from ptmz.data.datasets import Split


class DeviceLoader:
    """Batches of (normalised float images, labels) from a Split held on `device` as uint8
    (or of float points, as they are, when `mean` is None).

    Each pass draws a permutation, then each batch's augmentation draws in turn, from
    `generator`, so the data order of a run is a function of its seed and resumes exactly from a
    saved generator state. The last, smaller batch is kept, except that a lone last sample
    joins the batch before it: batch norm cannot train on one sample of 1x1 feature maps (a
    ResNet's last stage on 8x8 digits), and its statistics from one sample are noise anyway.

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
        return len(self.batches())

    def batches(self) -> list[slice]:
        """Where each batch of a pass lies in its order."""
        return batch_bounds(len(self.labels), self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return _passes([self])

    def plan(self) -> tuple[torch.Tensor, Draws | None]:
        """A new pass: its order and its augmentation draws (None without augmentation), all
        drawn from the generator now."""
        n = len(self.labels)
        if self.generator is None:
            order = torch.arange(n, device=self.labels.device)
        else:
            order = torch.randperm(n, generator=self.generator).to(self.labels.device)
        if self.augment is None:
            return order, None
        sizes = [batch.stop - batch.start for batch in self.batches()]
        per_batch = [draw(size, self.augment, self.generator) for size in sizes]
        return order, Draws.cat(per_batch).to(self.labels.device)

    def shares_batches_with(self, other: DeviceLoader) -> bool:
        """Whether `other` batches the same samples the same way (its own order and draws
        aside), so that their batches can be made as one."""
        tensors = ("images", "labels", "mean", "std")
        return (other.batch_size, other.augment) == (self.batch_size, self.augment) and all(
            _same(getattr(other, name), getattr(self, name)) for name in tensors
        )


def batch_bounds(n: int, batch_size: int) -> list[slice]:
    """The batches of a pass over n samples: `batch_size` each and a smaller last one, except
    that a lone last sample joins the batch before it (see DeviceLoader)."""
    starts = list(range(0, n, batch_size))
    if batch_size > 1 and len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, starts[1:] + [n], strict=True)]


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is b or (a is not None and b is not None and torch.equal(a, b))


def stacked_batches(
    loaders: Sequence[DeviceLoader],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass of each of `loaders` (which share their batches, see `shares_batches_with`),
    step by step: (M, B, ...) images and (M, B) labels, loader m's batch at [m], exactly what it
    yields alone. Each keeps its own order and draws, but the M batches of a step are gathered,
    augmented and normalised as one, so the work per step is one loader's."""
    for x, y in _passes(loaders):
        yield x.unflatten(0, (len(loaders), -1)), y.unflatten(0, (len(loaders), -1))


def _passes(loaders: Sequence[DeviceLoader]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A pass of each loader, their batches of a step joined along the batch dimension."""
    first = loaders[0]
    plans = [loader.plan() for loader in loaders]
    for batch in first.batches():
        index = _joined([order[batch] for order, _ in plans])
        x, y = first.images[index], first.labels[index]
        if first.augment is not None:
            x = apply(x, first.augment, Draws.cat([draws[batch] for _, draws in plans]))
        if x.device.type == "cpu":
            # A gather from a channels_last split, or a crop, is channels_last, and from such
            # input torch 2.14's oneDNN computes wrong weight gradients: for 1x1 stride-2
            # convolutions of under 8 channels (ResNet-18 at widths 2 and 4), corrupting the heap
            # as it does (oneDNN issue 6035), and at width 8 in the last stage (1% off).
            # cuDNN has no such bug and prefers channels_last.
            x = x.contiguous()
        yield x if first.mean is None else (x.float() - first.mean) / first.std, y


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)  # one loader: no copy
