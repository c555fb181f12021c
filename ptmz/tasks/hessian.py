"""task=hessian: top eigenvalue(s) and trace of the loss Hessian of every run (one file per
run and epoch), on fixed unaugmented train and test samples; the loss is the zoo's objective.
task=hessian_published: the published zoo's batches instead (`Workspace.batches`)."""

from __future__ import annotations

import logging
import math
from dataclasses import fields

from omegaconf import DictConfig

from ptmz.errors import ConfigError, choose
from ptmz.landscape.hessian import HessianSettings, default_cache_bytes, hessian_metrics
from ptmz.progress import Ticker
from ptmz.tasks.population import SAMPLINGS, Workspace, per_run_task
from ptmz.zoo.population import Run

log = logging.getLogger(__name__)
SPLITS = ("train", "test")


def cache_bytes(value: float | None, ws: Workspace) -> float:
    """`task.max_cache_gb` in bytes (null: `default_cache_bytes`). The PINN's loss is not a
    mean over samples, so its graph cannot be split into batches: always cached whole."""
    if not ws.objective(ws.population.runs[0]).sample_mean:
        if value is not None:
            reason = "its loss is not a mean over samples: the graph is cached whole"
            raise ConfigError("task.max_cache_gb", value, f"null for this dataset ({reason})")
        return math.inf
    if value is None:
        return default_cache_bytes(ws.device)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError("task.max_cache_gb", value, "a number of GiB >= 0, or null (automatic)")
    return value * 2**30


def hessian(cfg: DictConfig) -> dict[str, int]:
    t = cfg.task
    if not t.splits or not set(t.splits) <= set(SPLITS):
        raise ConfigError("task.splits", list(t.splits), f"a list of {', '.join(SPLITS)}")
    sampling = t.get("sampling", "fixed")  # the key is set by hessian_published only
    choose("task.sampling", sampling, dict.fromkeys(SAMPLINGS))
    try:
        settings = HessianSettings(**{f.name: t[f.name] for f in fields(HessianSettings)})
    except ConfigError as error:  # named as the user set it
        raise ConfigError(f"task.{error.key}", error.value, error.allowed) from None
    ws = Workspace(cfg)
    max_cache_bytes = cache_bytes(t.max_cache_gb, ws)

    def compute(run: Run, epoch: int) -> dict:
        objective = ws.objective(run)
        model = run.load_model(epoch).to(ws.device)
        out = {}
        for split in t.splits:
            batches = ws.batches(run, split, t.batch_size, t.samples, sampling, t.seed)
            ticker = Ticker(f"{run.name} {split}", cfg.progress)
            try:
                result = hessian_metrics(
                    model,
                    batches,
                    settings,
                    loss_fn=objective.loss,
                    max_cache_bytes=max_cache_bytes,
                    progress=ticker,
                )
            finally:
                ticker.close()
            log.info(
                "%s %s: top eigenvalue %.5g, trace %.5g ± %.1f%% (%d probes, %d HVPs)",
                run.name,
                split,
                result.eigenvalues[0],
                result.trace,
                100 * result.trace_stderr / abs(result.trace) if result.trace else math.inf,
                result.trace_probes,
                result.hvps,
            )
            out[split] = result.to_dict()
        return out

    headline = [f"{split}.{key}" for split in t.splits for key in ("top_eigenvalue", "trace")]
    return per_run_task(cfg, ws, compute, headline)
