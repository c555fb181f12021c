"""Population: the runs under a directory, in ptmz's own format or the published one.

ptmz runs are run directories (see `ptmz.zoo.rundir`). Published runs are ray.tune trial
directories: `params.json` (flat keys such as `model::type`, `model::width`,
`training::batchsize`, `optim::lr`, `seed`), `result.json` (JSON lines, line k = after k
epochs) and `checkpoint_{k:06d}/checkpoints` (a torch-saved state_dict). Their pickled
`dataset::dump` is never opened: the data comes from ptmz's dataset registry.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptmz.columns import GRID_KEYS
from ptmz.data.datasets import DATASETS, INPUT_SHAPES, first_normalization, normalization
from ptmz.errors import ConfigError, MissingCheckpoint, PtmzError
from ptmz.models import build_model
from ptmz.models.resnet import DEPTHS
from ptmz.train.spec import without_later_defaults
from ptmz.zoo.rundir import RunDir

COORDINATES = GRID_KEYS[:-1]  # of a grid point: the grid keys but the seed
# config keys that say where or how a run executed, not which experiment it is
NOT_GRID = {
    "seed",
    "zoo",
    "out_dir",
    "data_root",
    "download",
    "device",
    "checkpoints",
    "progress",
    "compile",
    "cuda_graph",
    "temperature",
    "load",
    "logger",
    "params",
}
_CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)$")
# The epoch at which each published zoo's landscape metrics (Hessian, CKA, curves, averaging)
# were measured, by dataset and `model::type`: its compute_* scripts' NUM_EPOCH. Population
# tasks measure published runs there unless told `epoch=...`.
PUBLISHED_LANDSCAPE_EPOCH = {
    ("cifar10", "Resnet18_width"): 115,
    ("cifar100", "Resnet18_width"): 115,
    ("cifar10", "Resnet50_width"): 125,
    ("cifar100", "Resnet50_width"): 125,
    ("svhn", "Resnet18_width"): 135,
    ("svhn", "Resnet50_width"): 135,
    ("tinyimagenet", "Resnet18_width"): 90,
    ("tinyimagenet", "Resnet50_width"): 100,
}
# published params that differ between the seeds of one grid point, or say where a run ran
_PUBLISHED_PER_RUN = re.compile(r"^seed$|dump|device|cuda|workers|resources")


@dataclass(frozen=True)
class Run:
    """One trained network: its directory, config, records and checkpoints."""

    path: Path
    config: dict[str, Any]  # at least: dataset, model, and the GRID_KEYS
    format: str  # "ptmz" | "published"
    state: str = "done"  # or "diverged" (a ptmz run); published trials with checkpoints: done

    @property
    def grid(self) -> dict[str, Any]:
        return {k: self.config.get(k) for k in GRID_KEYS}

    @property
    def grid_point(self) -> str:
        """Readable id shared by the seeds of one grid point (everything but the seed)."""
        if self.format == "published":  # every param of the trial, so no varied key is missed
            params = self.config["params"]
            rest = {k: v for k, v in params.items() if not _PUBLISHED_PER_RUN.search(k)}
        else:
            grid = {k: v for k, v in self.config.items() if k not in NOT_GRID}
            rest = without_later_defaults(grid)
        digest = hashlib.sha256(json.dumps(rest, sort_keys=True, default=str).encode())
        g = self.grid
        return f"w{g['width']}_bs{g['batch_size']}-{digest.hexdigest()[:8]}"

    @property
    def name(self) -> str:
        return self.path.name

    @cached_property
    def records(self) -> list[dict[str, Any]]:
        if self.format == "ptmz":
            return RunDir(self.path).records
        path = self.path / "result.json"
        lines = path.read_text().splitlines() if path.exists() else []
        return [
            _as_fractions({"epoch": k, **json.loads(line)}) for k, line in enumerate(lines) if line
        ]

    @property
    def checkpoint_epochs(self) -> list[int]:
        if self.format == "ptmz":
            return RunDir(self.path).checkpoint_epochs
        return sorted(
            int(m[1])
            for p in self.path.iterdir()
            if (m := _CHECKPOINT_DIR.match(p.name)) and (p / "checkpoints").is_file()
        )

    @property
    def landscape_epoch(self) -> int | None:
        """The epoch the published zoo measured this run's landscape at (None: ptmz runs and
        published zoos without one; they are measured at their last checkpoint)."""
        if self.format != "published":
            return None
        return PUBLISHED_LANDSCAPE_EPOCH.get((self.config["dataset"], self.config.get("model")))

    def resolve_epoch(self, epoch: int | None) -> int:
        """`epoch`, or by default the published landscape epoch or else the last checkpoint;
        an epoch without weights is named."""
        available = self.checkpoint_epochs
        if not available:
            raise PtmzError(f"{self.path}: no checkpoints")
        if epoch is None and self.landscape_epoch is None:
            return available[-1]
        if epoch is None:
            epoch = self.landscape_epoch
            if epoch not in available:
                allowed = (
                    f"a checkpointed epoch of {self.path}: {available} (the default, epoch "
                    f"{epoch}, is where the published zoo measured its landscape)"
                )
                raise MissingCheckpoint("epoch", None, allowed)
        if epoch not in available:
            if self.format == "ptmz":  # written during training and lost since: say so
                RunDir(self.path).verify(RunDir(self.path).weights_path(epoch))
            allowed = f"a checkpointed epoch of {self.path}: {available}"
            raise MissingCheckpoint("epoch", epoch, allowed)
        return epoch

    def state_dict(self, epoch: int | None = None) -> dict[str, torch.Tensor]:
        epoch = self.resolve_epoch(epoch)
        if self.format == "ptmz":
            return RunDir(self.path).load_weights(epoch)
        path = self.path / f"checkpoint_{epoch:06d}" / "checkpoints"
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
            # e.g. a trial whose checkpoint ray was still writing: that run's loss, not the task's
            reason = f"{path} does not load ({type(error).__name__}: {str(error)[:80]})"
            raise MissingCheckpoint("epoch", epoch, f"a checkpoint that loads: {reason}") from None

    def architecture(self, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The `build_model` arguments of this run's network (published runs: read off its
        `state`, a ResNet-w state_dict)."""
        channels, size = INPUT_SHAPES[self.config["dataset"]]
        if self.format == "published":
            return {**_published_architecture(state), "image_size": size}
        c = self.config
        return dict(
            name=c["model"],
            width=c["width"],
            in_channels=channels,
            num_classes=DATASETS[c["dataset"]][1],
            image_size=size,
        )

    def load_model(self, epoch: int | None = None) -> nn.Module:
        """The ptmz model with the weights after `epoch` (default: `resolve_epoch(None)`, the
        last checkpoint or a published zoo's landscape epoch)."""
        state = self.state_dict(epoch)
        model = build_model(**self.architecture(state))
        model.load_state_dict(state, strict=True)
        return model


