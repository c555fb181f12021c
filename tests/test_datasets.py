"""Datasets through torchvision's real dataset code, on files the tests write themselves."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image

from ptmz.data import DatasetNotFound, load_dataset, stratified_subset
from ptmz.data.datasets import normalization
from ptmz.errors import ConfigError

from conftest import write_idx


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_mnist_family_reads_idx_files(tmp_path, name, folder):
    g = torch.Generator().manual_seed(0)
    images = {
        s: torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        for s, n in (("train", 30), ("t10k", 12))
    }
    labels = {s: torch.arange(len(x), dtype=torch.uint8) % 10 for s, x in images.items()}
    for s in images:
        write_idx(tmp_path / folder / "raw" / f"{s}-images-idx3-ubyte", images[s])
        write_idx(tmp_path / folder / "raw" / f"{s}-labels-idx1-ubyte", labels[s])
    data = load_dataset(name, tmp_path, download=False)
    assert data.train.images.shape == (30, 1, 28, 28) and data.in_channels == 1
    assert torch.equal(data.train.images[:, 0], images["train"])
    assert torch.equal(data.test.labels, labels["t10k"].long())
    assert data.num_classes == 10


def test_tinyimagenet_standard_layout(tmp_path):
    """Class k is line k of wnids.txt, as in the published zoos; the file is deliberately not
    sorted here, so sorting the folder names would swap the labels."""
    base = tmp_path / "tiny-imagenet-200"
    base.mkdir()
    (base / "wnids.txt").write_text("n01629819\nn01443537\n")
    colours = {"n01443537": 40, "n01629819": 200}
    for wnid, value in colours.items():
        folder = base / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (64, 64), (value,) * 3).save(folder / f"{wnid}_{i}.JPEG")
    (base / "val" / "images").mkdir(parents=True)
    lines = []
    for i, wnid in enumerate(["n01629819", "n01443537"]):
        grey = i == 1  # TinyImageNet has some greyscale images: they load as RGB
        image = (
            Image.new("L", (64, 64), colours[wnid])
            if grey
            else Image.new("RGB", (64, 64), (colours[wnid],) * 3)
        )
        image.save(base / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")

    data = load_dataset("tinyimagenet", tmp_path)
    assert data.train.images.shape == (6, 3, 64, 64) and data.train.images.dtype == torch.uint8
    # train files come in path order: n01443537's (line 2 of wnids.txt) first
    assert data.train.labels.tolist() == [1, 1, 1, 0, 0, 0]
    assert data.test.labels.tolist() == [0, 1]
    # JPEG is lossy, but a flat colour survives to within a few levels
    assert (data.test.images[0].float().mean() - 200).abs() < 3
    assert (data.test.images[1].float().mean() - 40).abs() < 3
    assert data.num_classes == 200


@pytest.mark.parametrize(
    "name, mean, std",
    [
        (
            "cifar10",
            [m / 255 for m in (125.3, 123.0, 113.9)],
            [s / 255 for s in (63.0, 62.1, 66.7)],
        ),
        ("cifar100", (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
        ("svhn", (0.4377, 0.4438, 0.4728), (0.198, 0.201, 0.197)),
        ("tinyimagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet's
    ],
)
def test_each_dataset_is_normalised_as_its_published_zoo(name, mean, std):
    """The Normalize constants of each published zoo's training script."""
    assert normalization(name) == (pytest.approx(tuple(mean)), pytest.approx(tuple(std)))


def test_missing_dataset_names_dataset_path_and_remedy(tmp_path):
    with pytest.raises(DatasetNotFound) as missing:
        load_dataset("cifar10", tmp_path / "nowhere", download=False)
    message = str(missing.value)
    assert "dataset=cifar10" in message and str(tmp_path / "nowhere") in message
    assert "data_root=" in message and "download" in message
    with pytest.raises(DatasetNotFound, match=r"tinyimagenet.*tiny-imagenet-200.*Unpack"):
        load_dataset("tinyimagenet", tmp_path)


def test_unknown_dataset_lists_the_valid_names():
    names = r"cifar10, cifar100, convection, digits"
    with pytest.raises(ConfigError, match=rf"dataset='imagenet'.*{names}"):
        load_dataset("imagenet")


def test_digits_is_offline_and_split_is_fixed():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert (len(a.train), len(a.test)) == (1347, 450)
    assert a.train.images.shape[1:] == (1, 8, 8) and a.train.images.max() == 255
    assert torch.equal(a.test.images, b.test.images)
    assert torch.bincount(a.test.labels).min() >= 43  # stratified: ~45 per class


def test_stratified_subset():
    labels = torch.arange(1000) % 10
    labels[:100] = 0  # unbalanced: class 0 has more members
    index = stratified_subset(labels, 0.25, seed=3)
    full = torch.bincount(labels)
    kept = torch.bincount(labels[index], minlength=10)
    assert torch.equal(kept, torch.round(full * 0.25).long())
    assert torch.equal(index, stratified_subset(labels, 0.25, seed=3))
    assert not torch.equal(index, stratified_subset(labels, 0.25, seed=4))
    assert len(index.unique()) == len(index)
    assert torch.equal(stratified_subset(labels, 1.0, seed=0), torch.arange(1000))
    assert torch.bincount(labels[stratified_subset(labels, 0.001, seed=0)]).min() == 1


def test_jobs_starting_on_a_fresh_data_root_download_once(tmp_path):
    """Four jobs find no dataset at once: one downloads, the others wait and open its files
    (flock excludes separate opens of the lock file, threads as well as processes)."""
    from ptmz.data.datasets import _torchvision

    downloads, active, most, count = [], [0], [0], threading.Lock()

    def make(download: bool) -> str:
        if not download:
            if not downloads:
                raise RuntimeError("Dataset not found or corrupted.")
            return "opened"
        with count:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.3)
        downloads.append(True)
        with count:
            active[0] -= 1
        return "downloaded"

    with ThreadPoolExecutor(4) as jobs:
        opened = list(jobs.map(lambda _: _torchvision("cifar10", tmp_path, True, make), range(4)))
    assert len(downloads) == 1 and most[0] == 1
    assert sorted(opened) == ["downloaded", "opened", "opened", "opened"]


def test_a_data_root_without_file_locks_is_named(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(DatasetNotFound, match=r"No locks available.*file system with flock"):
        load_dataset("mnist", tmp_path, download=True)
