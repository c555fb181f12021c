"""The run directory: one per grid point and seed, keyed by the content of its config.

    <out_dir>/<zoo>/<run id>/
        config.json                  the resolved run spec
        status.json                  {"state": running|done|diverged|failed, "epoch", "error"}
        metrics.jsonl                one JSON line per evaluated epoch (0 = before training)
        checkpoints/epoch_0005.safetensors   model state_dict after 5 epochs
        checkpoints/state_0005.pt            optimizer, schedule and RNG state (latest epoch of an
                                             unfinished run only)
        checkpoints/digests.json             SHA-256 of each checkpoint file as written, checked
                                             whenever it is loaded (flipped bytes are caught)

A state file is written only after the weights of its epoch, and both atomically, so the latest
state file always names a complete resume point. The previous one is dropped only once the new
one is committed (`keep_resume_point`): seeds trained together commit an epoch only
after all of them have saved it, so a kill between their writes leaves each able to resume at
the group's epoch.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ptmz.errors import DamagedFile, PtmzError
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
    def retrain(self) -> str:
        """What to do about a damaged file that only training again can replace."""
        return f"delete {self.path} to train this run again"

    @property
    def config(self) -> dict[str, Any]:
        return read_json(self.path / "config.json", self.retrain)

    @property
    def damage(self) -> str | None:
        """Why the run cannot be used as it says it is (a DamagedFile's message), or None: its
        config or status does not read, or a done run lacks its records or final weights (it
        would otherwise be measured at another epoch, or tabulated without rows)."""
        try:
            config = self.config if (self.path / "config.json").exists() else None
            status = self.status
        except DamagedFile as error:
            return str(error)
        if not status or status["state"] != "done":
            return None
        missing = [self.path / "metrics.jsonl"]
        if config is None:
            missing.append(self.path / "config.json")
        elif isinstance(config.get("epochs"), int):
            missing.append(self.weights_path(config["epochs"]))
        for path in missing:
            if not path.exists():
                return str(DamagedFile(path, "is missing from a done run", self.retrain))
        return None

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

    def wait_while_locked(self) -> None:
        """Return once no process holds the run's lock (one training it elsewhere)."""
        if (self.path / ".lock").exists():
            with open(self.path / ".lock", "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                fcntl.flock(handle, fcntl.LOCK_UN)

    @property
    def status(self) -> dict[str, Any] | None:
        path = self.path / "status.json"
        if not path.exists():
            return None
        status = read_json(path, self.retrain)
        if not isinstance(status, dict) or status.get("state") not in STATES:
            state = status.get("state") if isinstance(status, dict) else status
            raise DamagedFile(path, f"state {state!r} is none of {', '.join(STATES)}", self.retrain)
        return status

    @property
    def state(self) -> str:
        """`not started` when the run has no status yet, `damaged` when its config or status
        cannot be read (`damage` says why), else the status' state."""
        if self.damage:
            return "damaged"
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
        records = []
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                problem = f"line {number} is not valid JSON ({error})"
                raise DamagedFile(path, problem, self.retrain) from None
        status = self.status
        final = status.get("epoch") if status and status["state"] == "done" else None
        problem = _records_gap(
            [r.get("epoch") if isinstance(r, dict) else None for r in records], final
        )
        if problem:
            raise DamagedFile(path, problem, self.retrain)
        return records

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
    def resume_epochs(self) -> list[int]:
        """The epochs from which training can resume: the latest, and the one before it where
        the latest is not yet committed."""
        return self._epochs("state_*.pt")

    @property
    def resume_epoch(self) -> int | None:
        """The latest epoch from which training can resume, or None."""
        epochs = self.resume_epochs
        return epochs[-1] if epochs else None

    @property
    def _digests_path(self) -> Path:
        return self.checkpoints / "digests.json"

    def _digests(self) -> dict[str, str]:
        path = self._digests_path
        return (
            read_json(path, f"delete it to skip the checks, or {self.retrain}")
            if path.exists()
            else {}
        )

    def _record_digests(self, paths: list[Path]) -> None:
        """Record the digests of the files just written, and forget those of the files just
        deleted (with `paths` empty): a recorded file that is gone was lost since."""
        digests = {n: d for n, d in self._digests().items() if (self.checkpoints / n).exists()}
        write_json(self._digests_path, {**digests, **{p.name: _sha256(p) for p in paths}})

    def verify(self, path: Path) -> None:
        """Raise DamagedFile where `path` holds weights that were written and are gone, or its
        bytes are not those recorded when it was written (files written before digests were
        recorded are not checked). A resume state that is gone is not damage: they come and go."""
        expected = self._digests().get(path.name)
        if expected is None or (not path.exists() and path.name.startswith("state_")):
            return
        if not path.exists():
            raise DamagedFile(
                path,
                "is gone: it was written (its digest is recorded) and deleted since",
                f"restore it, or {self.retrain}",
            )
        if _sha256(path) != expected:
            raise DamagedFile(
                path,
                "its bytes differ from those written (SHA-256 mismatch)",
                f"restore it, or {self.retrain}",
            )

    def verify_all(self) -> str | None:
        """Every checkpoint file checked against its digest, and the records read: the first
        problem's message, or None."""
        try:
            self.records  # noqa: B018 (read to check them)
            written = {self.checkpoints / name for name in self._digests()}
            for path in sorted(written | set(self.checkpoints.glob("*_*.*"))):
                if _EPOCH.match(path.name):
                    self.verify(path)
        except DamagedFile as error:
            return str(error)
        return None

    def load_weights(
        self, epoch: int, device: str | torch.device = "cpu"
    ) -> dict[str, torch.Tensor]:
        path = self.weights_path(epoch)
        self.verify(path)
        try:
            return load_file(path, device=str(device))
        except (SafetensorError, OSError) as error:  # writes are atomic: only outside damage
            raise DamagedFile(
                path,
                f"does not load ({type(error).__name__}: {error})",
                f"restore it, or {self.retrain}",
            ) from None

    def drop_resume_state(self) -> None:
        """A finished run needs no optimizer state: keep only the weights."""
        epochs = self.resume_epochs
        for epoch in epochs:
            self.state_path(epoch).unlink(missing_ok=True)  # its trainer may be dropping it too
        if epochs:
            self._record_digests([])

    def load_state(self, epoch: int) -> dict[str, Any]:
        path = self.state_path(epoch)
        self.verify(path)
        try:
            return torch.load(path, weights_only=True)
        except Exception as error:  # writes are atomic: only outside damage gets here
            raise PtmzError(
                f"{path} is unreadable ({type(error).__name__}: {error}); "
                f"delete {self.path} to train this run again"
            ) from None

    def save_weights(self, epoch: int, weights: dict[str, torch.Tensor]) -> None:
        """Write the weights of `epoch` atomically, then record their digest (a kill between
        the two leaves them unrecorded: loaded unchecked, not refused)."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
        atomic_write(self.weights_path(epoch), lambda tmp: save_file(tensors, tmp))
        self._record_digests([self.weights_path(epoch)])

    def save_checkpoint(
        self, epoch: int, weights: dict[str, torch.Tensor], state: dict[str, Any]
    ) -> None:
        """Write the weights and then the resume state of `epoch`; older resume points stay
        until `keep_resume_point(epoch)` commits this one."""
        self.save_weights(epoch, weights)
        atomic_write(self.state_path(epoch), lambda tmp: torch.save(state, tmp))
        self._record_digests([self.state_path(epoch)])

    def keep_resume_point(self, epoch: int, keep: Callable[[int], bool]) -> None:
        """Make `epoch` the run's only resume point: older ones are superseded (once it is
        committed), newer ones not committed (seeds trained together rewinding to their group's
        epoch, whose later epochs are written again). The weights of a dropped resume point
        survive only where `keep(epoch)` says they are a checkpoint the user asked for; weights
        that are not resume points are never touched, so changing the checkpoint schedule on a
        resumed run deletes nothing it kept."""
        others = [other for other in self.resume_epochs if other != epoch]
        for other in others:
            if not keep(other):
                self.weights_path(other).unlink(missing_ok=True)
            self.state_path(other).unlink()
        if others:
            self._record_digests([])


def _records_gap(epochs: list[Any], final: int | None) -> str | None:
    """What is wrong with records whose epochs are `epochs`, or None: a run records every epoch
    from 0, up to `final` where the run is done (a lost line would drop an epoch unnoticed)."""
    numbered = [e for e in epochs if isinstance(e, int)]
    last = final if isinstance(final, int) else max(numbered, default=-1)
    expected = list(range(last + 1))
    if epochs == expected:
        return None
    missing = [e for e in expected if e not in epochs]
    if missing:
        return f"has no record of epoch {', '.join(map(str, missing))} (of 0 to {last})"
    return f"records epochs {epochs}, not each of 0 to {last} once"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
