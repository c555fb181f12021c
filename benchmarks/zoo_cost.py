"""How long a whole zoo takes on this device: time ptmz's real training step and evaluation at
a sample of grid points, then project every run of the zoo's grid.

Per grid point (width w, batch size b), on synthetic data of the zoo dataset's shape:
- t_step(w, b): median seconds of one training step (`train_epoch` over a DeviceLoader with the
  recipe's augmentation, the recipe's optimizer and schedule), after warm-up;
- t_eval(w): seconds per sample of evaluation (`evaluate`, batches of 1024), timed in fp32 and
  bf16 and projected in --eval-precision.
A run costs epochs x (batches(n_train, b) x t_step + (n_train + n_test) x t_eval), plus the
epoch-0 evaluation, with the dataset's real sizes. Batch sizes that were not timed get t_step
by linear interpolation between the timed ones of the same width; widths that were not timed are
left out and named. Assumes one run (or, with --together N, N seeds of a grid point as one
vectorised model, at widths up to --together-up-to) at a time on the device, and no time for
loading data or writing checkpoints. With --concurrent K, K grid points (at widths up to
--concurrent-up-to) train at once, each in a thread and, on CUDA, a stream of its own, as a
job with `concurrent=K` trains them; t_step is then the wall time of the K epochs per step
and run. A timed epoch has at least --steps steps and --images
images, so that what an epoch costs once (the stack's copies, the permutation) is not charged to
a few steps as if it were paid by each. A grid point whose timing fails is reported and left
out, and the failures are named at the end (exit status 1): one point costs no others.

    python benchmarks/zoo_cost.py --zoo digits_resnet18
    python benchmarks/zoo_cost.py --zoo cifar10_resnet18 --widths 2 8 --batch-sizes 8 128
    python benchmarks/zoo_cost.py --zoo cifar10_resnet18 --together 3
    python benchmarks/zoo_cost.py --zoo cifar10_resnet18 --together 3 --together-up-to 32 \
        --step cuda_graph --precision bf16 --eval-precision bf16   # the fastest options (CUDA)
    python benchmarks/zoo_cost.py --zoo cifar10_resnet18 --together 3 --concurrent 4 \
        --concurrent-up-to 64 --step cuda_graph --precision bf16   # and small runs packed
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from train import STEPS, epoch_images, step_options, synchronize

from ptmz.data import Augment, DeviceLoader, Split
from ptmz.data.loader import batch_bounds
from ptmz.models import build_model
from ptmz.objectives import evaluate
from ptmz.train.at_once import share_cores
from ptmz.train.gradients import autocast
from ptmz.train.loop import (
    build_optimizer,
    model_gradients,
    prepare_model,
    resolve_device,
    train_epoch,
)
from ptmz.train.spec import PRECISIONS, Recipe
from ptmz.train.together import Together

CONF = Path(__file__).resolve().parents[1] / "conf"
TIMED_EPOCHS = 2  # after one warm-up epoch
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


def up_to_width(width: int, count: int, widest: int | None) -> int:
    """`count` (seeds as one model, or grid points at once) at `width`: 1 beyond `widest`."""
    return 1 if widest is not None and width > widest else count


def seeds_per_step(width: int, args) -> int:
    return up_to_width(width, args.together, args.together_up_to)


def points_at_once(width: int, args) -> int:
    return up_to_width(width, args.concurrent, args.concurrent_up_to)


def time_point(cfg, width: int, batch: int, device: torch.device, args) -> float:
    """Median seconds per training step and run at (width, batch), with `seeds_per_step`
    seeds stepped as one vectorised model and `points_at_once` such grid points training at
    once (`concurrent`), in `args.precision`, with `args.step` (eager, compile or cuda_graph)."""
    together, points = seeds_per_step(width, args), points_at_once(width, args)
    built = [point_epoch(cfg, width, batch, device, args) for _ in range(points)]
    epochs, steps = [epoch for epoch, _ in built], built[0][1]
    # Each point keeps one stream (the allocator caches memory per stream), in which it warms
    # up alone: allocator, kernels, cuDNN's algorithm choice, graphs (recorded alone).
    streams = [torch.cuda.Stream(device) if device.type == "cuda" else None for _ in epochs]
    for epoch, stream in zip(epochs, streams, strict=True):
        in_stream(epoch, stream)
    times = []
    for _ in range(TIMED_EPOCHS):
        synchronize(device)
        began = time.perf_counter()
        epochs_at_once(epochs, streams)
        synchronize(device)
        times.append((time.perf_counter() - began) / (steps * together * points))
    return statistics.median(times)


def in_stream(epoch: Callable[[], object], stream: torch.cuda.Stream | None) -> None:
    with torch.cuda.stream(stream) if stream is not None else nullcontext():
        epoch()


def epochs_at_once(epochs: Sequence[Callable[[], object]], streams: Sequence) -> None:
    """Run `epochs` at the same time, each in a thread of its own with its share of the CPU
    threads and in its stream (None off CUDA), as `concurrent` runs train: one's kernels run
    while another's wait on latency or on the host. Each point keeps its stream across calls
    (the caching allocator keeps memory per stream), which ptmz's `at_once` gives a worker."""
    if len(epochs) == 1:
        in_stream(epochs[0], streams[0])
        return
    threads = torch.get_num_threads()

    def run(epoch: Callable[[], object], stream: torch.cuda.Stream | None) -> None:
        share_cores(len(epochs), threads)
        in_stream(epoch, stream)

    with ThreadPoolExecutor(len(epochs)) as pool:
        list(pool.map(run, epochs, streams))  # re-raises the first failure
    torch.set_num_threads(threads)


