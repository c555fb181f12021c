"""A study's units of work as jobs: lists of command-line overrides that compose into a ptmz
config, run one after another in this process (`LocalJobs`) or as array jobs through submitit
(`SubmititJobs`: SLURM, or parallel local processes). A failed job is an error string in the
outcome, never an exception: the other jobs of a stage still run."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import hydra
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

log = logging.getLogger(__name__)
CONF = Path(__file__).resolve().parents[2] / "conf"


def compose(overrides: Sequence[str], hydra_settings: bool = False) -> DictConfig:
    """The ptmz config of `overrides`, as `python launch.py OVERRIDES` would compose it: within
    a running Hydra app from its config, elsewhere (a notebook, a cluster job) from conf/; with
    `hydra_settings`, the `hydra` node too (the zoo's sweep, the overrides: task=study needs
    them)."""
    if GlobalHydra.instance().is_initialized():
        return hydra.compose("config", list(overrides), return_hydra_config=hydra_settings)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return hydra.compose("config", list(overrides), return_hydra_config=hydra_settings)


def run_job(overrides: Sequence[str]) -> Any:
    """Compose `overrides` and run its task: what one job of a study does, wherever it runs."""
    from ptmz.tasks import run_task

    if not logging.getLogger().handlers:  # a cluster job: no Hydra to set logging up
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    return run_task(compose(overrides))


class Jobs(Protocol):
    def run(self, jobs: Sequence[Sequence[str]], name: str) -> list[str | None]:
        """Run every job (`name`: what they do, for the queue); per job None (it succeeded) or
        what went wrong."""


class LocalJobs:
    """Each job in this process, one after another."""

    def run(self, jobs: Sequence[Sequence[str]], name: str = "") -> list[str | None]:
        outcomes: list[str | None] = []
        for overrides in jobs:
            try:
                run_job(overrides)
                outcomes.append(None)
            except Exception as error:  # any error is this job's: the others still run
                log.error("failed: %s: %s: %s", " ".join(overrides), type(error).__name__, error)
                outcomes.append(f"{type(error).__name__}: {error}")
        return outcomes


def submitit_executor(cluster: str, params: dict[str, Any], folder: str | Path):
    """A submitit executor for `cluster` (slurm | local) with a launcher's parameters, named as
    submitit wants them: the queue-independent ones plain, the others prefixed with the
    cluster's name."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    plain = set(OmegaConf.structured(BaseQueueConf).keys())
    own = {"submitit_folder", "max_num_timeout", "_target_"}
    executor = submitit.AutoExecutor(
        cluster=cluster,
        folder=folder,
        **{f"{cluster}_{k}": v for k, v in params.items() if k == "max_num_timeout"},
    )
    executor.update_parameters(
        **{k if k in plain else f"{cluster}_{k}": v for k, v in params.items() if k not in own}
    )
    return executor


@contextmanager
def _outside_this_job() -> Iterator[None]:
    """Without the SLURM (and submitit) variables of the job this runs in, which sbatch would
    pass on to the jobs it submits (its memory, CPUs, GRES), but with the cluster's address."""
    hidden = {
        k: os.environ.pop(k)
        for k in list(os.environ)
        if k.startswith(("SLURM_", "SUBMITIT_")) and k != "SLURM_CONF"
    }
    try:
        yield
    finally:
        os.environ.update(hidden)


def failure(job) -> str | None:
    """Wait for a submitit job: None when it succeeded, else its last error line or why it left
    no result (killed: out of memory, scancel, a node lost)."""
    import submitit

    try:
        job.results()
        return None
    except submitit.core.utils.FailedJobError as error:  # the task raised: its last line
        trace = str(error).split("----------------------")[1].strip().splitlines()
        return trace[-1] if trace else str(error)
    except submitit.core.utils.UncompletedJobError as error:  # killed from outside
        return f"the job left no result: {str(error).splitlines()[0]}"


class SubmititJobs:
    """Each job as one task of a submitit array (SLURM, or local processes), all submitted
    together; `run` returns once every one has ended."""

    def __init__(self, cluster: str, params: dict[str, Any], folder: str | Path) -> None:
        self.cluster, self.params, self.folder = cluster, params, Path(folder)

    def run(self, jobs: Sequence[Sequence[str]], name: str) -> list[str | None]:
        if not jobs:
            return []
        params = {**self.params, "name": f"ptmz-{name}"}
        executor = submitit_executor(self.cluster, params, self.folder / "%j")
        with _outside_this_job():
            submitted = executor.map_array(run_job, [list(job) for job in jobs])
        log.info("submitted %d jobs as %s", len(submitted), submitted[0].job_id.split("_")[0])
        outcomes = [failure(job) for job in submitted]
        for overrides, outcome in zip(jobs, outcomes, strict=True):
            if outcome is not None:
                log.error("failed: %s: %s", " ".join(overrides), outcome)
        return outcomes
