"""One training epoch: a loop written like the published code vs ptmz's, side by side.

Reference (the published zoo code's style): a torch DataLoader (shuffle, `--workers` worker
processes) over PIL images with the per-sample torchvision pipeline RandomCrop(32, padding=4) +
RandomHorizontalFlip + RandomRotation(20) + ToTensor + Normalize; per-parameter (foreach=False)
SGD with momentum 0.9 and weight decay 5e-4 stepped with OneCycleLR; `loss.item()` every step.
Ours: DeviceLoader (uint8 data on the device, batched augmentation with the same distribution)
+ `train_epoch` + the recipe's optimizer and schedule from `build_optimizer`, as `train_run`
uses them. Same model (ResNet-18-w), batch size, lr and data.

Each side trains one warm-up epoch, then `--repeats` timed epochs (the two sides alternate, so
load from elsewhere hits both alike); OneCycleLR spans all of them. Medians are printed.

On a CPU it also prints the ceiling that the convolutions set: both sides run the same oneDNN
convolutions, so no epoch that runs them can beat the reference by more than the reference's
epoch over the time those convolutions take in ptmz's eager epoch (by torch's profiler, the
median of `--repeats` epochs after the timed ones).

    python benchmarks/train.py [--widths 2 8 32] [--batch 128] [--images 2048] [--repeats 3]
        [--workers 2] [--threads 0] [--device auto] [--data synthetic|cifar10 --data-root DIR]
        [--steps eager compile cuda_graph]   # which of ptmz's training steps to time (the
        # last two are CUDA's: `compile=true`, whose warm-up epoch compiles, `cuda_graph=true`)
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
import torchvision
from PIL import Image
from published import published_transform
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ptmz.data import DatasetNotFound, DeviceLoader, Split, load_dataset
from ptmz.data.datasets import CIFAR10_MEAN, CIFAR10_STD
from ptmz.models import build_model
from ptmz.train.loop import (
    build_optimizer,
    data_generator,
    model_gradients,
    prepare_model,
    resolve_device,
    train_epoch,
)
from ptmz.train.spec import Recipe


class PILDataset(Dataset):
    """Images as PIL, transformed one sample at a time (a torchvision CIFAR10 dataset's way)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images = [Image.fromarray(x) for x in images]  # (H, W, C) uint8 each
        self.labels = [int(y) for y in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def epoch_images(batch: int, images: int, min_steps: int) -> int:
    """Images in a timed epoch: at least `images` and at least `min_steps` whole batches, so that
    what an epoch costs once is not charged to a handful of steps."""
    return batch * max(min_steps, math.ceil(images / batch))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_data(args) -> tuple[Split, str]:
    """A training split of `args.images` uint8 CIFAR-sized images, and what it is."""
    if args.data == "cifar10":
        try:
            data = load_dataset("cifar10", args.data_root, download=False)
        except DatasetNotFound as missing:
            sys.exit(f"--data cifar10: {missing}")
        n = min(args.images, len(data.train))
        split = Split(data.train.images[:n].contiguous(), data.train.labels[:n].clone())
        return split, f"CIFAR-10 from {args.data_root}, first {n} training images"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, args.images)
    split = Split(torch.from_numpy(images), torch.from_numpy(labels).long())
    return split, f"synthetic: {args.images} random 32x32x3 uint8 images, 10 classes"


def make_model(width: int, device: torch.device, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # the reference and ptmz with one seed start from the same weights
    return build_model("resnet18", width, 3, 10).to(device)


class Reference:
    """The published code's training loop, one epoch per call."""

    def __init__(self, split: Split, width: int, args, device: torch.device, epochs: int):
        transform = published_transform()
        images = split.images.permute(0, 2, 3, 1).numpy()
        self.loader = DataLoader(
            PILDataset(images, split.labels.numpy(), transform),
            batch_size=args.batch,
            shuffle=True,
            num_workers=args.workers,
            generator=torch.Generator().manual_seed(0),
        )
        self.device = device
        self.model = make_model(width, device)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            args.lr,
            momentum=0.9,
            weight_decay=5e-4,
            foreach=False,
        )
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=args.lr, epochs=epochs, steps_per_epoch=len(self.loader)
        )
        self.criterion = nn.CrossEntropyLoss()

    def epoch(self) -> float:
        self.model.train()
        running_loss, n = 0.0, 0
        for x, y in self.loader:
            x, y = x.to(self.device), y.to(self.device)
            self.optimizer.zero_grad()
            loss = self.criterion(self.model(x), y)
            loss.backward()
            self.optimizer.step()
            self.schedule.step()
            running_loss += loss.item() * len(y)
            n += len(y)
        return running_loss / n


