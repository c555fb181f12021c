"""Shared helpers: composing the real Hydra configs in-process and running launch.py."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from ptmz.zoo import RunDir

ROOT = Path(__file__).resolve().parents[1]


# population-task settings small enough for tests
FAST = {
    "hessian": [
        "task.samples=128",
        "task.batch_size=64",
        "task.max_iter=20",
        "task.trace_probes=8",
    ],
    "cka": ["task.samples=256", "task.batch_size=128"],
    "curve": ["task.epochs=1", "task.points=3", "task.bn_samples=256", "task.eval_samples=256"],
    "interpolate": ["task.points=3", "task.bn_samples=256", "task.eval_samples=256"],
}
# the same for task=study, which sets its measured tasks' keys under task.settings
STUDY_FAST = [
    f"+task.settings.{task}.{setting[len('task.') :]}"
    for task in ("hessian", "curve", "cka")
    for setting in FAST[task]
]


def training_gap(run: str, reference: str, epoch: int = 1) -> float:
    """How differently two runs from the same initialisation moved their weights and statistics
    by `epoch`: |d_run - d_ref| / |d_ref|, d the change since epoch 0. A run's dynamics are
    chaotic (a rounding-level difference was seen to grow about 100x per epoch), so runs are
    compared early, on what they did, not on a late loss."""

    def moved(run_dir: str) -> torch.Tensor:
        start, end = RunDir(run_dir).load_weights(0), RunDir(run_dir).load_weights(epoch)
        return torch.cat(
            [
                (end[k].double() - v.double()).flatten()
                for k, v in start.items()
                if v.is_floating_point()
            ]
        )

    d_run, d_ref = moved(run), moved(reference)
    return float((d_run - d_ref).norm() / d_ref.norm())


def launch(*overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python launch.py OVERRIDES` as a user runs it, single-threaded so runs are bitwise
    reproducible across processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), *overrides, "progress=false"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def small_zoo(tmp_path: Path, name: str, *overrides: str) -> Path:
    """`python launch.py -m zoo=NAME OVERRIDES` into `tmp_path`; the zoo's folder."""
    swept = launch("-m", f"zoo={name}", *overrides, f"out_dir={tmp_path / 'zoos'}")
    assert swept.returncode == 0, swept.stderr
    return tmp_path / "zoos" / name


def landscape_tasks(config, zoo: Path, runs: int, grid_points: int) -> None:
    """hessian, cka, curve and interpolate on `zoo` with test-sized settings: a result for
    every run (hessian) or grid point (the others)."""
    from ptmz.tasks import run_task

    for task in ("hessian", "cka", "curve", "interpolate"):
        args = [f"task={task}", f"population={zoo}", "progress=false", *FAST[task]]
        assert run_task(config(*args))["computed"] == (runs if task == "hessian" else grid_points)


def popen_launch(*overrides: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), *overrides, "progress=false"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
def config():
    """compose(*overrides) -> the config `python launch.py OVERRIDES` would run."""

    def compose_config(*overrides: str, hydra: bool = False) -> DictConfig:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose("config", overrides=list(overrides), return_hydra_config=hydra)

    return compose_config


@pytest.fixture(scope="session")
def digits_population(tmp_path_factory) -> Path:
    """A trained digits zoo: grid point (w4, bs32) with seeds 0 and 1, and (w4, bs64) with
    seed 0 only; 3 epochs of the digits recipe, every epoch checkpointed."""
    from ptmz.data import Augment
    from ptmz.train import Recipe, RunSpec, train_run

    out = tmp_path_factory.mktemp("zoo")
    digits = Recipe(augment=Augment(crop_padding=1, hflip=False, rotation=10))
    for batch_size, seed in ((32, 0), (32, 1), (64, 0)):
        spec = RunSpec(
            width=4,
            batch_size=batch_size,
            seed=seed,
            epochs=3,
            recipe=digits,
            out_dir=str(out),
            progress=False,
        )
        assert train_run(spec) == "done"
    return out / "digits_resnet18"


def write_published(population: Path, dest: Path, dataset_hint: bool = True) -> Path:
    """Rewrite ptmz runs in the published (ray.tune trial) format."""
    import json

    import torch

    from ptmz.zoo import RunDir

    runs = sorted(p for p in population.iterdir() if p.is_dir() and p.name != "landscape")
    for i, run_path in enumerate(runs):
        run = RunDir(run_path)
        c = run.config
        trial = dest / f"NN_tune_trainable_{i:05d}_{i}_seed={c['seed']}"
        trial.mkdir(parents=True)
        params = {
            "model::type": "Resnet18_width",
            "model::width": c["width"],
            "training::batchsize": c["batch_size"],
            "optim::lr": c["lr"],
            "seed": c["seed"],
            "training::epochs_train": c["epochs"],
        }
        if dataset_hint:
            params["dataset::dump"] = "/data/zoo/dataset_digits.pt"
        (trial / "params.json").write_text(json.dumps(params))
        lines = [{k: v for k, v in r.items() if k != "epoch"} for r in run.records]
        (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in lines))
        for epoch in run.checkpoint_epochs:
            (trial / f"checkpoint_{epoch:06d}").mkdir()
            torch.save(run.load_weights(epoch), trial / f"checkpoint_{epoch:06d}" / "checkpoints")
    return dest


@pytest.fixture(scope="session")
def published_population(digits_population, tmp_path_factory) -> Path:
    return write_published(digits_population, tmp_path_factory.mktemp("published"))


def write_idx(path: Path, array: torch.Tensor) -> None:
    """The IDX format of the MNIST files: magic (0, 0, type 0x08 = ubyte, ndim), sizes, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    path.write_bytes(header + array.numpy().tobytes())
