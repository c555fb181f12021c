"""What every population task shares: opening the population and its data, picking this job's
shard of the work, resolving epochs, and skipping results that already exist."""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from ptmz.data import (
    Augment,
    DeviceLoader,
    ImageDataset,
    Split,
    fixed_subset,
    load_dataset,
    stratified_subset,
)
from ptmz.data.datasets import SUPERSEDED_NORMALIZATION, normalization
from ptmz.data.text import corpus_id
from ptmz.errors import ConfigError, DamagedFile, MissingCheckpoint, PtmzError, choose
from ptmz.io import exclusive, read_json, write_json
from ptmz.objectives import Objective, objective_for
from ptmz.progress import remaining
from ptmz.train.loop import resolve_device
from ptmz.zoo.population import Population, Run
from ptmz.zoo.results import run_result

log = logging.getLogger(__name__)
Unit = TypeVar("Unit")


def named_dataset(cfg: DictConfig) -> str | None:
    """The dataset the user named on the command line (only needed for published populations,
    whose params may not say it); None when the config group kept its default."""
    if not HydraConfig.initialized():
        return None
    for override in HydraConfig.get().overrides.task:
        if override.startswith("dataset="):
            return override.split("=", 1)[1]
    return None


@dataclass
class Workspace:
    """A population with the data and device its metrics are computed on. `dataset`: the one
    named on the command line (`named_dataset`, read from Hydra when None)."""

    cfg: DictConfig
    dataset: str | None = None

    @cached_property
    def population(self) -> Population:
        if not self.cfg.population:
            raise ConfigError(
                "population",
                self.cfg.population,
                "the path of a zoo directory, e.g. population=zoos/digits_resnet18",
            )
        runs = self.cfg.get("runs")
        if runs is not None and not (OmegaConf.is_list(runs) and runs):
            raise ConfigError("runs", runs, "null (all), or a list of run directory names")
        population = Population(
            self.cfg.population,
            dataset=self.dataset or named_dataset(self.cfg),
            only=None if runs is None else [str(name) for name in runs],
        )
        for path, state in population.unfinished:
            log.warning("%s (%s): left out", path, state)
        return population

    @cached_property
    def device(self) -> torch.device:
        return resolve_device(self.cfg.device)

    @cached_property
    def data(self) -> ImageDataset:
        if self.population.dataset == "text":
            self._check_corpus()
        return load_dataset(self.population.dataset, self.cfg.data_root, self.cfg.dataset.download)

    def _check_corpus(self) -> None:
        """A language zoo is measured on the corpus it trained on, not whatever data_root holds."""
        # configs written before corpora were told apart have no key: nothing to check them by
        trained = {run.config["corpus"] for run in self.population.runs if "corpus" in run.config}
        if trained and trained != {here := corpus_id(self.cfg.data_root)}:
            named = [
                f"corpus {c}" if c else "the generated corpus" for c in sorted(trained, key=str)
            ]
            raise ConfigError(
                "data_root",
                self.cfg.data_root,
                f"the folder holding what the zoo trained on ({', '.join(named)}); it holds "
                + (f"corpus {here}" if here else "no corpus, so the generated one"),
            )

    @property
    def data_inputs(self) -> dict[str, Any]:
        """What a result's inputs record of the data: for the datasets whose normalisation (and,
        for TinyImageNet, label order) changed to the published ones, the normalisation, so
        results measured before are recomputed rather than reused; nothing for the others,
        whose results keep their inputs."""
        dataset = self.population.dataset
        if dataset not in SUPERSEDED_NORMALIZATION:
            return {}
        return {"normalization": normalization(dataset)}

    def objective(self, run: Run) -> Objective:
        """What `run` was trained on: its loss and metric (published runs are classifiers)."""
        return objective_for(self.population.dataset, run.config)

    def train_split(self, run: Run) -> Split:
        """The training data `run` was trained on (its stratified subset)."""
        fraction = run.config.get("data_fraction") or 1.0
        seed = run.config.get("subset_seed", 0)
        return self.data.train.subset(stratified_subset(self.data.train.labels, fraction, seed))

    def loader(
        self,
        split: Split,
        batch_size: int,
        samples: int | None = None,
        augment: Any = None,
        seed: int = 0,
    ) -> DeviceLoader:
        """Unaugmented batches of a fixed subset of `split` (or all of it), in fixed order;
        with `augment`, shuffled and augmented by a generator seeded with `seed`."""
        subset = split.subset(fixed_subset(len(split), samples))
        generator = torch.Generator().manual_seed(seed) if augment is not None else None
        return DeviceLoader(
            subset, batch_size, self.data.mean, self.data.std, self.device, augment, generator
        )

    def batches(
        self, run: Run, split: str, batch_size: int, samples: int | None, sampling: str, seed: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The batches a landscape metric of `run` is measured on (`split`: train | test).

        fixed: a fixed random subset of `samples` (null: all), unaugmented, in order.
        published: as the published zoo's scripts drew them. Train: the first `samples` of a
        shuffled pass of the augmented training loader, its generator seeded with `seed` alone,
        so every seed of a grid point is measured on the same batches. Test: the first
        `samples` test images in order (their loader did not shuffle), unaugmented."""
        choose("task.sampling", sampling, dict.fromkeys(SAMPLINGS))
        counted = isinstance(samples, int) and not isinstance(samples, bool) and samples >= 1
        if samples is not None and not counted:
            raise ConfigError("task.samples", samples, "a positive integer, or null for all")
        data = self.train_split(run) if split == "train" else self.data.test
        if sampling == "fixed":
            return list(self.loader(data, batch_size, samples))
        count = len(data) if samples is None else min(samples, len(data))
        if split == "test":
            return list(self.loader(data.subset(torch.arange(count)), batch_size))
        loader = self.loader(data, batch_size, augment=training_augment(run), seed=seed)
        batches = list(itertools.islice(loader, math.ceil(count / batch_size)))
        excess = sum(len(y) for _, y in batches) - count  # the last batch cut to `samples` in all
        if excess > 0:
            x, y = batches[-1]
            batches[-1] = (x[: len(x) - excess], y[: len(y) - excess])
        return batches


SAMPLINGS = ("fixed", "published")
# The published scripts' training augmentation per dataset, where it was not the CIFAR one
PUBLISHED_AUGMENT = {"svhn": Augment(hflip=False)}


def training_augment(run: Run) -> Augment:
    """The run's own training augmentation; published runs used their zoo's."""
    recipe = run.config.get("recipe")
    if recipe:
        return Augment(**recipe["augment"])
    return PUBLISHED_AUGMENT.get(run.config["dataset"], Augment())


def result_name(cfg: DictConfig) -> str:
    """The stem of this task's result files, `task.result`. Files are keyed by it, not by the
    settings, so two settings of one task need two names to keep both results."""
    name = cfg.task.result
    if not isinstance(name, str) or not re.fullmatch(r"\w[\w-]*", name) or "_epoch_" in name:
        raise ConfigError(
            "task.result", name, "a file-name stem of letters, digits, '_' and '-' (not '_epoch_')"
        )
    return name


def shard(units: Sequence[Unit], name: Callable[[Unit], str], cfg: DictConfig) -> list[Unit]:
    """This job's share of `units`: those whose name hashes to `shard` modulo `num_shards`.
    Hashing the name (not the position) keeps the split fixed while runs are still appearing."""
    if not isinstance(cfg.num_shards, int) or cfg.num_shards < 1:
        raise ConfigError("num_shards", cfg.num_shards, "an integer >= 1")
    if not isinstance(cfg.shard, int) or not 0 <= cfg.shard < cfg.num_shards:
        raise ConfigError("shard", cfg.shard, f"an integer in 0..{cfg.num_shards - 1}")
    return [u for u in units if zlib.crc32(name(u).encode()) % cfg.num_shards == cfg.shard]


def common_epoch(runs: Sequence[Run], epoch: int | None) -> int:
    """`epoch` checked on every run, or by default the published landscape epoch (published
    zoos) or else the latest epoch checkpointed by all of them."""
    epoch = runs[0].landscape_epoch if epoch is None else epoch
    if epoch is not None:
        return [run.resolve_epoch(epoch) for run in runs][0]
    shared = set.intersection(*(set(run.checkpoint_epochs) for run in runs))
    if not shared:
        raise MissingCheckpoint(
            "epoch", epoch, f"runs {[r.name for r in runs]} share no checkpoint"
        )
    return max(shared)


def seed_pairs(runs: Sequence[Run], which: str) -> list[tuple[Run, Run]]:
    pairs = list(itertools.combinations(runs, 2))
    if which not in ("first", "all"):
        raise ConfigError("task.pairs", which, "first (the two lowest seeds only) or all")
    return pairs[:1] if which == "first" else pairs


def mean_over(results: list[dict[str, Any]]) -> dict[str, float]:
    """The mean of every scalar entry over seed pairs."""
    keys = [k for k, v in results[0].items() if isinstance(v, int | float)]
    return {k: float(np.mean([r[k] for r in results])) for k in keys}


def fail_if_incomplete(damaged_runs: Sequence[str], damaged_files: Sequence[str] = ()) -> None:
    """Once a task has done all it could, fail naming the damaged runs (and result or record
    files) it had to leave out, so that its job does not report a zoo complete that is not."""
    parts = [
        f"{len(messages)} damaged {what} left out{where}: {'; '.join(messages)}"
        for messages, what, where in (
            (damaged_files, "files", " of the table"),
            (damaged_runs, "runs", ""),
        )
        if messages
    ]
    if parts:
        raise PtmzError("\n".join(parts))


def run_units(
    units: Sequence[Unit],
    name: Callable[[Unit], str],
    target: Callable[[Unit], Path],
    inputs: Callable[[Unit], dict[str, Any]],
    compute: Callable[[Unit], dict[str, Any]],
    overwrite: bool,
    headline: Sequence[str] = (),
    damaged_runs: Sequence[str] = (),
) -> dict[str, int]:
    """Compute and store every unit's result unless its file already holds one computed from
    the same inputs (runs, epoch, settings); `overwrite` recomputes them all. Each result
    written is logged with the count so far and the time the rest should take; in a terminal a
    bar over the units names the one being computed. At the end the `headline` values (keys of
    the flattened result, e.g. "train.trace") of every unit's result are printed as a table.

    A unit whose runs lack the checkpoint asked for, or whose files are damaged, is logged and
    passed over, so that it costs its own result only; the first such error is raised once every
    other unit is done. Any other error (the data, the settings) concerns them all and stops the
    task at once. A damaged result file is computed again. `damaged_runs` (the population's,
    left out of `units`) fail the task likewise once the units are done."""
    counts, failed, failed_units, seconds = {"computed": 0, "skipped": 0}, [], [], 0.0
    bar = tqdm(total=len(units), unit="unit", leave=False, disable=not sys.stderr.isatty())
    for done, unit in enumerate(units, 1):
        bar.set_description(name(unit))
        try:
            path, spent = _run_unit(unit, target, inputs, compute, overwrite)
        except (MissingCheckpoint, DamagedFile) as error:
            log.error("left out: %s", error)
            failed.append(error)
            failed_units.append(unit)
            continue
        finally:
            bar.update()
        if spent is None:
            counts["skipped"] += 1
            continue
        counts["computed"] += 1
        seconds += spent
        # the units left are assumed to take what those so far took (skipped ones about 0)
        log.info("wrote %s (%.1f s) [%s]", path, spent, remaining(done, len(units), seconds))
    bar.close()
    log.info("%d computed, %d already there", counts["computed"], counts["skipped"])
    if headline:
        print(
            headline_table([(name(u), target(u)) for u in units if u not in failed_units], headline)
        )
    if failed:
        log.error("%d of %d units failed (above); raising the first", len(failed), len(units))
        for message in damaged_runs:
            log.error("left out, damaged: %s", message)
        raise failed[0]
    fail_if_incomplete(damaged_runs)
    return counts


def headline_table(results: Sequence[tuple[str, Path]], keys: Sequence[str]) -> str:
    """A plain-text table: one row per (name, result file), one column per key of the
    flattened result (4 significant digits; blank where the result lacks it)."""
    from ptmz.analysis.table import flatten

    rows = []
    for name, path in results:
        values = flatten(read_json(path), "")
        rows.append([name, *(f"{values[f'.{k}']:.4g}" if f".{k}" in values else "" for k in keys)])
    header = ["", *keys]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            str(c).rjust(w) if i else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def _run_unit(
    unit: Unit,
    target: Callable[[Unit], Path],
    inputs: Callable[[Unit], dict[str, Any]],
    compute: Callable[[Unit], dict[str, Any]],
    overwrite: bool,
) -> tuple[Path, float | None]:
    """Compute and store one unit's result, or skip it: its path, and the seconds it took
    (None: skipped). The unit is locked meanwhile, so that two jobs (a study's driver and its
    resubmission, two sweeps) never compute it twice: the second waits, then skips it."""
    path, expected = target(unit), json.loads(json.dumps(inputs(unit)))
    with exclusive(path):
        if path.exists() and not overwrite:
            try:
                stored = read_json(path).get("inputs")
            except DamagedFile as error:
                log.warning("%s: recomputing", error)
                stored = None
            if stored == expected:
                return path, None
            if stored is not None:
                log.warning("%s was computed from other inputs: recomputing", path)
        began = time.perf_counter()
        result = {"inputs": expected, **compute(unit)}
        result["seconds"] = time.perf_counter() - began
        write_json(path, result)
    return path, result["seconds"]


def per_run_task(
    cfg: DictConfig,
    ws: Workspace,
    compute: Callable[[Run, int], dict[str, Any]],
    headline: Sequence[str] = (),
) -> dict[str, int]:
    """Run `compute(run, epoch)` on this shard's runs at `cfg.epoch` (default: `resolve_epoch`'s,
    each run's last checkpoint or a published zoo's landscape epoch), storing
    <run>/landscape/<task.result>_epoch_XXXX.json."""
    name = result_name(cfg)

    def inputs(run: Run) -> dict[str, Any]:
        return {
            "run": run.name,
            "epoch": run.resolve_epoch(cfg.epoch),
            "settings": OmegaConf.to_container(cfg.task),
            **ws.data_inputs,
        }

    return run_units(
        shard(ws.population.runs, lambda run: run.name, cfg),
        lambda run: run.name,
        lambda run: run_result(run, name, run.resolve_epoch(cfg.epoch)),
        inputs,
        lambda run: compute(run, run.resolve_epoch(cfg.epoch)),
        cfg.overwrite,
        headline,
        ws.population.damaged,
    )