# Published result keys recorded in percent: the curve code's errors are 100 - accuracy (%)
_PUBLISHED_PERCENT = re.compile(r"^curve_\w*error")


def _as_fractions(record: dict[str, Any]) -> dict[str, Any]:
    """A published result line with its percent errors as fractions, like every ptmz error
    (so mc_tolerance 0.01 is one point for both)."""
    return {
        k: v / 100 if _PUBLISHED_PERCENT.match(k) and isinstance(v, int | float) else v
        for k, v in record.items()
    }


SUPERSEDED = (
    "trained under ptmz's former normalisation of its dataset: retrain it (docs/published.md)"
)


DAMAGED = "damaged: "  # how a damaged run's state in `Population.unfinished` begins


def _superseded_normalization(config: dict[str, Any]) -> bool:
    """Whether a ptmz run's config predates its dataset's published normalisation."""
    dataset = config.get("dataset")
    if dataset not in DATASETS or "normalization" in config:
        return False
    return first_normalization(dataset) != normalization(dataset)


def _published_architecture(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Model name, width, input channels and classes read off a ResNet-w state_dict."""
    bottleneck = "layer1.0.conv3.weight" in state
    layers = [
        len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5)
    ]
    names = [
        n
        for n, (block, ls) in DEPTHS.items()
        if ls == layers and (block.expansion == 4) == bottleneck
    ]
    if not names:
        raise PtmzError(f"unrecognised ResNet layout: blocks {layers}, bottleneck={bottleneck}")
    width, in_channels = state["conv1.weight"].shape[:2]
    return dict(
        name=names[0],
        width=int(width),
        in_channels=int(in_channels),
        num_classes=int(state["fc.bias"].shape[0]),
    )


def _check_names_unique(runs: list[Run]) -> None:
    """Runs are told apart by their directory's name (results, tables, exports)."""
    seen: dict[str, Path] = {}
    for run in runs:
        if (other := seen.setdefault(run.name, run.path)) != run.path:
            raise PtmzError(
                f"two runs are named {run.name}: {other} and {run.path}; open each copy of a "
                "zoo as a population of its own"
            )


def _infer_dataset(params: dict[str, Any]) -> str | None:
    text = " ".join(str(params.get(k, "")) for k in ("dataset::dump", "dataset::name")).lower()
    for name in sorted(DATASETS, key=len, reverse=True):  # cifar100 before cifar10
        if name in text.replace("-", "").replace("_", ""):
            return name
    return None


def _published_run(path: Path, dataset: str | None) -> Run:
    params = json.loads((path / "params.json").read_text())
    dataset = dataset or _infer_dataset(params)
    if dataset is None:
        raise ConfigError(
            "dataset",
            None,
            f"name the dataset of the published runs in "
            f"{path.parent} (one of {', '.join(sorted(DATASETS))})",
        )
    config = dict(
        dataset=dataset,
        model=str(params.get("model::type", "resnet")),
        width=params.get("model::width"),
        batch_size=params.get("training::batchsize"),
        lr=params.get("optim::lr"),
        data_fraction=params.get("training::data_fraction", 1.0),
        seed=params.get("seed"),
        params=params,
    )
    return Run(path, config, "published")


@dataclass
class Population:
    """All finished runs under `path` (any depth), grouped into grid points that differ only by
    seed. ptmz runs that are not `done` (running, failed, diverged), ptmz runs trained under a
    dataset's superseded normalisation (`SUPERSEDED`) and published trials without checkpoints
    are left out and listed in `unfinished` as (path, state); the diverged ones are also in
    `diverged`, whose records are part of the zoo's results (`results_table`).

    `dataset` names the dataset of published runs whose params do not say it; ptmz runs
    always carry theirs. `only` keeps the runs of those directory names (a study's grid, say)
    and leaves the others under `path` out of everything, unlisted.
    """

    path: Path
    dataset: str | None = None
    only: Collection[str] | None = None
    runs: list[Run] = field(init=False)
    unfinished: list[tuple[Path, str]] = field(init=False)
    diverged: list[Run] = field(init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path).expanduser().resolve()
        if not self.path.is_dir():
            raise ConfigError("population", str(self.path), "an existing directory of runs")
        trials = sorted(self.path.rglob("params.json"))
        # a published experiment keeps its own config.json above its trials: not a run
        experiments = {parent for t in trials for parent in t.parents}
        found = [
            RunDir(p.parent)
            for p in sorted(self.path.rglob("config.json"))
            if p.parent not in experiments
        ]
        # each run's files read once: its state, then (when not damaged) its config
        states = {d.path: (d.state, d.damage) for d in found}
        damaged = [(d.path, DAMAGED + states[d.path][1]) for d in found if states[d.path][1]]
        readable = [(d, states[d.path][0], d.config) for d in found if not states[d.path][1]]
        # runs trained under a dataset's superseded normalisation are another experiment
        superseded = [(d.path, SUPERSEDED) for d, _, c in readable if _superseded_normalization(c)]
        found_runs = [
            Run(d.path, config, "ptmz", state)
            for d, state, config in readable
            if not _superseded_normalization(config)
        ]
        self.unfinished = [(r.path, r.state) for r in found_runs if r.state != "done"]
        self.unfinished += superseded + damaged
        runs = [r for r in found_runs if r.state == "done"]
        self.diverged = [r for r in found_runs if r.state == "diverged"]
        published = [_published_run(p.parent, self.dataset) for p in trials]
        self.unfinished += [
            (r.path, "no checkpoints") for r in published if not r.checkpoint_epochs
        ]
        runs += [r for r in published if r.checkpoint_epochs]
        if self.only is not None:
            runs, self.diverged, self.unfinished = self._narrowed(runs)
        if not runs:
            left_out = "".join(f"; {path}: {state}" for path, state in self.unfinished[:5])
            raise ConfigError(
                "population",
                str(self.path),
                "a directory holding finished run directories with checkpoints (ptmz or the "
                f"published format); it holds {len(self.unfinished)} others{left_out}",
            )
        _check_names_unique(runs)
        datasets = {r.config["dataset"] for r in runs}
        if len(datasets) > 1:
            raise PtmzError(f"{self.path} mixes datasets {sorted(datasets)}: open one zoo")
        self.dataset = datasets.pop()
        self.runs = sorted(runs, key=lambda r: (r.grid_point, r.config["seed"] or 0, r.name))

    def _narrowed(self, runs: list[Run]) -> tuple[list[Run], list[Run], list[tuple[Path, str]]]:
        """(runs, diverged, unfinished) of the names in `only`, which must all be here."""
        only = set(self.only)
        here = {r.name for r in runs} | {path.name for path, _ in self.unfinished}
        if missing := sorted(only - here):
            raise ConfigError(
                "runs",
                missing[:3],
                f"names of run directories in {self.path} ({len(missing)} are not there)",
            )
        return (
            [r for r in runs if r.name in only],
            [r for r in self.diverged if r.name in only],
            [(path, state) for path, state in self.unfinished if path.name in only],
        )

    @property
    def damaged(self) -> list[str]:
        """Why each damaged run left out is damaged (its DamagedFile's message): the runs a task
        could not do, which it names once it has done the others."""
        return [
            state.removeprefix(DAMAGED) for _, state in self.unfinished if state.startswith(DAMAGED)
        ]

    def __iter__(self):
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)

    def grid_points(self) -> dict[str, list[Run]]:
        """Grid point id -> its runs, ordered by seed."""
        groups: dict[str, list[Run]] = defaultdict(list)
        for run in self.runs:
            groups[run.grid_point].append(run)
        for point, runs in groups.items():
            seeds = [r.config["seed"] for r in runs]
            if len(set(seeds)) < len(seeds):
                raise PtmzError(
                    f"grid point {point} of {self.path} holds seeds {seeds}: the "
                    "same run twice (two copies of a zoo under one population?)"
                )
        return dict(groups)
