"""Dataset registry: every dataset arrives as uint8 images (N, C, H, W) plus int64 labels.

Keeping the raw uint8 tensors (not a torchvision Dataset object) lets the loader hold the
whole training set on the training device and augment whole batches at once.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ptmz.data.convection import convection_points
from ptmz.data.split import Split
from ptmz.data.text import CONTEXT, VOCAB, text_windows
from ptmz.errors import PtmzError, choose


class DatasetNotFound(PtmzError):
    def __init__(self, name: str, root: Path, how: str, reason: str = "") -> None:
        self.arguments = (name, root, how, reason)
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"dataset={name}: not found in {root}{detail}. {how} "
            f"Point data_root=... at the folder that holds it."
        )

    def __reduce__(self) -> tuple:  # a cluster job pickles its error back to the launcher
        return type(self), self.arguments


@dataclass(frozen=True)
class ImageDataset:
    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]  # per channel, in [0, 1]
    std: tuple[float, ...]

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]


def _split(images: np.ndarray | torch.Tensor, labels, channels_last: bool = False) -> Split:
    images = torch.as_tensor(images)
    if images.ndim == 3:
        images = images.unsqueeze(1)
    elif channels_last:
        images = images.permute(0, 3, 1, 2)
    return Split(images.contiguous(), torch.as_tensor(np.asarray(labels), dtype=torch.int64))


def _torchvision(name: str, root: Path, download: bool, make: Callable[[bool], object]):
    """Open a torchvision dataset; a missing one becomes a DatasetNotFound naming the path.

    Jobs starting together on a fresh data_root (an array of them on a cluster) download one
    at a time, under a lock file in data_root: the others then find the files in place."""
    try:
        return make(False)
    except RuntimeError as missing:
        if not download:
            raise DatasetNotFound(
                name, root, "Download it (dataset.download=true) or copy torchvision's files there."
            ) from missing
    with _download_lock(name, root):
        try:
            return make(False)  # fetched by another job while this one waited
        except RuntimeError:
            pass
        try:
            return make(True)
        except Exception as failed:  # network errors come in many types (URLError, OSError, ...)
            raise DatasetNotFound(
                name,
                root,
                "The download failed: copy torchvision's files there by hand.",
                reason=f"{type(failed).__name__}: {failed}",
            ) from failed


@contextmanager
def _download_lock(name: str, root: Path) -> Iterator[None]:
    """Hold `root`'s lock file for `name`'s download (released when the file closes)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f".{name}.download.lock", "a")  # noqa: SIM115 (closed by the with below)
    except OSError as error:
        raise DatasetNotFound(
            name, root, "data_root must be a folder this job can write.", reason=str(error)
        ) from error
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError as error:  # ENOLCK, ENOSYS: a file system without working locks
            raise DatasetNotFound(
                name,
                root,
                "Download it into a data_root on a file system with flock (on NFS: "
                "mounted with locking), or copy torchvision's files there.",
                reason=str(error),
            ) from error
        yield


Loader = Callable[[Path, bool], tuple[Split, Split]]


