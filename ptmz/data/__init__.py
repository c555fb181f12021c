"""Datasets as uint8 tensors, stratified subsets, and the device-resident batch loader."""

from ptmz.data.augment import Augment, augment_batch
from ptmz.data.datasets import DATASETS, DatasetNotFound, ImageDataset, Split, load_dataset
from ptmz.data.loader import DeviceLoader
from ptmz.data.subset import fixed_subset, stratified_subset
from ptmz.data.zoo_dataset import Layout, ZooDataset

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
    "stratified_subset",
]
