"""task=hessian: top eigenvalue(s) and trace of the loss Hessian of every run (one file per
run and epoch), on fixed unaugmented train and test samples; the loss is the zoo's objective.
task=hessian_published: the published zoo's batches instead (`Workspace.batches`)."""

from __future__ import annotations

from omegaconf import DictConfig

from ptmz.errors import ConfigError, choose
from ptmz.landscape.hessian import hessian_metrics
from ptmz.objectives import Classification
from ptmz.tasks.population import SAMPLINGS, Workspace, per_run_task
from ptmz.zoo.population import Run

SPLITS = ("train", "test")


def hessian(cfg: DictConfig) -> dict[str, int]:
    t = cfg.task
    if not t.splits or not set(t.splits) <= set(SPLITS):
        raise ConfigError("task.splits", list(t.splits), f"a list of {', '.join(SPLITS)}")
    sampling = t.get("sampling", "fixed")  # the key is set by hessian_published only
    choose("task.sampling", sampling, dict.fromkeys(SAMPLINGS))
    ws = Workspace(cfg)
    objective = ws.objective(ws.population.runs[0])  # one dataset, so one objective
    if not t.cache_graph and not isinstance(objective, Classification):
        # batch by batch, the mean loss is a size-weighted sum of batch means: true of
        # cross-entropy, not of the PINN's sum of per-kind means
        raise ConfigError("task.cache_graph", False, f"true for dataset={ws.population.dataset}")

    def compute(run: Run, epoch: int) -> dict:
        objective = ws.objective(run)
        model = run.load_model(epoch).to(ws.device)
        out = {}
        for split in t.splits:
            batches = ws.batches(run, split, t.batch_size, t.samples, sampling, t.seed)
            out[split] = hessian_metrics(
                model,
                batches,
                top_k=t.top_k,
                max_iter=t.max_iter,
                tol=t.tol,
                trace_probes=t.trace_probes,
                density=t.density,
                seed=t.seed,
                cache_graph=t.cache_graph,
                loss_fn=objective.loss,
            ).to_dict()
        return out

    return per_run_task(cfg, ws, compute)
