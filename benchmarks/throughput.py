"""Training images per second per width, next to the device's FLOP roofline.

For ResNet-18-w at one batch size: ptmz's real training epoch (`train_epoch` over a
DeviceLoader with the published augmentation, fused SGD with OneCycleLR, channels_last on CUDA)
on synthetic CIFAR-sized images, median of `--repeats` epochs after a warm-up. The FLOP of one
training image (forward + backward) are counted by torch's FlopCounterMode on the model; the
roofline is the rate of a large dense matrix product on this device in the step's precision
(fp32 with TF32 convolutions on CUDA, as torch runs them by default; bf16 with --precision
bf16), so `% roofline` says how far the step is from compute-bound.

    python benchmarks/throughput.py [--widths 2 4 8 16 32 64] [--batch 128] [--images 4096]
        [--repeats 3] [--precision fp32|bf16] [--device auto] [--step eager|compile|cuda_graph]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from train import STEPS, Ptmz, describe_machine, load_data, synchronize

from ptmz.models import build_model
from ptmz.train.loop import resolve_device


def training_flop_per_image(width: int) -> float:
    model = build_model("resnet18", width, 3, 10)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / 2


def matmul_rate(device: torch.device, precision: str, n: int = 4096, repeats: int = 10) -> float:
    """FLOP/s of an n x n x n matrix product, the best of `repeats`."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = True  # the rate cuDNN's TF32 convolutions can reach
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 2):
        synchronize(device)
        began = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - began)
    torch.backends.cuda.matmul.allow_tf32 = False
    return 2 * n**3 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--images", type=int, default=4096, help="training images per epoch")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument("--step", choices=STEPS, default="eager", help="ptmz's training step")
    args = parser.parse_args()
    args.data, args.lr = "synthetic", 0.1

    device = resolve_device(args.device)
    split, what = load_data(args)
    peak = matmul_rate(device, args.precision, n=4096 if device.type == "cuda" else 1024)
    print(describe_machine(device))
    print(
        f"data: {what}; batch {args.batch}, {args.precision}"
        f", {args.step} step; median of {args.repeats} epochs after 1"
    )
    print(f"roofline: dense {args.precision} matrix product here, {peak / 1e9:.0f} GFLOP/s")
    print(
        f"{'width':>5}  {'MFLOP/image':>11}  {'images/s':>10}  {'roofline img/s':>14}  "
        f"{'% roofline':>10}"
    )
    for width in args.widths:
        run = Ptmz(split, width, args, device, 1 + args.repeats, args.step, 0, args.precision)
        seconds = []
        for repeat in range(1 + args.repeats):
            synchronize(device)
            began = time.perf_counter()
            run.epoch()
            synchronize(device)
            if repeat:
                seconds.append(time.perf_counter() - began)
        rate = len(split) / statistics.median(seconds)
        flop = training_flop_per_image(width)
        roofline = peak / flop
        print(
            f"{width:>5}  {flop / 1e6:>11.1f}  {rate:>10.0f}  {roofline:>14.0f}  "
            f"{100 * rate / roofline:>9.1f}%"
        )


if __name__ == "__main__":
    main()
