"""Augmenting a CIFAR-sized batch: the published per-sample PIL pipeline vs ptmz's batched one.

Reference: torchvision RandomCrop(32, padding=4) + RandomHorizontalFlip + RandomRotation(20) +
ToTensor + Normalize on PIL images, one sample at a time (what a DataLoader worker does).
Ours: DeviceLoader's batched augmentation of uint8 tensors, same distribution.

    python benchmarks/bench_augment.py [--batch 128] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image
from published import published_transform

from ptmz.data import Augment, DeviceLoader, Split
from ptmz.data.datasets import CIFAR10_MEAN, CIFAR10_STD


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    images = np.random.default_rng(0).integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8)
    pil = [Image.fromarray(x) for x in images]
    reference = published_transform()
    split = Split(
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        torch.zeros(args.batch, dtype=torch.long),
    )
    loader = DeviceLoader(
        split,
        args.batch,
        CIFAR10_MEAN,
        CIFAR10_STD,
        torch.device("cpu"),
        Augment(4, True, 20),
        torch.Generator().manual_seed(0),
    )

    ref = median_seconds(lambda: torch.stack([reference(x) for x in pil]), args.repeats)
    ours = median_seconds(lambda: next(iter(loader)), args.repeats)
    print(f"batch {args.batch}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"  per-sample PIL pipeline: {ref * 1e3:8.2f} ms/batch")
    print(f"  ptmz batched           : {ours * 1e3:8.2f} ms/batch")
    print(f"  speed-up               : {ref / ours:8.1f}x")


if __name__ == "__main__":
    main()
