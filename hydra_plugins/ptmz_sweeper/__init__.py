"""ptmz's Hydra sweeper: the basic sweeper's grid, minus the training runs that are already
finished (done or diverged), so a relaunched or resubmitted sweep queues only what is left and
finished runs never occupy a SLURM array slot. Before launching, a pre-flight checks every job
left and fetches the datasets they need (`ptmz.preflight`; `hydra.sweeper.preflight=false`
skips it); on any problem nothing is launched. Jobs are launched in batches of at most
`max_batch_size` (one SLURM array each: keep it under the cluster's MaxArraySize). After the
launch it reports how many jobs failed, and fails itself if any did or if a run it was asked
for is still unfinished (skipped because another process held it, which did not finish it)."""

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf

from hydra_plugins.ptmz_launcher import JobFailed
from ptmz.progress import remaining

log = logging.getLogger(__name__)


# the sweep launched by this process: when it began and how many jobs it launches
_SWEEP: dict[str, float] = {}


def job_ended(number: int) -> None:
    """Log how far the sweep is once its job `number` (0-based) has ended: only where its jobs
    run in this process, one after another (the local launcher)."""
    if _SWEEP:
        took = time.perf_counter() - _SWEEP["began"]
        log.info("sweep jobs done: %s", remaining(number + 1, int(_SWEEP["jobs"]), took))


@dataclass
class PtmzSweeperConf:
    _target_: str = "hydra_plugins.ptmz_sweeper.PtmzSweeper"
    max_batch_size: int | None = 1000
    params: dict[str, str] | None = None
    preflight: bool = True  # check every job (and fetch its datasets) before launching any


ConfigStore.instance().store(group="hydra/sweeper", name="ptmz", node=PtmzSweeperConf)


class PtmzSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None, params: dict | None, preflight: bool = True):
        super().__init__(max_batch_size, params)
        self.preflight = preflight
        self._configs: dict[tuple[str, ...], object] = {}

    def _compose(self, job) -> object:
        """The config of `job` (composed once: the skip check and pre-flight both read it)."""
        key = tuple(job)
        if key not in self._configs:
            loader = self.hydra_context.config_loader
            self._configs[key] = loader.load_sweep_config(self.config, list(job))
        return self._configs[key]

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

        cfg = self._compose(job)
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
        if self.config.task.name == "study":
            return self._study(parser, arguments)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        batches = self.split_arguments(overrides, self.max_batch_size)
        if self.preflight and batches:
            self._preflight([job for batch in batches for job in batch])
        _SWEEP.update(began=time.perf_counter(), jobs=sum(len(batch) for batch in batches))
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

    def _preflight(self, jobs: list[list[str]]) -> None:
        """Check every job before any is launched; on a problem, list each distinct one with
        the number of jobs it stops and exit without launching."""
        from ptmz.preflight import preflight

        began = time.perf_counter()
        problems = preflight(jobs, self._compose)
        took = time.perf_counter() - began
        if not problems:
            log.info("pre-flight: %d jobs checked in %.1f s", len(jobs), took)
            return
        for problem in problems:
            log.error("pre-flight: %s", problem.line())
        stopped = len({tuple(job) for problem in problems for job in problem.jobs})
        sys.exit(
            f"ptmz: pre-flight ({took:.1f} s) found {len(problems)} problem(s) stopping "
            f"{stopped} of {len(jobs)} jobs (listed above): nothing was launched. Fix them and "
            "relaunch, or skip the check with hydra.sweeper.preflight=false"
        )

    def _study(self, parser: OverridesParser, arguments: list[str]) -> list:
        """task=study is one job, the study's driver, which launches the stages' jobs itself:
        submitted without waiting for it (the user may log out), or run here by a launcher
        that cannot submit."""
        from ptmz.study.record import StudyRecord
        from ptmz.tasks.study import DRIVER

        for override in parser.parse_overrides(arguments):
            if override.is_sweep_override():
                sys.exit(
                    f"ptmz: error: {override.input_line} is not allowed with task=study: name a "
                    f"grid's values as a list, {override.key_or_group}=[a,b]"
                )
        if not hasattr(self.launcher, "submit"):
            return [self.launcher.launch([arguments], initial_job_idx=0)]
        if running := self._running_driver():
            sys.exit(
                f"ptmz: error: this zoo's study is running as {running}; rerun this command "
                "once it has ended (or `scancel` it to restart the study)"
            )
        (job,) = self.launcher.submit([arguments], 0, **DRIVER)
        zoo = Path(self.config.out_dir).resolve() / self.config.zoo_name
        kind = "SLURM" if self.launcher._EXECUTOR == "slurm" else "local"
        record = StudyRecord.read(zoo) or StudyRecord(
            str(zoo), self.config.temperature, self.config.load, self.config.task.refine
        )
        record.state, record.stage, record.driver = "running", "queued", f"{kind} job {job.job_id}"
        record.save(zoo)  # a second submission sees it while it waits in the queue
        log.info(
            "the study runs as job %s, which submits its stages' jobs and waits for them: you "
            "may log out. `python launch.py task=status` with this command's zoo and grid shows "
            "where it is; rerun this command to resume it if that job ends before the study",
            job.job_id,
        )
        return []

    def _running_driver(self) -> str | None:
        """The SLURM job (as "SLURM job N") still running or queued as this zoo's study driver."""
        import subprocess

        from ptmz.study.record import StudyRecord

        record = StudyRecord.read(Path(self.config.out_dir).resolve() / self.config.zoo_name)
        if record is None or record.state != "running" or not record.driver:
            return None
        job = record.driver.removeprefix("SLURM job ")
        if job == record.driver:  # not a SLURM job
            return None
        queue = subprocess.run(
            ["squeue", "--noheader", f"--jobs={job}", "--format=%T"], capture_output=True, text=True
        )
        return record.driver if queue.stdout.strip() else None
