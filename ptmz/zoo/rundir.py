"""The run directory: one per grid point and seed, keyed by the content of its config.

    <out_dir>/<zoo>/<run id>/
        config.json                  the resolved run spec
        status.json                  {"state": running|done|diverged|failed, "epoch", "error"}
        metrics.jsonl                one JSON line per evaluated epoch (0 = before training)
        checkpoints/epoch_0005.safetensors   model state_dict after 5 epochs
        checkpoints/state_0005.pt            optimizer, schedule and RNG state (latest epoch of an
                                             unfinished run only)

A state file is written only after the weights of its epoch, and both atomically, so the latest
state file always names a complete resume point.
"""

from __future__ import annotations

import fcntl
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ptmz.errors import PtmzError
from ptmz.io import atomic_write, read_json, write_json, write_text

FINISHED = ("done", "diverged")
STATES = ("running", *FINISHED, "failed")
_EPOCH = re.compile(r"(?:epoch|state)_(\d+)\.")


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ---- config, status and records -------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        return read_json(self.path / "config.json")

    def create(self, config: dict[str, Any]) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        write_json(self.path / "config.json", config)

    @contextmanager
    def lock(self) -> Iterator[bool]:
        """Hold the run's lock while training; yields False if another process holds it.

        The kernel drops the lock when its holder dies, so a killed run never blocks its resume;
        the half-written files of a holder killed mid-write (`atomic_write`'s temporaries, some
        checkpoint-sized) are removed as the lock is taken, so requeues do not pile them up.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            except OSError as error:  # ENOLCK, ENOSYS: a file system without working locks
                raise PtmzError(
                    f"{self.path}: cannot lock the run ({error}); put out_dir on a file system "
                    "with flock (on NFS: mounted with locking)"
                ) from error
            for leftover in [*self.path.glob(".*.tmp"), *self.checkpoints.glob(".*.tmp")]:
                leftover.unlink(missing_ok=True)
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @property
    def status(self) -> dict[str, Any] | None:
        path = self.path / "status.json"
        return read_json(path) if path.exists() else None

    @property
    def state(self) -> str:
        """`not started` when the run has no status yet, else the status' state."""
        status = self.status
        return status["state"] if status else "not started"

    def write_status(self, state: str, **info: Any) -> None:
        assert state in STATES, state
        write_json(self.path / "status.json", {"state": state, **info})

    @property
    def records(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def write_records(self, records: list[dict[str, Any]]) -> None:
        write_text(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))

    # ---- checkpoints ----------------------------------------------------------------------
    def weights_path(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch:04d}.safetensors"

    def state_path(self, epoch: int) -> Path:
        return self.checkpoints / f"state_{epoch:04d}.pt"

    def _epochs(self, glob: str) -> list[int]:
        return sorted(int(_EPOCH.match(p.name)[1]) for p in self.checkpoints.glob(glob))

    @property
    def checkpoint_epochs(self) -> list[int]:
        """Epochs whose weights are on disk."""
        return self._epochs("epoch_*.safetensors")

    @property
    def resume_epoch(self) -> int | None:
        """The latest epoch from which training can resume, or None."""
        epochs = self._epochs("state_*.pt")
        return epochs[-1] if epochs else None

    def load_weights(
        self, epoch: int, device: str | torch.device = "cpu"
    ) -> dict[str, torch.Tensor]:
        return load_file(self.weights_path(epoch), device=str(device))

    def drop_resume_state(self) -> None:
        """A finished run needs no optimizer state: keep only the weights."""
        for epoch in self._epochs("state_*.pt"):
            self.state_path(epoch).unlink()

    def load_state(self, epoch: int) -> dict[str, Any]:
        path = self.state_path(epoch)
        try:
            return torch.load(path, weights_only=True)
        except Exception as error:  # writes are atomic: only outside damage gets here
            raise PtmzError(
                f"{path} is unreadable ({type(error).__name__}: {error}); "
                f"delete {self.path} to train this run again"
            ) from None

    def save_checkpoint(
        self,
        epoch: int,
        weights: dict[str, torch.Tensor],
        state: dict[str, Any],
        keep: Callable[[int], bool],
    ) -> None:
        """Write the weights and resume state of `epoch`, then drop the older resume points.

        The weights of a superseded resume point survive only where `keep(epoch)` says they are
        a checkpoint the user asked for; weights that are not resume points are never touched,
        so changing the checkpoint schedule on a resumed run deletes nothing it kept.
        """
        tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
        atomic_write(self.weights_path(epoch), lambda tmp: save_file(tensors, tmp))
        atomic_write(self.state_path(epoch), lambda tmp: torch.save(state, tmp))
        for old in self._epochs("state_*.pt"):
            if old < epoch:
                if not keep(old):
                    self.weights_path(old).unlink(missing_ok=True)
                self.state_path(old).unlink()
