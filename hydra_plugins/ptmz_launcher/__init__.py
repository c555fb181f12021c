"""ptmz's submitit launchers (`launcher=slurm`, `launcher=submitit_local`): those of
hydra-submitit-launcher, with two differences that matter on a cluster.

- A job whose task fails exits non-zero, so SLURM records it FAILED and `--dependency=afterok`
  or `--mail-type=FAIL` see it (Hydra's job wrapper catches the error and the job would exit 0).
- A job that ends without a result (killed: out of memory, scancel, a node lost) or with an
  error is one failed job of the sweep: the launcher waits for every other job and returns them
  all, so the sweeper lists every failure and launches the next batch (the plugin's own launch
  raises at the first such job it reads).
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher

from ptmz.study.jobs import failure, submitit_executor

log = logging.getLogger(__name__)


class JobFailed(RuntimeError):
    """A job's failure as the launching process sees it: the job's last error line, or why it
    left no result."""


class _Reporting:
    _EXECUTOR: str
    params: dict

    def __call__(self, *args, **kwargs) -> JobReturn:
        result = super().__call__(*args, **kwargs)
        if result.status == JobStatus.FAILED:
            raise result._return_value  # the job process fails; its trace goes to its log
        return result

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        jobs = self.submit(job_overrides, initial_job_idx)
        return [
            _outcome(job, overrides) for job, overrides in zip(jobs, job_overrides, strict=True)
        ]

    def submit(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, **resources
    ) -> list:
        """Submit the jobs as one array and return its submitit jobs without waiting for them;
        `resources` replace the launcher's own settings of the same names (where it has them)."""
        numbers = range(initial_job_idx, initial_job_idx + len(job_overrides))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Submitit '%s' sweep output dir : %s", self._EXECUTOR, sweep_dir)
        for number, overrides in zip(numbers, job_overrides, strict=True):
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
        params = {**self.params, **{k: v for k, v in resources.items() if k in self.params}}
        executor = submitit_executor(self._EXECUTOR, params, self.params["submitit_folder"])
        return executor.map_array(
            self,
            [list(overrides) for overrides in job_overrides],
            ["hydra.sweep.dir"] * len(numbers),
            list(numbers),
            [f"job_id_for_{number}" for number in numbers],
            [Singleton.get_state()] * len(numbers),
        )


def _outcome(job, overrides: Sequence[str]) -> JobReturn:
    """The job's result; a failed or vanished job as a FAILED JobReturn saying why."""
    why = failure(job)
    if why is None:
        return job.results()[0]
    return JobReturn(
        overrides=list(overrides), status=JobStatus.FAILED, _return_value=JobFailed(why)
    )


class PtmzSlurmLauncher(_Reporting, SlurmLauncher):
    pass


class PtmzLocalLauncher(_Reporting, LocalLauncher):
    pass


@dataclass
class PtmzSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.ptmz_launcher.PtmzSlurmLauncher"


@dataclass
class PtmzLocalConf(LocalQueueConf):
    _target_: str = "hydra_plugins.ptmz_launcher.PtmzLocalLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="ptmz_slurm", node=PtmzSlurmConf)
ConfigStore.instance().store(group="hydra/launcher", name="ptmz_local", node=PtmzLocalConf)
