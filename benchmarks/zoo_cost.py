"""How long a whole zoo takes on this device: time ptmz's real training step and evaluation at
a sample of grid points, then project every run of the zoo's grid.

Per grid point (width w, batch size b), on synthetic data of the zoo dataset's shape:
- t_step(w, b): median seconds of one training step (`train_epoch` over a DeviceLoader with the
  recipe's augmentation, the recipe's optimizer and schedule), after warm-up;
- t_eval(w): seconds per sample of evaluation (`evaluate`, batches of 1024).
A run costs epochs x (ceil(n_train / b) x t_step + (n_train + n_test) x t_eval), plus the
epoch-0 evaluation, with the dataset's real sizes. Batch sizes that were not timed get t_step
from a straight line through the timed ones of the same width (step cost is close to linear in
b once the device is busy); widths that were not timed are left out and named. Assumes one run
at a time on the device and no time for loading data or writing checkpoints.

    python benchmarks/zoo_cost.py --zoo digits_resnet18
    python benchmarks/zoo_cost.py --zoo cifar10_resnet18 --widths 2 8 --batch-sizes 8 128
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from ptmz.data import Augment, DeviceLoader, Split
from ptmz.models import build_model
from ptmz.train.loop import build_optimizer, evaluate, prepare_model, resolve_device, train_epoch
from ptmz.train.spec import Recipe

CONF = Path(__file__).resolve().parents[1] / "conf"
# training and test set sizes, channels, image side, classes
SHAPES = {
    "digits": (1347, 450, 1, 8, 10),
    "mnist": (60000, 10000, 1, 28, 10),
    "fashionmnist": (60000, 10000, 1, 28, 10),
    "cifar10": (50000, 10000, 3, 32, 10),
    "cifar100": (50000, 10000, 3, 32, 100),
    "svhn": (73257, 26032, 3, 32, 10),
    "tinyimagenet": (100000, 10000, 3, 64, 200),
}


def synthetic(n: int, channels: int, side: int, classes: int) -> Split:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, channels, side, side), dtype=np.uint8)
    return Split(torch.from_numpy(images), torch.from_numpy(rng.integers(0, classes, n)))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_point(cfg, width: int, batch: int, steps: int, device: torch.device) -> float:
    """Median seconds per training step at (width, batch)."""
    _, _, channels, side, classes = SHAPES[cfg.dataset.name]
    recipe = Recipe(**{**cfg.recipe, "augment": Augment(**cfg.recipe.augment)})
    model = prepare_model(build_model(cfg.model.name, width, channels, classes), device)
    data = synthetic(batch * steps, channels, side, classes)
    generator = torch.Generator().manual_seed(0)
    loader = DeviceLoader(
        data, batch, (0.5,) * channels, (0.25,) * channels, device, recipe.augment, generator
    )
    optimizer, schedule = build_optimizer(
        model.parameters(), recipe, cfg.lr, 2 + 2 * steps, len(loader)
    )
    train_epoch(model, loader, optimizer, schedule)  # warm-up: allocator, kernels, caches
    times = []
    for _ in range(2):
        sync(device)
        began = time.perf_counter()
        train_epoch(model, loader, optimizer, schedule)
        sync(device)
        times.append((time.perf_counter() - began) / len(loader))
    return statistics.median(times)


def time_eval(cfg, width: int, device: torch.device, samples: int = 2048) -> float:
    """Seconds per sample of evaluation at `width`."""
    _, _, channels, side, classes = SHAPES[cfg.dataset.name]
    model = prepare_model(build_model(cfg.model.name, width, channels, classes), device)
    data = synthetic(samples, channels, side, classes)
    loader = DeviceLoader(data, 1024, (0.5,) * channels, (0.25,) * channels, device)
    evaluate(model, loader)
    sync(device)
    began = time.perf_counter()
    evaluate(model, loader)
    sync(device)
    return (time.perf_counter() - began) / samples


def step_time(timed: dict[int, float], batch: int) -> float:
    """t_step at `batch` from the timed batch sizes of one width (a line through them)."""
    if batch in timed:
        return timed[batch]
    if len(timed) < 2:
        raise SystemExit(f"batch size {batch}: time at least two batch sizes per width")
    slope, intercept = np.polyfit(list(timed), list(timed.values()), 1)
    return max(float(intercept + slope * batch), min(timed.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", default="cifar10_resnet18")
    parser.add_argument("--widths", type=int, nargs="*", help="default: the zoo's")
    parser.add_argument("--batch-sizes", type=int, nargs="*", help="default: the zoo's")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per grid point")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", [f"zoo={args.zoo}"], return_hydra_config=True)
    grid = {k: [int(v) for v in str(p).split(",")] for k, p in cfg.hydra.sweeper.params.items()}
    device = resolve_device(args.device)
    n_train, n_test = SHAPES[cfg.dataset.name][:2]
    widths = args.widths or grid["width"]
    batches = args.batch_sizes or grid["batch_size"]
    name = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads"
    )
    print(
        f"zoo {args.zoo}: {cfg.model.name} on {cfg.dataset.name} ({n_train} train, {n_test} test), "
        f"{cfg.epochs} epochs, grid width {grid['width']} x batch {grid['batch_size']} x "
        f"{len(grid['seed'])} seeds; device {name}, torch {torch.__version__}"
    )
    print(f"{'width':>6} {'batch':>6} {'ms/step':>9} {'steps/epoch':>12} {'min/run':>9}")
    steps, evals = {}, {}
    for width in widths:
        evals[width] = time_eval(cfg, width, device)
        for batch in batches:
            steps.setdefault(width, {})[batch] = time_point(cfg, width, batch, args.steps, device)

    total, per_width = 0.0, {}
    for width in grid["width"]:
        if width not in steps:
            continue
        for batch in grid["batch_size"]:
            per_epoch = math.ceil(n_train / batch) * step_time(steps[width], batch)
            per_epoch += (n_train + n_test) * evals[width]
            run = cfg.epochs * per_epoch + (n_train + n_test) * evals[width]
            per_width[width] = per_width.get(width, 0.0) + run * len(grid["seed"])
            timed = "" if batch in steps[width] else "  (fitted)"
            print(
                f"{width:>6} {batch:>6} {1000 * step_time(steps[width], batch):>9.2f} "
                f"{math.ceil(n_train / batch):>12} {run / 60:>9.2f}{timed}"
            )
        total += per_width[width]
    missing = [w for w in grid["width"] if w not in steps]
    print(
        "hours per width (all batch sizes and seeds): "
        + ", ".join(f"w{w} {t / 3600:.2f}" for w, t in per_width.items())
    )
    print(
        f"projected: {total / 3600:.2f} device-hours ({total / 60:.1f} min) for "
        f"{len(per_width) * len(grid['batch_size']) * len(grid['seed'])} runs, one at a time"
        + (f"; widths {missing} not timed, not included" if missing else "")
    )


if __name__ == "__main__":
    main()
