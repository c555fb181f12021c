"""Batched augmentation of uint8 images: every sample gets its own random draws.

The same distribution as torchvision's per-sample RandomCrop(padding) + RandomHorizontalFlip +
RandomRotation(degrees) pipeline, done on whole batches so no per-sample Python runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    crop_padding: int = 4  # RandomCrop(size, padding=crop_padding); 0 disables
    hflip: bool = True  # RandomHorizontalFlip(p=0.5)
    rotation: float = 20.0  # RandomRotation(rotation): angle uniform in [-rotation, rotation]

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.hflip or self.rotation)


@dataclass(frozen=True)
class Draws:
    """The random choices for a batch, one per sample: crop offsets (dy, dx) into the padded
    image, whether to flip, and a rotation angle in degrees (None: that step is off)."""

    offsets: torch.Tensor | None  # (2, N) in [0, 2 * padding]
    flips: torch.Tensor | None  # (N,) bool
    angles: torch.Tensor | None  # (N,) float64

    @staticmethod
    def cat(parts: list[Draws]) -> Draws:
        """The draws of consecutive batches (or of batches to be augmented as one) as one."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        return Draws(
            None if first.offsets is None else torch.cat([p.offsets for p in parts], 1),
            None if first.flips is None else torch.cat([p.flips for p in parts]),
            None if first.angles is None else torch.cat([p.angles for p in parts]),
        )

    def to(self, device: torch.device) -> Draws:
        return Draws(*(None if t is None else t.to(device) for t in self._fields()))

    def __getitem__(self, samples: slice) -> Draws:
        offsets, flips, angles = self._fields()
        return Draws(
            None if offsets is None else offsets[:, samples],
            None if flips is None else flips[samples],
            None if angles is None else angles[samples],
        )

    def _fields(self) -> tuple[torch.Tensor | None, ...]:
        return self.offsets, self.flips, self.angles


def draw(n: int, augment: Augment, generator: torch.Generator) -> Draws:
    """Independent draws for `n` samples, with the distributions of torchvision's RandomCrop,
    RandomHorizontalFlip(0.5) and RandomRotation."""
    offsets = flips = angles = None
    if augment.crop_padding:
        offsets = torch.randint(0, 2 * augment.crop_padding + 1, (2, n), generator=generator)
    if augment.hflip:
        flips = torch.rand(n, generator=generator) < 0.5
    if augment.rotation:
        uniform = torch.rand(n, generator=generator, dtype=torch.float64)
        angles = (uniform * 2 - 1) * augment.rotation
    return Draws(offsets, flips, angles)


def crop(x: torch.Tensor, padding: int, offsets: torch.Tensor) -> torch.Tensor:
    """Each sample's window at (dy, dx) of its zero-padded image, the input's size."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy, dx = offsets.to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def hflip(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    return torch.where(flips.to(x.device)[:, None, None, None], x.flip(-1), x)


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each float image counter-clockwise about its centre (torchvision's convention),
    nearest-neighbour, zero fill, same size."""
    _, _, h, w = x.shape
    angle = degrees.to(torch.float64).deg2rad()
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    # affine_grid maps output to input coordinates in [-1, 1] per axis: rescale so the rotation
    # is rigid in pixels for non-square images too.
    theta = torch.stack(
        [torch.stack([cos, -sin * h / w, zero], 1), torch.stack([sin * w / h, cos, zero], 1)], 1
    ).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def apply(x: torch.Tensor, augment: Augment, draws: Draws) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 255]: crop, flip, then rotate, as drawn."""
    if draws.offsets is not None:
        x = crop(x, augment.crop_padding, draws.offsets)
    if draws.flips is not None:
        x = hflip(x, draws.flips)
    x = x.float()
    if draws.angles is not None:
        x = rotate(x, draws.angles)
    return x


def augment_batch(x: torch.Tensor, augment: Augment, generator: torch.Generator) -> torch.Tensor:
    """uint8 (N, C, H, W) -> augmented float32 in [0, 255], fresh draws per sample."""
    if not augment.active:
        return x.float()
    return apply(x, augment, draw(len(x), augment, generator))