def point_epoch(
    cfg, width: int, batch: int, device: torch.device, args
) -> tuple[Callable[[], object], int]:
    """One grid point's training epoch as it would run (`seeds_per_step` seeds as one model),
    ready to call, and its steps."""
    together = seeds_per_step(width, args)
    _, _, channels, side, classes = SHAPES[cfg.dataset.name]
    recipe = Recipe(**{**cfg.recipe, "augment": Augment(**cfg.recipe.augment)})
    data = synthetic(epoch_images(batch, args.images, args.steps), channels, side, classes)
    models, loaders, optimizers, schedules = [], [], [], []
    for seed in range(together):
        model = build_model(cfg.model.name, width, channels, classes, side)
        models.append(prepare_model(model, device, channels_last=args.step != "compile"))
        generator = torch.Generator().manual_seed(seed)
        norm = (0.5,) * channels, (0.25,) * channels
        loaders.append(DeviceLoader(data, batch, *norm, device, recipe.augment, generator))
        optimizer, schedule = build_optimizer(
            model.parameters(), recipe, cfg.lr, 1 + TIMED_EPOCHS, len(loaders[0])
        )
        optimizers.append(optimizer)
        schedules.append(schedule)

    options = step_options(args.step)
    if together == 1:
        gradients = model_gradients(models[0], precision=args.precision, **options)
        epoch = partial(
            train_epoch, *models, *loaders, *optimizers, *schedules, gradients=gradients
        )
    else:
        cuda_graph = options["cuda_graph"]
        stack = Together(models, loaders, optimizers, schedules, args.precision, cuda_graph)
        epoch = stack.train_epoch
    return epoch, len(loaders[0])


def time_eval(cfg, width: int, device: torch.device, precision: str, samples: int = 2048) -> float:
    """Seconds per sample of evaluation at `width` in `precision`."""
    _, _, channels, side, classes = SHAPES[cfg.dataset.name]
    model = build_model(cfg.model.name, width, channels, classes, side)
    model = prepare_model(model, device)
    data = synthetic(samples, channels, side, classes)
    loader = DeviceLoader(data, 1024, (0.5,) * channels, (0.25,) * channels, device)
    with autocast(device, precision):
        evaluate(model, loader)
        synchronize(device)
        began = time.perf_counter()
        evaluate(model, loader)
        synchronize(device)
    return (time.perf_counter() - began) / samples


