"""task=average_epochs and task=prune (per run), task=ensemble (per grid point)."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ptmz.averaging import average_states, ensemble_metrics, magnitude_prune
from ptmz.errors import ConfigError
from ptmz.tasks.pairs import grid_point_task
from ptmz.tasks.population import Workspace, per_run_task, run_units, shard
from ptmz.train.loop import evaluate
from ptmz.weights import recalibrate_bn
from ptmz.zoo.population import Run
from ptmz.zoo.results import run_result


def averaged_epochs(run: Run, epochs: list[int] | None, last: int) -> list[int]:
    """The epochs to average: those named (each must be checkpointed), or the last `last`
    checkpoints of the run."""
    if epochs:
        return [run.resolve_epoch(e) for e in epochs]
    if last < 1:
        raise ConfigError("task.last", last, "an integer >= 1")
    return run.checkpoint_epochs[-last:]


def measure(ws: Workspace, model: torch.nn.Module, run: Run) -> dict[str, float]:
    """Train (the run's own training data) and test loss and accuracy, eval mode."""
    out = {}
    for split, data in (("train", ws.train_split(run)), ("test", ws.data.test)):
        out[f"{split}_loss"], out[f"{split}_acc"] = evaluate(model, ws.loader(data, 512))
    return out


def average_epochs(cfg: DictConfig) -> dict[str, int]:
    ws, t = Workspace(cfg), cfg.task
    runs = shard(ws.population.runs, lambda run: run.name, cfg)

    def compute(run: Run) -> dict[str, Any]:
        epochs = averaged_epochs(run, t.epochs, t.last)
        final = measure(ws, run.load_model(epochs[-1]).to(ws.device), run)
        averaged = run.load_model(epochs[-1])
        averaged.load_state_dict(average_states([run.state_dict(e) for e in epochs]))
        averaged = recalibrate_bn(averaged.to(ws.device), ws.loader(ws.train_split(run), 512))
        metrics = measure(ws, averaged, run)
        deltas = {f"delta_{k}": metrics[k] - final[k] for k in metrics}
        return {"averaged": metrics, "final": final, **deltas}

    def inputs(run: Run) -> dict[str, Any]:
        return {
            "run": run.name,
            "epochs": averaged_epochs(run, t.epochs, t.last),
            "settings": OmegaConf.to_container(t),
        }

    return run_units(
        runs,
        lambda r: run_result(r, "average_epochs", averaged_epochs(r, t.epochs, t.last)[-1]),
        inputs,
        compute,
        cfg.overwrite,
    )


def ensemble(cfg: DictConfig) -> dict[str, int]:
    def compare(ws: Workspace, runs: list[Run], epoch: int) -> dict[str, Any]:
        models = [r.load_model(epoch).to(ws.device) for r in runs]
        return ensemble_metrics(models, ws.loader(ws.data.test, 512))

    return grid_point_task(cfg, compare)


def prune(cfg: DictConfig) -> dict[str, int]:
    ws = Workspace(cfg)

    def compute(run: Run, epoch: int) -> dict[str, Any]:
        state, model = run.state_dict(epoch), run.load_model(epoch).to(ws.device)
        out = {"unpruned": measure(ws, model, run), "sparsity": {}}
        for sparsity in cfg.task.sparsities:
            model.load_state_dict(magnitude_prune(state, sparsity))
            recalibrate_bn(model, ws.loader(ws.train_split(run), 512))
            out["sparsity"][str(sparsity)] = measure(ws, model, run)
        return out

    return per_run_task(cfg, ws, "prune", compute)
