"""Three seeds of one grid point: one vectorised epoch against three epochs one after another.

Sequential: `train_epoch` for each seed's model, loader, optimizer and schedule, as `train_run`
trains them. Folded: `Together` over the same three, as `seeds_together=true` trains them (the
models folded into one network's channels). Vmapped: `Together` through vmap instead, as it
trains the architectures that do not fold. `--step cuda_graph` replays every side's steps from
CUDA graphs. Same ResNet-18-w, published recipe (SGD 0.9 / 5e-4, OneCycleLR, crop+flip+rotation),
batch size and data; synthetic CIFAR-sized images.

Each side trains one warm-up epoch, then `--repeats` timed epochs, the sides alternating.
Medians are printed, with the ratios sequential / folded and sequential / vmapped. With
`--min-steps N` an epoch has at least N steps (more images at large batch sizes), so that what
an epoch costs once (moving the models in and out of the stack) is not charged to a handful of
steps: it matters on a GPU, where a step takes a millisecond or two (`scripts/gpu_check.sh` uses
32), not on a CPU.

    python benchmarks/seeds.py [--widths 2 4 8 16] [--batches 8 32 128] [--images 512]
        [--repeats 3] [--seeds 3] [--min-steps 1] [--device auto] [--step eager|cuda_graph]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from train import Ptmz, describe_machine, epoch_images, load_data, synchronize

from ptmz.train.loop import resolve_device
from ptmz.train.together import Together


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--images", type=int, default=512, help="training images per epoch")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per side")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--min-steps", type=int, default=1, help="steps per epoch, at least")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument("--step", choices=["eager", "cuda_graph"], default="eager")
    args = parser.parse_args()
    args.data, args.lr = "synthetic", 0.1

    device = resolve_device(args.device)
    least = args.images
    args.images = max(epoch_images(batch, least, args.min_steps) for batch in args.batches)
    data, what = load_data(args)
    epochs = 1 + args.repeats
    print(describe_machine(device))
    print(
        f"data: {what} (an epoch: the first `images` of them); {args.seeds} seeds, "
        f"{args.step} steps; 1 warm-up epoch, median of {args.repeats} epochs"
    )
    ways = ("sequential", "folded", "vmapped")
    print(f"{'width':>5}  {'batch':>5}  {'images':>6}", end="")
    print("".join(f"  {way + ' s/epoch':>18}" for way in ways), end="")
    print(f"  {'speed-up folded':>15}  {'vmapped':>7}")
    for width in args.widths:
        for batch in args.batches:
            args.batch = batch
            images = epoch_images(batch, least, args.min_steps)
            split = data.subset(torch.arange(images))

            def seeds() -> list[Ptmz]:
                return [
                    Ptmz(split, width, args, device, epochs, args.step, s)  # noqa: B023
                    for s in range(args.seeds)
                ]

            def together(fold: bool) -> Together:
                runs = seeds()
                return Together(
                    [run.model for run in runs],
                    [run.loader for run in runs],
                    [run.optimizer for run in runs],
                    [run.schedule for run in runs],
                    cuda_graph=args.step == "cuda_graph",
                    fold=fold,
                )

            alone = seeds()
            sides = {
                "sequential": lambda: [run.epoch() for run in alone],  # noqa: B023
                "folded": together(True).train_epoch,
                "vmapped": together(False).train_epoch,
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
            seq, folded, vmapped = (statistics.median(times[name]) for name in ways)
            print(
                f"{width:>5}  {batch:>5}  {images:>6}  {seq:>18.3f}  {folded:>18.3f}  "
                f"{vmapped:>18.3f}  {seq / folded:>14.2f}x  {seq / vmapped:>6.2f}x"
            )


if __name__ == "__main__":
    main()
