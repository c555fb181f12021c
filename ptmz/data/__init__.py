"""Datasets as uint8 tensors, stratified subsets, the device-resident batch loader, and the
reader of exported zoos (`ZooDataset`)."""

from ptmz.data.augment import Augment, augment_batch
from ptmz.data.datasets import DATASETS, DatasetNotFound, ImageDataset, Split, load_dataset
from ptmz.data.loader import DeviceLoader, stacked_batches
from ptmz.data.subset import fixed_subset, stratified_subset

__all__ = [
    "DATASETS",
    "Augment",
    "DatasetNotFound",
    "DeviceLoader",
    "ImageDataset",
    "Layout",
    "Split",
    "ZooDataset",
    "augment_batch",
    "fixed_subset",
    "load_dataset",
    "stacked_batches",
    "stratified_subset",
]


def __getattr__(name: str):
    """`ZooDataset` and `Layout` on first use: their reader needs pandas, which a training job
    never imports."""
    if name in ("Layout", "ZooDataset"):
        from ptmz.data import zoo_dataset

        return getattr(zoo_dataset, name)
    raise AttributeError(f"module 'ptmz.data' has no attribute {name!r}")
