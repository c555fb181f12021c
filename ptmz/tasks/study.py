"""task=study: a zoo from nothing to its phase diagram in one command. Per round: train the
grid's missing runs, measure what the phase classification needs (`task.measure`), classify;
with `task.refine=K`, add the point between every two neighbours in different phases and go
again, K times; then the results table, the figures and a map of every point on log axes.

Every stage is a list of jobs (`ptmz.study.jobs`), run here one after another, or with
`launcher=slurm` as array jobs submitted by this task running as a small driver job on the
cluster (the sweeper submits it and returns). Nothing is done twice: finished runs and stored
results are skipped by the tasks themselves, so a rerun continues where the last one stopped.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ptmz.analysis.figures import Axes2D, refinement_map
from ptmz.analysis.phases import PhaseThresholds, classify_phases
from ptmz.analysis.refine import boundary_points
from ptmz.analysis.table import results_table
from ptmz.errors import ConfigError, PtmzError
from ptmz.study.jobs import Jobs, LocalJobs, SubmititJobs, compose
from ptmz.study.record import Stage, StudyRecord
from ptmz.tasks import GRID_POINT_TASKS, RUN_TASKS
from ptmz.tasks.analysis import save_figure
from ptmz.tasks.status import hydra_node, sweep_axes, with_values
from ptmz.tasks.train import spec_from_config
from ptmz.zoo.population import Population
from ptmz.zoo.rundir import FINISHED, RunDir

log = logging.getLogger(__name__)
CONF_TASKS = Path(__file__).resolve().parents[2] / "conf" / "task"
# resources of the driver job: it waits on the others and classifies, and needs no GPU
DRIVER = {
    "gpus_per_task": None,
    "gpus_per_node": None,
    "cpus_per_gpu": None,
    "mem_per_gpu": None,
    "cpus_per_task": 1,
    "mem_gb": 2,
}
GRID_KEYS = ("width", "batch_size", "lr", "data_fraction", "beta", "subset_seed", "seed")


def study(cfg: DictConfig) -> dict[str, Any]:
    t = cfg.task
    for key, value, least in (("task.refine", t.refine, 0), ("task.shards", t.shards, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(key, value, f"a whole number >= {least}")
    measured = measured_tasks(list(t.measure), OmegaConf.to_container(t.settings))
    # the grid's coordinates; other keys named (epochs=2) are the same for every run
    axes = {k: v for k, v in sweep_axes(cfg)[0].items() if k in GRID_KEYS}
    seeds = axes.pop("seed", [cfg.seed])
    temperature, load = cfg.temperature, cfg.load
    others = [k for k, values in axes.items() if len(values) > 1 and k not in (temperature, load)]
    if t.refine and others:
        raise ConfigError(
            "task.refine",
            t.refine,
            f"0 for a grid that also varies {', '.join(others)}: refinement adds points on the "
            f"{temperature} x {load} plane only",
        )
    zoo = (Path(cfg.out_dir) / cfg.zoo_name).resolve()
    points = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]
    record = StudyRecord(
        str(zoo), temperature, load, t.refine, [{**p, "round": 0} for p in points], driver=_where()
    )
    jobs = jobs_for_launcher()
    shards = t.shards if isinstance(jobs, SubmititJobs) else 1  # in parallel only on a cluster
    stages = Stages(cfg, zoo, record, seeds, _base_overrides(cfg, axes), jobs, shards)
    thresholds = PhaseThresholds.from_config(OmegaConf.to_container(t.thresholds))
    for round_ in range(t.refine + 1):
        record.round = round_
        names = stages.train()
        if not names:
            break
        stages.measure(measured, names)
        if round_ == t.refine:
            break
        found = phases(zoo, names, thresholds)
        added = [] if found is None else boundary_points(found[0], temperature, load)
        log.info("round %d: %d grid points added between phases", round_ + 1, len(added))
        if not added:
            break
        fixed = {k: v for k, v in points[0].items() if k not in (temperature, load)}
        record.points += [{**fixed, **point, "round": round_ + 1} for point in added]
    if names:
        stages.analyse(names, thresholds)
    failures = [failure for stage in record.stages for failure in stage.failures]
    record.state, record.stage = ("failed" if failures else "done"), ""
    record.save(zoo)
    print("\n".join(record.lines()))
    if not any(stage.computed for stage in record.stages if stage.name != "figures"):
        print("study: nothing was left to compute (every run trained, every result measured)")
    if failures:
        raise PtmzError(f"{len(failures)} units of the study failed (listed above); rerun to retry")
    return {"state": record.state, "points": len(record.points)}


def measured_tasks(names: list[str], settings: Any) -> list[tuple[str, str, str]]:
    """(config name, task, result name) of each task the study measures; bad names are refused
    before anything runs."""
    available = sorted(p.stem for p in CONF_TASKS.glob("*.yaml"))
    if not isinstance(settings, dict) or set(settings) - set(names):
        raise ConfigError(
            "task.settings", settings, f"a mapping from tasks of task.measure {names} to their keys"
        )
    population_tasks = (*RUN_TASKS, *GRID_POINT_TASKS)
    out = []
    for name in names:
        task = compose([f"task={name}"]).task if name in available else None
        if task is None or task.name not in population_tasks:
            measurable = [
                n for n in available if compose([f"task={n}"]).task.name in population_tasks
            ]
            raise ConfigError("task.measure", name, f"population tasks: {', '.join(measurable)}")
        out.append((name, task.name, settings.get(name, {}).get("result", task.result)))
    return out


def phases(
    zoo: Path, names: list[str], thresholds: PhaseThresholds
) -> tuple[pd.DataFrame, list[str]] | None:
    """The phase of every grid point of the runs `names` at the latest epoch where phases can be
    told, and the thresholds applied in words; None where they cannot be told at any."""
    table = results_table(Population(zoo, only=names), thresholds)
    classification = classify_phases(table, thresholds)
    epochs = classification.classified_epochs()
    if not epochs:
        log.warning("no epoch has the train loss, Hessian and mc a phase needs: no phase map")
        return None
    grid = classification.grid
    return grid[grid["epoch"] == epochs[-1]], classification.lines()


def jobs_for_launcher() -> Jobs:
    """How this study runs its jobs: under a submitit launcher (the study is then its driver
    job) as array jobs with the launcher's settings; else one after another here."""
    if not HydraConfig.initialized():
        return LocalJobs()
    launcher = HydraConfig.get().launcher
    cluster = LAUNCHERS.get(str(launcher.get("_target_", "")).rsplit(".", 1)[-1])
    if cluster is None:
        return LocalJobs()
    params = OmegaConf.to_container(launcher, resolve=False)
    params = {k: v for k, v in params.items() if k not in ("_target_", "submitit_folder")}
    folder = Path(HydraConfig.get().runtime.output_dir) / ".submitit"
    return SubmititJobs(cluster, params, folder)