def _digits(root: Path, download: bool) -> tuple[Split, Split]:
    """scikit-learn's bundled 8x8 digits (1797 images, 0..16) on a fixed 75/25 stratified split.

    The split uses its own fixed seed so every run of every zoo sees the same test set.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, digits.target, test_size=0.25, stratify=digits.target, random_state=0
    )
    return _split(x_tr, y_tr), _split(x_te, y_te)


def _torchvision_pair(cls_name: str, channels_last: bool = False) -> Loader:
    """Train and test Split of a torchvision dataset class (CIFAR, SVHN, MNIST families)."""

    def load(root: Path, download: bool) -> tuple[Split, Split]:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)

        def split(train: bool) -> Split:
            # SVHN names its splits; the others take train=True/False.
            which = (
                {"split": "train" if train else "test"} if cls_name == "SVHN" else {"train": train}
            )
            ds = _torchvision(
                cls_name.lower(), root, download, lambda dl: cls(str(root), download=dl, **which)
            )
            labels = ds.labels if cls_name == "SVHN" else ds.targets
            return _split(ds.data, labels, channels_last)

        return split(True), split(False)

    return load


def _tinyimagenet(root: Path, download: bool) -> tuple[Split, Split]:
    """The standard tiny-imagenet-200 folder: wnids.txt, train/<wnid>/images/*, val/images +
    annotations."""
    from PIL import Image

    base = root / "tiny-imagenet-200"
    annotations, wnids = base / "val" / "val_annotations.txt", base / "wnids.txt"
    if not (base / "train").is_dir() or not annotations.is_file() or not wnids.is_file():
        raise DatasetNotFound(
            "tinyimagenet",
            base,
            "Unpack tiny-imagenet-200.zip there (wnids.txt, train/<wnid>/images/*.JPEG, "
            "val/images/*.JPEG, val/val_annotations.txt); it is not downloaded automatically.",
        )
    # class k is the k-th line of wnids.txt, as in the published zoos (not sorted: the
    # file's order is not alphabetical)
    index = {wnid: i for i, wnid in enumerate(wnids.read_text().split())}

    def read(files: list[Path], labels: list[int]) -> Split:
        images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        return _split(images, labels, channels_last=True)

    train = sorted((f, index[f.parent.parent.name]) for f in (base / "train").glob("*/images/*"))
    val = []
    for line in annotations.read_text().splitlines():
        file, wnid = line.split("\t")[:2]
        val.append((base / "val" / "images" / file, index[wnid]))
    return read(*map(list, zip(*train, strict=True))), read(*map(list, zip(*val, strict=True)))


# The constants each published zoo normalised with (its training script's Normalize):
# CIFAR-10's are per-channel statistics in 0..255 units; the others differ per dataset, and
# TinyImageNet's are ImageNet's rather than its own.
CIFAR10_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR10_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> (loader, classes, mean, std). Points (convection) and token windows (text) are used
# as they are: no mean and std.
DATASETS: dict[str, tuple[Loader, int, tuple | None, tuple | None]] = {
    "digits": (_digits, 10, (0.3053,), (0.3759,)),
    "cifar10": (_torchvision_pair("CIFAR10", channels_last=True), 10, CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (
        _torchvision_pair("CIFAR100", channels_last=True),
        100,
        (0.5071, 0.4867, 0.4408),
        (0.2675, 0.2565, 0.2761),
    ),
    "svhn": (_torchvision_pair("SVHN"), 10, (0.4377, 0.4438, 0.4728), (0.198, 0.201, 0.197)),
    "mnist": (_torchvision_pair("MNIST"), 10, (0.1307,), (0.3081,)),
    "fashionmnist": (_torchvision_pair("FashionMNIST"), 10, (0.2860,), (0.3530,)),
    "tinyimagenet": (_tinyimagenet, 200, IMAGENET_MEAN, IMAGENET_STD),
    "convection": (convection_points, 1, None, None),
    "text": (text_windows, VOCAB, None, None),
}

Normalization = tuple[tuple[float, ...], tuple[float, ...]] | None


def normalization(dataset: str) -> Normalization:
    """(mean, std) per channel in [0, 1] that `dataset`'s images are normalised with."""
    _, _, mean, std = choose("dataset", dataset, DATASETS)
    return None if mean is None else (mean, std)


# What ptmz normalised with before it matched the published zoos per dataset (CIFAR-10's
# constants for CIFAR-100 and SVHN, TinyImageNet's own statistics): runs trained so carry no
# `normalization` in their config and are told apart from runs trained since.
SUPERSEDED_NORMALIZATION: dict[str, Normalization] = {
    "cifar100": (CIFAR10_MEAN, CIFAR10_STD),
    "svhn": (CIFAR10_MEAN, CIFAR10_STD),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
}


def first_normalization(dataset: str) -> Normalization:
    """The normalisation of `dataset`'s runs whose config does not record one."""
    return SUPERSEDED_NORMALIZATION.get(dataset, normalization(dataset))


# name -> what its inputs are, where they are not images; models say which kind they read
INPUT_KINDS = {"convection": "points", "text": "tokens"}


def input_kind(dataset: str) -> str:
    return INPUT_KINDS.get(dataset, "images")


# name -> (channels, image side) of one input, for models built without loading the data
INPUT_SHAPES = {
    "digits": (1, 8),
    "cifar10": (3, 32),
    "cifar100": (3, 32),
    "svhn": (3, 32),
    "mnist": (1, 28),
    "fashionmnist": (1, 28),
    "tinyimagenet": (3, 64),
    "convection": (2, 2),  # points (x, t)
    "text": (CONTEXT + 1, CONTEXT + 1),  # token windows
}


def load_dataset(name: str, root: str | Path = "data", download: bool = True) -> ImageDataset:
    """Load a registered dataset as uint8 tensors; a missing one raises DatasetNotFound."""
    loader, num_classes, mean, std = choose("dataset", name, DATASETS)
    train, test = loader(Path(root).expanduser().resolve(), download)
    return ImageDataset(name, train, test, num_classes, mean, std)
