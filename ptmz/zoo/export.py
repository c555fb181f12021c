"""A population written out as a self-contained dataset for weight-space learning: weights in
safetensors shards, an index of every model and epoch, and a dataset card (the format is
described in `ptmz.data.zoo_dataset`, which reads it back)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ptmz.analysis.phases import DEFAULT, PhaseThresholds, classify_phases
from ptmz.analysis.table import (
    config_columns,
    frame_of,
    results_table,
    run_identity,
    save_table,
)
from ptmz.data.zoo_dataset import INDEX, LAYOUTS, WEIGHTS, Layout, tensor_name
from ptmz.errors import ConfigError, MissingCheckpoint, PtmzError
from ptmz.io import UMASK, atomic_write, write_json, write_text
from ptmz.models import build_model
from ptmz.zoo.card import dataset_card
from ptmz.zoo.population import Population, Run

log = logging.getLogger(__name__)

Epochs = int | list[int] | str | None  # an epoch, a list, "all", or None (each run's last)


@dataclass(frozen=True)
class Excluded:
    """A checkpoint left out of an export, and why."""

    run: str
    epoch: int | None  # None: the run as a whole
    reason: str


class ShardWriter:
    """Tensors into numbered safetensors files of at most about `max_bytes` each; a model's
    tensors always share one file."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory, self.max_bytes = directory, max_bytes
        self.directory.mkdir(parents=True)
        self.pending: dict[str, torch.Tensor] = {}
        self.count = 0

    @property
    def current(self) -> Path:
        return self.directory / f"shard_{self.count:05d}.safetensors"

    def add(self, key: str, state: dict[str, torch.Tensor]) -> Path:
        """Store `state` under `key`; the shard file it lands in."""
        size = sum(t.numel() * t.element_size() for t in state.values())
        pending = sum(t.numel() * t.element_size() for t in self.pending.values())
        if self.pending and pending + size > self.max_bytes:
            self.close()
        self.pending.update({tensor_name(key, k): t.contiguous() for k, t in state.items()})
        return self.current

    def close(self) -> None:
        if self.pending:
            tensors = self.pending
            atomic_write(self.current, lambda tmp: save_file(tensors, tmp, {"format": "pt"}))
            self.pending, self.count = {}, self.count + 1


