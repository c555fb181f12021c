"""Top Hessian eigenvalue + trace: ptmz vs PyHessian, same model, data and iteration counts.

Setting: the published one, 10 batches of 64 samples, in float32 on the CPU. The data are the
first 640 training images of scikit-learn's 8x8 digits (bundled, so no download), normalised;
the model is ResNet-18 width 8 with one input channel, trained for a few SGD steps first so its
Hessian looks like a trained net's (a dominant positive top eigenvalue) rather than a random
init's. Both libraries get the same power-iteration/Lanczos budget (max_iter, tol) and exactly
the same number of Rademacher probes for the trace: PyHessian's ``trace`` is called with
``tol=-inf``, which disables its running-mean stop rule so it runs all ``maxIter`` probes.
"Reference" is a Lanczos run to tol=1e-8 that both top eigenvalues are compared against.

Times are medians over --repeats; HVPs counts the Hessian-vector products each library made.

    pip install --no-deps pyhessian        # benchmark only, not a ptmz dependency
    python benchmarks/hessian.py [--repeats 3] [--probes 100] [--max-iter 100] [--tol 1e-3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from pyhessian import hessian as PyHessian
from torch import Tensor, nn

from ptmz.data import load_dataset
from ptmz.landscape.hessian import (
    hutchinson_trace,
    hvp_fn,
    top_eigenvalues,
    trainable_parameters,
)
from ptmz.models import build_model

Batches = list[tuple[Tensor, Tensor]]


def digits_batches(batches: int, batch_size: int) -> tuple[Batches, Tensor, Tensor]:
    """The first batches*batch_size digits training images as normalised float batches, and
    the whole normalised training set (for the short warm-up training)."""
    data = load_dataset("digits")
    images = (data.train.images.float() / 255 - data.mean[0]) / data.std[0]
    labels = data.train.labels
    n = batches * batch_size
    chunks = zip(images[:n].split(batch_size), labels[:n].split(batch_size), strict=True)
    return list(chunks), images, labels


def trained_model(images: Tensor, labels: Tensor, steps: int) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet18", 8, 1, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        index = torch.randint(0, len(labels), (64,))
        optimizer.zero_grad()
        F.cross_entropy(model(images[index]), labels[index]).backward()
        optimizer.step()
    return model.eval()


class Counted:
    """Wraps a vector function to count its calls (HVPs)."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


def run_ptmz(model: nn.Module, batches: Batches, args) -> dict:
    """hessian_metrics' steps (graph, eigenvalue, trace), timed one by one."""
    n = sum(p.numel() for p in trainable_parameters(model))
    generator = torch.Generator().manual_seed(0)
    like = {"dtype": torch.float32, "device": "cpu"}
    began = time.perf_counter()
    hvp = Counted(hvp_fn(model, batches))
    eigen = top_eigenvalues(hvp, n, 1, args.max_iter, args.tol, generator, **like)
    eigen_done = time.perf_counter()
    eigen_hvps = hvp.calls
    trace = hutchinson_trace(hvp, n, args.probes, generator, **like)
    return {
        "eigenvalue": eigen.values[0],
        "eigen_s": eigen_done - began,  # includes building the gradient graph
        "eigen_hvps": eigen_hvps,
        "trace": trace.mean,
        "stderr": trace.stderr,
        "trace_s": time.perf_counter() - eigen_done,
    }


def run_pyhessian(model: nn.Module, batches: Batches, args) -> dict:
    torch.manual_seed(0)
    began = time.perf_counter()
    h = PyHessian(model, nn.CrossEntropyLoss(), dataloader=batches, cuda=False)
    hvp = Counted(h.dataloader_hv_product)
    h.dataloader_hv_product = hvp  # the method its eigenvalues() and trace() call per HVP
    eigenvalues, _ = h.eigenvalues(maxIter=args.max_iter, tol=args.tol, top_n=1)
    eigen_done = time.perf_counter()
    eigen_hvps = hvp.calls
    samples = torch.tensor(h.trace(maxIter=args.probes, tol=float("-inf")), dtype=torch.float64)
    return {
        "eigenvalue": eigenvalues[0],
        "eigen_s": eigen_done - began,
        "eigen_hvps": eigen_hvps,
        "trace": samples.mean().item(),
        "stderr": (samples.std() / len(samples) ** 0.5).item(),
        "trace_s": time.perf_counter() - eigen_done,
    }


def reference_eigenvalue(model: nn.Module, batches: Batches) -> float:
    n = sum(p.numel() for p in trainable_parameters(model))
    generator = torch.Generator().manual_seed(1)
    return top_eigenvalues(hvp_fn(model, batches), n, 1, 300, 1e-8, generator).values[0]


def median_runs(runs: list[dict]) -> dict:
    """Values from the first run (the seeds are fixed), times as medians over runs."""
    return runs[0] | {k: statistics.median(r[k] for r in runs) for k in ("eigen_s", "trace_s")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--train-steps", type=int, default=100)
    args = parser.parse_args()
    # PyHessian calls backward(create_graph=True), which warns about a reference cycle.
    warnings.filterwarnings("ignore", message=".*create_graph=True.*")

    batches, images, labels = digits_batches(10, 64)
    model = trained_model(images, labels, args.train_steps)
    n = sum(p.numel() for p in trainable_parameters(model))
    print(f"ResNet-18 width 8, {n} parameters, digits 10 x 64 samples, torch {torch.__version__}")
    print(
        f"threads {torch.get_num_threads()}, max_iter {args.max_iter}, tol {args.tol}, "
        f"probes {args.probes}, repeats {args.repeats}"
    )
    print(
        f"reference top eigenvalue (Lanczos, tol 1e-8): {reference_eigenvalue(model, batches):.6g}"
    )

    results = {"ptmz": [], "PyHessian": []}
    for repeat in range(args.repeats):
        results["ptmz"].append(run_ptmz(model, batches, args))
        results["PyHessian"].append(run_pyhessian(model, batches, args))
        print(f"  repeat {repeat + 1}/{args.repeats} done", flush=True)

    print(
        f"\n{'':10} {'top eig':>10} {'HVPs':>5} {'eig s':>7} {'trace':>10} {'± stderr':>9} "
        f"{'trace s':>8} {'total s':>8}"
    )
    medians = {name: median_runs(runs) for name, runs in results.items()}
    for name, r in medians.items():
        print(
            f"{name:10} {r['eigenvalue']:10.5g} {r['eigen_hvps']:5d} {r['eigen_s']:7.2f} "
            f"{r['trace']:10.5g} {r['stderr']:9.3g} {r['trace_s']:8.2f} "
            f"{r['eigen_s'] + r['trace_s']:8.2f}"
        )
    ours, theirs = medians["ptmz"], medians["PyHessian"]
    print("\nspeed-up (PyHessian time / ptmz time):")
    for label, key in (("top eigenvalue", "eigen_s"), ("trace", "trace_s")):
        print(f"  {label:15} {theirs[key] / ours[key]:6.2f}x")
    total = (theirs["eigen_s"] + theirs["trace_s"]) / (ours["eigen_s"] + ours["trace_s"])
    print(f"  {'total':15} {total:6.2f}x")


if __name__ == "__main__":
    main()
