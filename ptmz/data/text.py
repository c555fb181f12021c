"""The language-model zoo's data: byte-level token windows of a text corpus.

The corpus is the file `data_root/text.txt`, or every file under `data_root/text/` (sorted by
path, concatenated); without either, a generated default: 10,000 lines of integer additions
("417 + 38 = 455"), drawn with a fixed seed. The default needs no download, is the same on every
machine, and has structure a larger model predicts more of. Tokens are the UTF-8 bytes (a
vocabulary of 256: no tokenizer to fetch). The first 90% of the tokens train and the last 10%
test, each cut into windows of CONTEXT + 1 tokens that start every CONTEXT tokens (neighbours
share one token): a window's first CONTEXT tokens are the inputs, its last CONTEXT the
next-token targets.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ptmz.data.split import Split
from ptmz.errors import PtmzError

CONTEXT = 64
VOCAB = 256
TEST_SHARE = 0.1


def arithmetic(lines: int = 10_000, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 1000, (2, lines))
    return "".join(f"{x} + {y} = {x + y}\n" for x, y in zip(a, b, strict=True)).encode()


def read_corpus(root: Path) -> bytes:
    corpus = _user_corpus(root)
    return arithmetic() if corpus is None else corpus


def _user_corpus(root: Path) -> bytes | None:
    files = _corpus_files(root)
    return None if files is None else b"".join(p.read_bytes() for p in files)


def _corpus_files(root: Path) -> list[Path] | None:
    """The files of the user's corpus in order, or None where there is none (the default)."""
    if (root / "text.txt").is_file():
        return [root / "text.txt"]
    if (root / "text").is_dir():
        return sorted(p for p in (root / "text").rglob("*") if p.is_file())
    return None


def corpus_id(root: str | Path) -> str | None:
    """What names the corpus under `root` in a run's identity: None for the generated default
    (so runs on it keep the ids they had before corpora were told apart), else the first 16
    hex digits of the SHA-256 of its bytes."""
    files = _corpus_files(Path(root).expanduser().resolve())
    if files is None:
        return None
    return _digest(tuple(_fingerprint(p) for p in files))


def _fingerprint(path: Path) -> tuple:
    """What changes when a file is rewritten or replaced, even at its old size and mtime."""
    stat = path.stat()
    return str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


@lru_cache(maxsize=16)
def _digest(files: tuple[tuple, ...]) -> str:
    """The corpus hash, read once per set of unchanged files (every run spec asks for it)."""
    digest = hashlib.sha256()
    for path, *_ in files:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def windows(tokens: torch.Tensor) -> Split:
    n = (len(tokens) - 1) // CONTEXT
    starts = torch.arange(n)[:, None] * CONTEXT
    return Split(tokens[starts + torch.arange(CONTEXT + 1)], torch.zeros(n, dtype=torch.int64))


def text_windows(root: Path, download: bool) -> tuple[Split, Split]:
    """Train and test windows of the corpus under `root` (see the module docstring)."""
    corpus = read_corpus(root)
    cut = int(len(corpus) * (1 - TEST_SHARE))
    if min(cut, len(corpus) - cut) <= CONTEXT:
        raise PtmzError(
            f"dataset=text: the corpus under {root} has {len(corpus)} bytes: too few for a test "
            f"window of {CONTEXT + 1} tokens in its last {TEST_SHARE:.0%}"
        )
    tokens = torch.frombuffer(bytearray(corpus), dtype=torch.uint8).long()
    return windows(tokens[:cut]), windows(tokens[cut:])
