"""Atomic file writes: readers, and runs killed at any instant, see the old file or the new."""

from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ptmz.errors import DamagedFile, PtmzError

UMASK = os.umask(0)
os.umask(UMASK)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary sibling of `path`, fsync it, then rename it into place."""
    path = Path(path)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)  # some writers create 0600 files; others' default is umask
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock named after `path` (a hidden `.NAME.lock` beside it), waiting
    while another process holds it. The kernel drops the lock when its holder dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as error:  # ENOLCK, ENOSYS: a file system without working locks
            raise PtmzError(
                f"{path}: cannot lock it ({error}); put it on a file system with flock (on "
                "NFS: mounted with locking)"
            ) from error
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, obj: Any) -> None:
    """`obj` as JSON, its non-finite floats as null (JSON has no NaN: see `finite_or_none`)."""
    text = json.dumps(_finite(obj), indent=2, sort_keys=True, allow_nan=False)
    write_text(path, text + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return finite_or_none(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


RESTORE = "restore it, or delete it to have it written again"


def read_json(path: str | Path, remedy: str = RESTORE) -> Any:
    """The JSON in `path`; a damaged file is a DamagedFile naming it and `remedy`."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DamagedFile(str(path), f"not valid JSON ({error})", remedy) from None


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN or infinity: a diverged (or undefined) metric is stored as null."""
    return value if value is not None and math.isfinite(value) else None
