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


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy, dx = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


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


def random_rotation(x: torch.Tensor, degrees: float, generator: torch.Generator) -> torch.Tensor:
    """RandomRotation(degrees): an angle uniform in [-degrees, degrees] per image."""
    angles = (torch.rand(x.shape[0], generator=generator, dtype=torch.float64) * 2 - 1) * degrees
    return rotate(x, angles)


def augment_batch(x: torch.Tensor, augment: Augment, generator: torch.Generator) -> torch.Tensor:
    """uint8 (N, C, H, W) -> augmented float32 in [0, 255]."""
    if augment.crop_padding:
        x = random_crop(x, augment.crop_padding, generator)
    if augment.hflip:
        x = random_hflip(x, generator)
    x = x.float()
    if augment.rotation:
        x = random_rotation(x, augment.rotation, generator)
    return x