def export_population(
    population: Population,
    out: str | Path,
    epochs: Epochs = None,
    thresholds: PhaseThresholds = DEFAULT,
    shard_mb: float = 1024,
    license: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write `population` to `out` as an exported zoo; what was written and left out.

    `epochs`: each run's last checkpoint (None), every checkpoint ("all"), or the given
    epochs. Checkpoints that do not load or hold a non-finite weight, asked-for epochs a run
    has no checkpoint of, and runs that are not done or have no checkpoints are left out and
    listed in the card. The export is assembled
    beside `out` and moved into place whole, so a killed export never leaves half a dataset
    (and the next export to `out` clears what it left, `_recover_abandoned`); `overwrite`
    replaces an earlier export (and nothing else)."""
    out = Path(out).expanduser().resolve()
    if not isinstance(shard_mb, int | float) or shard_mb <= 0:
        raise ConfigError("task.shard_mb", shard_mb, "a positive number of megabytes")
    _recover_abandoned(out)
    _check_target(out, overwrite)
    table = results_table(population, thresholds)
    records = {(r["run"], r["epoch"]): r for r in table.to_dict("records")}
    # not done (running, failed, diverged) or without checkpoints: listed, not lost silently
    unfinished = [Excluded(path.name, None, state) for path, state in population.unfinished]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_beside(out, "staging") + "+", dir=out.parent))
    staging.chmod(0o777 & ~UMASK)  # mkdtemp's is private: the export is not
    try:
        shards = ShardWriter(staging / WEIGHTS, int(shard_mb * 2**20))
        rows, layouts, excluded = [], {}, unfinished
        for run, epoch in _checkpoints(population, epochs, excluded):
            try:
                state = run.state_dict(epoch)
            except MissingCheckpoint as error:
                excluded.append(Excluded(run.name, epoch, error.allowed))
                continue
            bad = [k for k, t in state.items() if t.is_floating_point() and not t.isfinite().all()]
            if bad:
                excluded.append(Excluded(run.name, epoch, f"non-finite values in {bad[0]}"))
                continue
            arch = run.architecture(state)
            name, layout = _layout(arch, state, run)
            if layouts.setdefault(name, layout) != layout:
                raise PtmzError(f"{run.path}: the dtypes of epoch {epoch} differ from {name}'s")
            key = f"{run.name}/epoch_{epoch:04d}"
            shard = shards.add(key, {k: state[k] for k in layout.state_keys})
            rows.append(
                {
                    "model_id": len(rows),
                    **records.get((run.name, epoch), _unrecorded(run, epoch)),
                    "shard": str(shard.relative_to(staging)),
                    "key": key,
                    "layout": name,
                    "numel": layout.numel,
                    **{f"arch.{k}": v for k, v in arch.items()},
                }
            )
        shards.close()
        if not rows:
            raise PtmzError(f"nothing to export from {population.path}: {_reasons(excluded)}")
        index = frame_of(rows)
        save_table(index, staging / INDEX)
        write_json(staging / LAYOUTS, {n: layout.to_json() for n, layout in layouts.items()})
        lines = classify_phases(table, thresholds).lines()
        card = dataset_card(population, index, excluded, lines, license)
        write_text(staging / "README.md", card)
        _move_into_place(staging, out, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {
        "out": str(out),
        "models": len(rows),
        "runs": int(index["run"].nunique()),
        "shards": shards.count,
        "excluded": [vars(e) for e in excluded],
    }


EXPORT_FILES = {"README.md", f"{INDEX}.parquet", f"{INDEX}.csv", LAYOUTS, WEIGHTS}


def _is_export(path: Path) -> bool:
    """Whether `path` holds an export and nothing else (what overwriting may delete)."""
    names = {p.name for p in path.iterdir()}
    shards = path / WEIGHTS
    return (
        names <= EXPORT_FILES
        and f"{INDEX}.parquet" in names
        and (not shards.exists() or all(p.suffix == ".safetensors" for p in shards.iterdir()))
    )


def _removable(path: Path) -> bool:
    """Whether an export moved aside may go: it holds the export and nothing of the user's."""
    return not any(path.iterdir()) or _is_export(path)


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError("task.out", str(out), "a directory (this is a file)")
    if out.is_dir() and any(out.iterdir()):
        if not _is_export(out):
            raise ConfigError(
                "task.out", str(out), "a new or empty directory (this one holds other files)"
            )
        if not overwrite:
            raise ConfigError(
                "task.out", str(out), "a new directory, or overwrite=true to replace this export"
            )


def _checkpoints(population: Population, epochs: Epochs, excluded: list[Excluded]):
    """(run, epoch) to export, in the population's order; missing epochs go to `excluded`."""
    every = sorted({e for run in population for e in run.checkpoint_epochs})
    allowed = f"null, all, or checkpointed epochs: {every}"
    if epochs is not None and epochs != "all":
        if isinstance(epochs, str):
            raise ConfigError("epoch", epochs, allowed)
        wanted = [epochs] if isinstance(epochs, int) else list(epochs)
        if not wanted:
            raise ConfigError("epoch", wanted, allowed)
        for epoch in wanted:
            if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch not in every:
                raise ConfigError("epoch", epoch, allowed)
        wanted = sorted(set(wanted))  # an epoch named twice is one model, not two
    for run in population:
        available = run.checkpoint_epochs
        if not available:
            excluded.append(Excluded(run.name, None, "no checkpoints"))
        elif epochs is None:
            chosen = available[-1:]
        elif epochs == "all":
            chosen = available
        else:
            chosen = [e for e in wanted if e in available]
            missing = sorted(set(wanted) - set(available))
            excluded += [Excluded(run.name, e, "no checkpoint of this epoch") for e in missing]
        for epoch in chosen:
            yield run, epoch


def _layout(arch: dict[str, Any], state: dict[str, torch.Tensor], run: Run) -> tuple[str, Layout]:
    """The architecture's layout name and layout, checked against the checkpoint."""
    with torch.device("meta"):
        reference = build_model(**arch).state_dict()
    shapes = {k: tuple(t.shape) for k, t in state.items()}
    if shapes != {k: tuple(t.shape) for k, t in reference.items()}:
        raise PtmzError(f"{run.path}: the checkpoint does not match {arch}")
    name = "{name}-w{width}-c{in_channels}-k{num_classes}-s{image_size}".format(**arch)
    return name, Layout.of({k: state[k] for k in reference})


def _unrecorded(run: Run, epoch: int) -> dict[str, Any]:
    """The index columns of a checkpoint that has no row in the results table."""
    return {**run_identity(run), "epoch": epoch, **config_columns(run)}


def _reasons(excluded: list[Excluded]) -> str:
    reasons = sorted({e.reason for e in excluded})
    return "; ".join(reasons) if reasons else "no checkpoints"


def _move_into_place(staging: Path, out: Path, overwrite: bool) -> None:
    """`staging` becomes `out`; an earlier export there is removed only once the new one is in
    place. `out` is checked again here: files may have appeared there while the export ran."""
    _check_target(out, overwrite)
    if not out.exists():
        try:
            os.replace(staging, out)
        except OSError as error:  # a directory filled in the meantime is not replaced
            raise ConfigError("task.out", str(out), "a new or empty directory") from error
        return
    old = out.with_name(_beside(out, "old"))
    os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(old, out)
        raise
    if _removable(old):
        shutil.rmtree(old)
    else:  # a file written there after the check above: the user's, kept
        log.warning("%s: kept, it holds files written while the export ran", old)


def _beside(out: Path, kind: str) -> str:
    """The name of an export's `kind` directory beside `out`, saying which process made it."""
    return f".{out.name}.{kind}-{os.getpid()}@{socket.gethostname()}"


def _recover_abandoned(out: Path) -> None:
    """Undo what an export killed on this host left beside `out`: its staging directory is
    removed, and an earlier export it had moved aside is put back where nothing (or an empty
    directory) took its place, removed where its new export did, and otherwise kept and named.

    Leftovers of exports still running, and of other hosts (whose processes cannot be seen from
    here), are left alone. A process is told by its id on this host: a container with this
    host's name but its own process ids looks dead, and its export would then fail (its
    directories gone or in use), which loses no export. Recovery is best effort: a leftover
    that cannot be moved (another user's, another export recovering it) stays, with a warning."""
    name = re.escape(out.name)
    pattern = re.compile(rf"\.{name}\.(?:staging-(\d+)@([^+]+)\+\w+|old-(\d+)@([^+]+))")
    leftovers = sorted(out.parent.iterdir()) if out.parent.is_dir() else []
    for path in leftovers:
        found = pattern.fullmatch(path.name)
        if not found:
            continue
        pid, host = (found[1], found[2]) if found[1] else (found[3], found[4])
        if host != socket.gethostname() or _alive(int(pid)):
            continue
        try:
            if found[1]:
                shutil.rmtree(path)
            elif not out.exists() or (out.is_dir() and not any(out.iterdir())):
                os.replace(path, out)
            elif out.is_dir() and _is_export(out) and _removable(path):
                shutil.rmtree(path)
            else:
                log.warning("%s: an earlier export of %s, kept (one of them is not)", path, out)
        except OSError as error:
            log.warning("%s: left from a killed export, could not be recovered: %s", path, error)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True
