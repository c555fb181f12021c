"""A study's record, `<zoo>/study.json`: its grid points (and the round that added each), the
stage it is at, each stage's units done of total and its failures. The study rewrites it as it
goes; `task=status` prints it. It describes, it does not decide: a rerun of the study works out
what is left from the run directories and result files, whatever the record says."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ptmz.errors import DamagedFile
from ptmz.io import read_json, write_json
from ptmz.progress import duration

FILE = "study.json"


@dataclass
class Stage:
    name: str
    done: int = 0  # units whose result exists
    total: int = 0
    computed: int = 0  # units this study computed (not found done)
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        failed = f", {len(self.failures)} failed" if self.failures else ""
        took = f", {duration(self.seconds)}" if self.seconds else ""
        computed = f"{self.computed} computed{took}"
        return f"{self.name}: {self.done}/{self.total} done ({computed}){failed}"


@dataclass
class StudyRecord:
    zoo: str
    temperature: str
    load: str
    rounds: int  # refinement rounds asked for
    points: list[dict[str, Any]] = field(default_factory=list)  # grid coords and `round`
    round: int = 0
    state: str = "running"  # running | done | failed
    stage: str = ""
    stages: list[Stage] = field(default_factory=list)
    driver: str | None = None  # where the study runs: a host and pid, or a SLURM job
    updated: float = 0.0

    def stage_named(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        self.stages.append(Stage(name))
        return self.stages[-1]

    def save(self, zoo_dir: Path) -> None:
        self.updated = time.time()
        zoo_dir.mkdir(parents=True, exist_ok=True)
        write_json(zoo_dir / FILE, asdict(self))

    @classmethod
    def read(cls, zoo_dir: Path) -> StudyRecord | None:
        """The zoo's record, or None where no study ran (or its record is damaged: a rerun
        writes it again)."""
        path = zoo_dir / FILE
        if not path.exists():
            return None
        try:
            data = read_json(path)
            data["stages"] = [Stage(**stage) for stage in data["stages"]]
            return cls(**data)
        except (DamagedFile, KeyError, TypeError):
            return None

    def lines(self) -> list[str]:
        """The record in words, for `task=status`."""
        added = sum(p["round"] > 0 for p in self.points)
        refined = f", {added} added by refinement" if added else ""
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.updated))
        head = (
            f"study: {self.state}, round {self.round} of {self.rounds}, "
            f"{len(self.points)} grid points{refined}; "
            + (f"at {self.stage}; " if self.state == "running" else "")
            + f"updated {when}"
            + (f" by {self.driver}" if self.driver else "")
        )
        lines = [head, *(f"  {stage.line()}" for stage in self.stages)]
        lines += [f"  failed: {failure}" for s in self.stages for failure in s.failures]
        return lines
