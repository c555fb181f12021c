"""ptmz's Hydra sweeper: the basic sweeper's grid, minus the training runs that are already
finished (done or diverged), so a relaunched or resubmitted sweep queues only what is left and
finished runs never occupy a SLURM array slot. Jobs are launched in batches of at most
`max_batch_size` (one SLURM array each: keep it under the cluster's MaxArraySize). After the
launch it reports how many jobs failed, and fails itself if any did or if a run it was asked
for is still unfinished (skipped because another process held it, which did not finish it)."""

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf

from hydra_plugins.ptmz_launcher import JobFailed

log = logging.getLogger(__name__)


@dataclass
class PtmzSweeperConf:
    _target_: str = "hydra_plugins.ptmz_sweeper.PtmzSweeper"
    max_batch_size: int | None = 1000
    params: dict[str, str] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="ptmz", node=PtmzSweeperConf)


class PtmzSweeper(BasicSweeper):
    def split_arguments(self, overrides: list, max_batch_size: int | None) -> list[list[list[str]]]:
        (jobs,) = BasicSweeper.split_arguments(overrides, None)
        todo = [job for job in jobs if not self._finished(job)]
        if len(todo) < len(jobs):
            log.info(
                "%d of %d jobs already finished: not launched", len(jobs) - len(todo), len(jobs)
            )
        return list(BasicSweeper.split_overrides_to_chunks(todo, max_batch_size)) if todo else []

    def _finished(self, job: list[str]) -> bool:
        """Whether `job` trains runs (one, or several packed) whose directories all say done
        or diverged."""
        runs = self._unfinished_runs(job)
        return runs is not None and not runs

    def _unfinished_runs(self, job: list[str]) -> list[str] | None:
        """The runs `job` trains that are not done or diverged, as "path (state)"; None for a
        job that trains nothing (another task) or that is invalid (it reports its own error)."""
        from ptmz.tasks.train import packed_configs, spec_from_config
        from ptmz.zoo.rundir import FINISHED, RunDir

        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(job))
        if cfg.task.name != "train":
            return None
        try:
            runs = [RunDir(spec_from_config(c).run_dir) for c in packed_configs(cfg)]
        except Exception:
            return None
        return [f"{run.path} ({run.state})" for run in runs if run.state not in FINISHED]

    def sweep(self, arguments: list[str]) -> list:
        """Launch every batch, then report the failed jobs (the basic sweeper raises at the
        first failure it reads, hiding how many others failed)."""
        launcher = self.config.hydra.launcher
        if launcher.get("mem_gb") and launcher.get("mem_per_gpu"):  # before any job is queued
            sys.exit(
                f"ptmz: error: hydra.launcher.mem_per_gpu={launcher.mem_per_gpu} is not allowed: "
                f"null with hydra.launcher.mem_gb={launcher.mem_gb} (sbatch takes --mem or "
                "--mem-per-gpu, not both)"
            )
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        batches = self.split_arguments(overrides, self.max_batch_size)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns, failed, launched = [], [], 0
        for batch in batches:
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=launched)
            launched += len(batch)
            failed += [r for r in results if r.status == JobStatus.FAILED]
            returns.append(results)
        for result in failed:
            error = result._return_value  # what the job raised, or why it left no result
            said = (
                str(error) if isinstance(error, JobFailed) else f"{type(error).__name__}: {error}"
            )
            log.error("failed: %s: %s", " ".join(result.overrides), said)
        # a job that found a run held by another process skipped it: if that process did not
        # finish it either, the sweep did not do what it was asked
        left = [
            (result, runs)
            for batch in returns
            for result in batch
            if result.status != JobStatus.FAILED
            and (runs := self._unfinished_runs(result.overrides))
        ]
        for result, runs in left:
            log.error(
                "not finished: %s: %s (another process was training them)",
                " ".join(result.overrides),
                ", ".join(runs),
            )
        if failed or left:
            said = [f"{len(failed)} of {launched} jobs failed"] if failed else []
            said += [f"{len(left)} of {launched} jobs left runs unfinished"] if left else []
            sys.exit(f"ptmz: {', '.join(said)} (listed above)")
        log.info("%d jobs launched, none failed", launched)
        return returns
