"""Errors users see for bad input: each names the key, the value and what is allowed."""

from __future__ import annotations

from typing import Any


class PtmzError(Exception):
    """An error caused by the user's input or environment, shown without a traceback."""


class ConfigError(PtmzError, ValueError):
    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")

    def __reduce__(self) -> tuple:  # a cluster job pickles its error back to the launcher
        return type(self), (self.key, self.value, self.allowed)


class MissingCheckpoint(ConfigError):
    """A run lacks the checkpoint asked for: an error of that run (or grid point) alone, which a
    population task reports after measuring the others."""


class DamagedFile(PtmzError):
    """A file that cannot be read as it was written (cut short, garbled, flipped bytes): an
    error of its run (or result) alone, which the tasks report after handling the others."""

    def __init__(self, path: str, problem: str, remedy: str) -> None:
        self.path, self.problem, self.remedy = str(path), problem, remedy
        super().__init__(f"{path}: {problem}; {remedy}")

    def __reduce__(self) -> tuple:
        return type(self), (self.path, self.problem, self.remedy)


def choose(key: str, value: str, options: dict[str, Any]) -> Any:
    """Look `value` up in a registry, failing with the list of valid names."""
    if value not in options:
        raise ConfigError(key, value, f"choose one of {', '.join(sorted(options))}")
    return options[value]