LAUNCHERS = {"PtmzSlurmLauncher": "slurm", "PtmzLocalLauncher": "local"}


def _base_overrides(cfg: DictConfig, axes: dict[str, list]) -> list[str]:
    """The command line's overrides that every job of the study shares: all but the grid's
    values (each job names its own) and the study's own settings."""
    drop = {*axes, *GRID_KEYS, "task"}
    return [
        o
        for o in _command_line(cfg)
        if o.lstrip("+~").partition("=")[0] not in drop and not o.lstrip("+~").startswith("task.")
    ]


def _where() -> str:
    job = os.environ.get("SLURM_JOB_ID")
    return f"SLURM job {job}" if job else f"{socket.gethostname()} pid {os.getpid()}"


class Stages:
    """The stages of one study: the jobs they run, and what they record."""

    def __init__(
        self,
        cfg: DictConfig,
        zoo: Path,
        record: StudyRecord,
        seeds: list[int],
        base: list[str],
        jobs: Jobs,
        shards: int,
    ) -> None:
        self.cfg, self.zoo, self.record, self.seeds, self.base = cfg, zoo, record, seeds, base
        self.jobs, self.shards = jobs, shards

    def runs(self) -> dict[tuple[str, ...], dict[int, RunDir]]:
        """Each grid point's overrides -> its run directories by seed."""
        out = {}
        for point in self.record.points:
            grid = {k: v for k, v in point.items() if k != "round"}
            out[tuple(f"{k}={v!r}" for k, v in grid.items())] = {
                seed: RunDir(
                    spec_from_config(with_values(self.cfg, {**grid, "seed": seed})).run_dir
                )
                for seed in self.seeds
            }
        return out

    def train(self) -> list[str]:
        """Train every run of the grid that is not finished; the names of the finished runs.
        A run that another process is training is waited for, and trained here if that process
        did not finish it."""
        grid = self.runs()  # the states are read afresh from the directories each time
        with self.stage("train") as stage:
            for attempt in range(2):
                todo = {
                    point: [seed for seed, run in runs.items() if run.state not in FINISHED]
                    for point, runs in grid.items()
                }
                jobs = [
                    [*self.base, "task=train", *point, f"seed=[{','.join(map(str, seeds))}]"]
                    for point, seeds in todo.items()
                    if seeds
                ]
                outcomes = self.jobs.run(jobs, "train")
                stage.computed += sum(len(seeds) for seeds in todo.values()) if attempt == 0 else 0
                stage.failures = [
                    f"{' '.join(j)}: {e}" for j, e in zip(jobs, outcomes, strict=True) if e
                ]
                held = [
                    run for runs in grid.values() for run in runs.values() if run.state == "running"
                ]
                if not held:
                    break
                log.info("%d runs are held by another process: waiting for it", len(held))
                for run in held:
                    run.wait_while_locked()
            runs = [run for runs in grid.values() for run in runs.values()]
            stage.done, stage.total = sum(r.state in FINISHED for r in runs), len(runs)
        return [r.path.name for r in runs if r.state in FINISHED]

    def measure(self, tasks: list[tuple[str, str, str]], names: list[str]) -> None:
        """Each of `tasks` on the finished runs `names`, in `shards` jobs each."""
        only = _only(names)
        for name, task, result in tasks:
            with self.stage(name) as stage:
                job = [*self.base, f"task={name}", f"population='{self.zoo}'", only]
                job += [f"task.{k}={v!r}" for k, v in self.settings(name).items()]
                before, _ = self._results(task, result, names)
                jobs = [
                    [*job, f"shard={i}", f"num_shards={self.shards}"] for i in range(self.shards)
                ]
                outcomes = self.jobs.run(jobs, name)
                stage.failures = [f"{name} shard {i}: {e}" for i, e in enumerate(outcomes) if e]
                stage.done, stage.total = self._results(task, result, names)
                stage.computed += stage.done - before

    def settings(self, name: str) -> dict[str, Any]:
        return OmegaConf.to_container(self.cfg.task.settings).get(name, {})

    def _results(self, task: str, result: str, names: list[str]) -> tuple[int, int]:
        """(units with a result file of `task`, units) over the runs `names`."""
        population = Population(self.zoo, only=names)
        if task in GRID_POINT_TASKS:
            folders = [self.zoo / "landscape" / point for point in population.grid_points()]
        else:
            folders = [run.path / "landscape" for run in population.runs]
        done = [f for f in folders if any(f.glob(f"{result}_epoch_*.json"))]
        return len(done), len(folders)

    def analyse(self, names: list[str], thresholds: PhaseThresholds) -> None:
        """The results table and figures of the study's runs, and the map of its points."""
        with self.stage("figures") as stage:
            shared = [*self.base, f"population='{self.zoo}'"]
            shared.append(_only(names))
            shared += [o for o in _command_line(self.cfg) if o.startswith("task.thresholds.")]
            outcomes = LocalJobs().run([[*shared, "task=collect"], [*shared, "task=plot"]])
            stage.failures = [e for e in outcomes if e]
            stage.done, stage.total = 2 - len(stage.failures), 2
            found = phases(self.zoo, names, thresholds)
            if found is not None:
                r = self.record
                added = {(p[r.temperature], p[r.load]) for p in r.points if p["round"]}
                axes = Axes2D(r.temperature, r.load)
                grid, notes = found
                fig = refinement_map(grid, axes, added, notes, self.zoo.name)
                for path in save_figure(fig, self.zoo / "study_map"):
                    print(f"wrote {path}")

    @contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        """A stage of the record, saved as it begins and ends, timed."""
        stage = self.record.stage_named(name)
        self.record.stage = name
        self.record.save(self.zoo)
        began = time.perf_counter()
        try:
            yield stage
        except Exception as error:  # the study stops here: say so in its record
            stage.failures.append(f"{type(error).__name__}: {error}")
            self.record.state = "failed"
            raise
        finally:
            stage.seconds += time.perf_counter() - began
            log.info("study: %s", stage.line())
            self.record.save(self.zoo)


def _only(names: list[str]) -> str:
    """The override narrowing a population task to the runs `names`."""
    return "runs=[" + ",".join(f"'{name}'" for name in names) + "]"


def _command_line(cfg: DictConfig) -> list[str]:
    hydra = hydra_node(cfg)
    return list(hydra.overrides.task) if hydra else []