STEPS = ("eager", "compile", "cuda_graph")  # ptmz's training steps: default, compile=true, ...


def step_options(step: str) -> dict[str, bool]:
    """`model_gradients`' switches for one of STEPS."""
    return dict(compile=step == "compile", cuda_graph=step == "cuda_graph")


class Ptmz:
    """ptmz's training epoch for one seed, set up the way `train_run` sets it up (the
    benchmarks' one setup of ptmz's side)."""

    def __init__(
        self,
        split: Split,
        width: int,
        args,
        device: torch.device,
        epochs: int,
        step: str = "eager",
        seed: int = 0,
        precision: str = "fp32",
    ):
        recipe = Recipe()  # the published recipe: SGD 0.9 / 5e-4, OneCycle, crop+flip+rot20
        self.loader = DeviceLoader(
            split,
            args.batch,
            CIFAR10_MEAN,
            CIFAR10_STD,
            device,
            recipe.augment,
            data_generator(seed),
        )
        self.model = prepare_model(make_model(width, device, seed), device, step != "compile")
        self.gradients = model_gradients(self.model, precision=precision, **step_options(step))
        self.optimizer, self.schedule = build_optimizer(
            self.model.parameters(), recipe, args.lr, epochs, len(self.loader)
        )

    def epoch(self) -> float:
        return train_epoch(
            self.model, self.loader, self.optimizer, self.schedule, gradients=self.gradients
        )


def convolution_seconds(run) -> float:
    """Seconds of one epoch of `run` spent in convolutions, forward and backward (on a CPU, where
    an operation's time in the profiler is its wall time: it runs on the calling thread)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        run.epoch()
    ops = profile.key_averages()
    return sum(op.self_cpu_time_total for op in ops if "convolution" in op.key) / 1e6


def timed(run, device: torch.device) -> tuple[float, float]:
    synchronize(device)
    began = time.perf_counter()
    loss = run.epoch()
    synchronize(device)
    return time.perf_counter() - began, loss


def describe_machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    where = f"{os.cpu_count()} CPU cores ({cpu}), {torch.get_num_threads()} torch threads"
    if device.type == "cuda":
        where += f"; {torch.cuda.get_device_name(device)}"
    return (
        f"{where}; device {device}; torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--images", type=int, default=2048, help="training images per epoch")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per side")
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's own")
    parser.add_argument("--data", choices=["synthetic", "cifar10"], default="synthetic")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=["eager"])
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    split, what = load_data(args)
    epochs = 1 + 2 * args.repeats  # warm-up, timed, profiled; OneCycle spans them all
    ceiling = device.type == "cpu" and "eager" in args.steps
    steps = -(-len(split) // args.batch)
    print(describe_machine(device))
    print(f"data: {what}")
    print(
        f"ResNet-18-w, batch {args.batch}, {steps} steps/epoch, lr {args.lr}, reference "
        f"DataLoader workers {args.workers}; 1 warm-up epoch, median of {args.repeats} epochs"
    )
    ours = [f"ptmz {step}" for step in args.steps]
    print(f"{'width':>5}  {'reference s/epoch':>17}", end="")
    print("".join(f"  {name + ' s/epoch':>21}  {'speed-up':>8}" for name in ours), end="")
    print(f"  {'convolutions s/epoch':>20}  {'ceiling':>8}" if ceiling else "")
    for width in args.widths:
        sides = {"reference": Reference(split, width, args, device, epochs)}
        for step, name in zip(args.steps, ours, strict=True):
            sides[name] = Ptmz(split, width, args, device, epochs, step)
        times: dict[str, list[float]] = {name: [] for name in sides}
        for run in sides.values():
            timed(run, device)  # warm-up
        for _ in range(args.repeats):
            for name, run in sides.items():
                seconds, loss = timed(run, device)
                if not np.isfinite(loss):
                    sys.exit(f"width {width}: {name} loss is not finite ({loss})")
                times[name].append(seconds)
        if ceiling:
            profiled = [convolution_seconds(sides["ptmz eager"]) for _ in range(args.repeats)]
            convolutions = statistics.median(profiled)
        ref = statistics.median(times["reference"])
        print(f"{width:>5}  {ref:>17.3f}", end="")
        for name in ours:
            seconds = statistics.median(times[name])
            print(f"  {seconds:>21.3f}  {ref / seconds:>7.2f}x", end="")
        print(f"  {convolutions:>20.3f}  {ref / convolutions:>7.2f}x" if ceiling else "")


if __name__ == "__main__":
    main()
