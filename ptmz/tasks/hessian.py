"""task=hessian: top eigenvalue(s) and trace of the loss Hessian of every run (one file per
run and epoch), on fixed unaugmented train and test samples."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from ptmz.landscape.hessian import hessian_metrics
from ptmz.tasks.population import Workspace, run_units, shard
from ptmz.zoo.population import Run
from ptmz.zoo.results import run_result


def hessian(cfg: DictConfig) -> dict[str, int]:
    ws, t = Workspace(cfg), cfg.task
    runs = shard(ws.population.runs, lambda run: run.name, cfg)

    def compute(run: Run) -> dict:
        epoch = run.resolve_epoch(cfg.epoch)
        model = run.load_model(epoch).to(ws.device)
        splits = {"train": ws.train_split(run), "test": ws.data.test}
        out = {}
        for split in t.splits:
            batches = list(ws.loader(splits[split], t.batch_size, t.samples))
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
            ).to_dict()
        return out

    def inputs(run: Run) -> dict:
        return {
            "run": run.name,
            "epoch": run.resolve_epoch(cfg.epoch),
            "settings": OmegaConf.to_container(t),
        }

    return run_units(
        runs,
        lambda r: run_result(r, t.result, r.resolve_epoch(cfg.epoch)),
        inputs,
        compute,
        cfg.overwrite,
    )
