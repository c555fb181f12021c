"""Batched augmentation against independent oracles: padding+slicing, flip, rot90, torchvision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from ptmz.data.augment import Augment, apply, augment_batch, crop, draw, hflip, rotate


@pytest.fixture
def images():
    return torch.randint(
        0, 256, (16, 3, 10, 10), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )


def test_crop_is_a_window_of_the_zero_padded_image(images):
    offsets = draw(len(images), Augment(2, False, 0), torch.Generator().manual_seed(1)).offsets
    out = crop(images, 2, offsets)
    padded = F.pad(images, (2, 2, 2, 2))
    offsets = set()
    for i in range(len(images)):
        windows = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], padded[i, :, dy : dy + 10, dx : dx + 10])
        ]
        assert windows, f"sample {i} is not a crop"
        offsets.add(windows[0])
    assert len(offsets) > 4  # samples get their own offsets


def test_flip_flips_about_half_the_samples(images):
    batch = images.repeat(8, 1, 1, 1)
    out = hflip(
        batch, draw(len(batch), Augment(0, True, 0), torch.Generator().manual_seed(2)).flips
    )
    flipped = [torch.equal(o, b.flip(-1)) for o, b in zip(out, batch, strict=True)]
    kept = [torch.equal(o, b) for o, b in zip(out, batch, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 0.3 < sum(flipped) / len(flipped) < 0.7


@pytest.mark.parametrize("k", [1, 2, 3])
def test_quarter_turns_equal_rot90(images, k):
    x = images.float()
    out = rotate(x, torch.full((len(x),), 90.0 * k))
    assert torch.equal(out, torch.rot90(x, k, dims=(-2, -1)))


def test_rotation_follows_torchvision_convention(images):
    x = images.float()
    angles = torch.empty(len(x)).uniform_(-20, 20, generator=torch.Generator().manual_seed(3))
    ours = rotate(x, angles)
    for i, angle in enumerate(angles.tolist()):
        theirs = TF.rotate(x[i : i + 1], angle, interpolation=TF.InterpolationMode.NEAREST)
        assert torch.equal(ours[i], theirs[0])


def test_augment_batch_is_reproducible_from_the_generator(images):
    spec = Augment(crop_padding=4, hflip=True, rotation=20)
    a = augment_batch(images, spec, torch.Generator().manual_seed(5))
    b = augment_batch(images, spec, torch.Generator().manual_seed(5))
    assert a.dtype == torch.float32 and a.shape == images.shape
    assert torch.equal(a, b)
    assert torch.equal(augment_batch(images, Augment(0, False, 0), None), images.float())


def test_batched_pipeline_equals_torchvision_per_sample_for_the_same_draws(images):
    """RandomCrop(padding) + RandomHorizontalFlip + RandomRotation, one image at a time through
    torchvision's functional ops with each sample's draws, equals the batched result exactly."""
    spec = Augment(crop_padding=4, hflip=True, rotation=20)
    draws = draw(len(images), spec, torch.Generator().manual_seed(7))
    ours = apply(images, spec, draws)
    h, w = images.shape[-2:]
    for i, image in enumerate(images):
        dy, dx = draws.offsets[:, i].tolist()
        theirs = TF.crop(TF.pad(image, [4]), dy, dx, h, w)
        if draws.flips[i]:
            theirs = TF.hflip(theirs)
        angle = float(draws.angles[i])
        theirs = TF.rotate(theirs.float(), angle, interpolation=TF.InterpolationMode.NEAREST)
        assert torch.equal(ours[i], theirs), i
    assert 0 < int(draws.flips.sum()) < len(images)  # both branches were exercised
