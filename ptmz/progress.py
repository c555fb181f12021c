"""Where a long unit of work is, while it runs: in a terminal one line redrawn in place; in a
log file (a batch job's output) a line at most every `every` seconds, so the file stays short."""

from __future__ import annotations

import logging
import sys
import time

from tqdm.auto import tqdm

log = logging.getLogger(__name__)


class Ticker:
    def __init__(self, label: str, enabled: bool = True, every: float = 30.0) -> None:
        self.label, self.enabled, self.every = label, enabled, every
        terminal = enabled and sys.stderr.isatty()
        self.line = tqdm(bar_format="{desc} [{elapsed}]", leave=False) if terminal else None
        self.last = time.monotonic()

    def __call__(self, message: str) -> None:
        if self.line is not None:
            self.line.set_description_str(f"{self.label}: {message}")
        elif self.enabled and time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            log.info("%s: %s", self.label, message)

    def close(self) -> None:
        if self.line is not None:
            self.line.close()


def remaining(done: int, total: int, seconds: float) -> str:
    """'k/N, about T left' after `done` of `total` units took `seconds` in all."""
    if not done or done == total:
        return f"{done}/{total}"
    left = seconds / done * (total - done)
    return f"{done}/{total}, about {duration(left)} left"


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"
