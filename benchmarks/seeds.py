"""Three seeds of one grid point: one vectorised epoch against three epochs one after another.

Sequential: `train_epoch` for each seed's model, loader, optimizer and schedule, as `train_run`
trains them. Together: `train_epoch_together` over the same three, as `seeds_together=true`
trains them (vmap over the stacked models). Same ResNet-18-w, published recipe (SGD 0.9 / 5e-4,
OneCycleLR, crop+flip+rotation), batch size and data; synthetic CIFAR-sized images.

Each side trains one warm-up epoch, then `--repeats` timed epochs, the sides alternating.
Medians are printed, with the ratio sequential / together.

    python benchmarks/seeds.py [--widths 2 4 8 16] [--batches 8 32 128] [--images 512]
        [--repeats 3] [--seeds 3] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from train import describe_machine, load_data, synchronize

from ptmz.data import DeviceLoader, Split
from ptmz.data.datasets import CIFAR_MEAN, CIFAR_STD
from ptmz.models import build_model
from ptmz.train.loop import (
    build_optimizer,
    data_generator,
    prepare_model,
    resolve_device,
    train_epoch,
)
from ptmz.train.spec import Recipe
from ptmz.train.together import train_epoch_together


def trainees(split: Split, width: int, batch: int, seeds: int, epochs: int, device):
    """(model, loader, optimizer, schedule) per seed, each with its own init and data stream."""
    recipe = Recipe()
    out = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = prepare_model(build_model("resnet18", width, 3, 10), device)
        loader = DeviceLoader(
            split, batch, CIFAR_MEAN, CIFAR_STD, device, recipe.augment, data_generator(seed)
        )
        optimizer, schedule = build_optimizer(model.parameters(), recipe, 0.1, epochs, len(loader))
        out.append((model, loader, optimizer, schedule))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--images", type=int, default=512, help="training images per epoch")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per side")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    args = parser.parse_args()
    args.data = "synthetic"

    device = resolve_device(args.device)
    split, what = load_data(args)
    epochs = 1 + args.repeats
    print(describe_machine(device))
    print(f"data: {what}; {args.seeds} seeds; 1 warm-up epoch, median of {args.repeats} epochs")
    print(
        f"{'width':>5}  {'batch':>5}  {'sequential s/epoch':>18}  {'together s/epoch':>16}  "
        f"{'speed-up':>8}"
    )
    for width in args.widths:
        for batch in args.batches:
            alone = trainees(split, width, batch, args.seeds, epochs, device)
            stacked = trainees(split, width, batch, args.seeds, epochs, device)
            sides = {
                "sequential": lambda: [train_epoch(*t) for t in alone],  # noqa: B023
                "together": lambda: train_epoch_together(*zip(*stacked, strict=True)),  # noqa: B023
            }
            times: dict[str, list[float]] = {name: [] for name in sides}
            for repeat in range(1 + args.repeats):
                for name, epoch in sides.items():
                    synchronize(device)
                    began = time.perf_counter()
                    epoch()
                    synchronize(device)
                    if repeat:  # the first is the warm-up
                        times[name].append(time.perf_counter() - began)
            seq, tog = (statistics.median(times[name]) for name in sides)
            print(f"{width:>5}  {batch:>5}  {seq:>18.3f}  {tog:>16.3f}  {seq / tog:>7.2f}x")


if __name__ == "__main__":
    main()