def step_time(timed: dict[int, float], batch: int) -> float:
    """t_step at `batch` from the timed batch sizes of one width: linear between the nearest
    timed ones (flat while the device is not yet busy, proportional once it is), and
    proportional to the batch beyond the largest."""
    sizes = sorted(timed)
    if batch > sizes[-1]:
        return timed[sizes[-1]] * batch / sizes[-1]
    return float(np.interp(batch, sizes, [timed[b] for b in sizes]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", default="cifar10_resnet18")
    parser.add_argument("--widths", type=int, nargs="*", help="default: the zoo's")
    parser.add_argument("--batch-sizes", type=int, nargs="*", help="default: the zoo's")
    parser.add_argument("--steps", type=int, default=5, help="at least, per timed epoch")
    parser.add_argument("--images", type=int, default=1024, help="at least, per timed epoch")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--together", type=positive, default=1, help="seeds per step")
    parser.add_argument("--together-up-to", type=int, help="widest width trained together")
    parser.add_argument("--concurrent", type=positive, default=1, help="grid points at once")
    parser.add_argument("--concurrent-up-to", type=int, help="widest width run concurrently")
    parser.add_argument("--step", choices=STEPS, default="eager")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--eval-precision", choices=PRECISIONS, default="fp32")
    args = parser.parse_args()
    if args.step == "compile" and (args.together > 1 or args.concurrent > 1):
        raise SystemExit(
            "--step compile: not with --together (seeds together are not compiled) nor with "
            "--concurrent (inductor's CUDA graphs are per thread)"
        )

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", [f"zoo={args.zoo}"], return_hydra_config=True)
    if cfg.dataset.name not in SHAPES:
        raise SystemExit(f"zoo {args.zoo}: its dataset {cfg.dataset.name} is not an image set")
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
    steps, evals, failed = {}, {}, []
    for width in widths:
        eval_times = {p: time_eval(cfg, width, device, p) for p in PRECISIONS}
        evals[width] = eval_times[args.eval_precision]
        print(
            f"timed width {width} evaluation: "
            + ", ".join(f"{1e6 * t:.1f} us/sample in {p}" for p, t in eval_times.items())
        )
        for batch in batches:
            try:
                seconds = time_point(cfg, width, batch, device, args)
            except Exception as error:  # one point's failure must not cost the other points
                failed.append(f"width {width} batch {batch}")
                print(f"FAILED width {width} batch {batch}: {type(error).__name__}: {error}")
                continue
            steps.setdefault(width, {})[batch] = seconds
            print(f"timed width {width} batch {batch}: {1000 * seconds:.2f} ms per step of one run")
    print(f"{'width':>6} {'batch':>6} {'ms/step':>9} {'steps/epoch':>12} {'min/run':>9}")

    total, per_width = 0.0, {}
    for width in grid["width"]:
        if width not in steps:
            continue
        for batch in grid["batch_size"]:
            per_epoch = len(batch_bounds(n_train, batch)) * step_time(steps[width], batch)
            per_epoch += (n_train + n_test) * evals[width]
            run = cfg.epochs * per_epoch + (n_train + n_test) * evals[width]
            per_width[width] = per_width.get(width, 0.0) + run * len(grid["seed"])
            timed = "" if batch in steps[width] else "  (fitted)"
            print(
                f"{width:>6} {batch:>6} {1000 * step_time(steps[width], batch):>9.2f} "
                f"{len(batch_bounds(n_train, batch)):>12} {run / 60:>9.2f}{timed}"
            )
        total += per_width[width]
    missing = [w for w in grid["width"] if w not in steps]
    print(
        "hours per width (all batch sizes and seeds): "
        + ", ".join(f"w{w} {t / 3600:.2f}" for w, t in per_width.items())
    )
    print(
        f"projected: {total / 3600:.2f} device-hours ({total / 60:.1f} min) for "
        f"{len(per_width) * len(grid['batch_size']) * len(grid['seed'])} runs, "
        + together_words(args)
        + f", {args.step} steps in {args.precision}, evaluation in {args.eval_precision}"
        + (f"; widths {missing} not timed, not included" if missing else "")
    )
    if failed:
        raise SystemExit(f"failed, left out of the projection: {', '.join(failed)}")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: a positive integer")
    return value


def together_words(args) -> str:
    words = [
        up_to(args.together, "seeds as one model", args.together_up_to),
        up_to(args.concurrent, "grid points at once", args.concurrent_up_to),
    ]
    return ", ".join(w for w in words if w) or "one run at a time"


def up_to(count: int, what: str, widest: int | None) -> str:
    if count == 1:
        return ""
    if widest is None:
        return f"{count} {what}"
    return f"{count} {what} up to width {widest}, wider ones alone"


if __name__ == "__main__":
    main()
