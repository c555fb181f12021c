"""Pre-flight: before a sweep launches anything, every job's config is checked as its job would
check it (the run spec, the task's settings, out_dir, the population) and every dataset the
sweep needs is made present in its data_root, downloaded there once from the submitting machine
where allowed. Problems are grouped: one line per distinct problem, with how many jobs it stops
and one of them as an example, so a 72-job sweep over a missing dataset says so once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from ptmz.errors import PtmzError


@dataclass
class Problem:
    message: str
    jobs: list[Sequence[str]] = field(default_factory=list)

    def line(self) -> str:
        count = f"{len(self.jobs)} job" + ("" if len(self.jobs) == 1 else "s")
        return f"{self.message} [{count}, e.g. {' '.join(self.jobs[0]) or 'the defaults'}]"


def job_check(
    cfg: DictConfig, overrides: Sequence[str] = ()
) -> tuple[tuple[str, str, bool] | None, list]:
    """Check one job's config (composed from `overrides`) the way its task will: the (dataset,
    data_root, download) it needs (or None) and the run specs it trains. Raises the PtmzError
    the job would raise."""
    from ptmz.tasks import TASKS
    from ptmz.train.run import check_writable

    task = cfg.task.name
    if task not in TASKS:
        raise PtmzError(f"task={task} is not allowed: choose one of {', '.join(sorted(TASKS))}")
    check_writable(cfg.out_dir)
    if task == "train":
        from ptmz.tasks.train import packed_configs, spec_from_config

        specs = [spec_from_config(c) for c in packed_configs(cfg)]
        return (specs[0].dataset, cfg.data_root, cfg.dataset.download), specs
    if cfg.get("population") is not None:
        from ptmz.tasks.population import Workspace, result_name, shard

        if "result" in cfg.task:
            result_name(cfg)
        shard([], str, cfg)
        # a published population may need the dataset its job names (dataset=cifar10)
        named = [o.split("=", 1)[1] for o in overrides if o.startswith("dataset=")]
        population = Workspace(cfg, named[-1] if named else None).population
        return (population.dataset, cfg.data_root, cfg.dataset.download), []
    return None, []


def preflight(
    jobs: Sequence[Sequence[str]],
    compose: Callable[[Sequence[str]], DictConfig],
    load: Callable[[str, str, bool], Any] | None = None,
) -> list[Problem]:
    """The problems that stop any of `jobs` (override lists; `compose` makes each one's config),
    grouped by message; an empty list when every job can run. `load(dataset, data_root,
    download)` makes a dataset present (by default `load_dataset`, downloading it when allowed
    and missing) and is called once per dataset and folder."""
    if load is None:
        from ptmz.data import load_dataset as load
    from ptmz.train.run import training_subset

    problems: dict[str, Problem] = {}
    needs: dict[tuple[str, str, bool], list[tuple[Sequence[str], list]]] = {}

    def add(message: str, job: Sequence[str]) -> None:
        problems.setdefault(message, Problem(message)).jobs.append(job)

    for job in jobs:
        try:
            need, specs = job_check(compose(job), job)
        except PtmzError as error:
            add(str(error), job)
            continue
        if need is not None:
            needs.setdefault(need, []).append((job, specs))
    for (dataset, data_root, download), needing in needs.items():
        try:
            data = load(dataset, data_root, download)
        except PtmzError as error:
            for job, _ in needing:
                add(str(error), job)
            continue
        for job, specs in needing:  # what a run checks once it holds its data
            try:
                for spec in specs:
                    training_subset(spec, data)
            except PtmzError as error:
                add(str(error), job)
    return list(problems.values())
