"""task=average_epochs, finetune and prune (per run); average_seeds and ensemble (per grid
point)."""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ptmz.averaging import (
    align,
    average_states,
    ensemble_metrics,
    finetune,
    fit_head,
    magnitude_prune,
    prunable,
    wiseft_curve,
    wiseft_summary,
)
from ptmz.averaging.align import METHODS
from ptmz.data import DeviceLoader, ImageDataset, load_dataset
from ptmz.data.datasets import INPUT_SHAPES
from ptmz.errors import ConfigError, choose
from ptmz.objectives import classification_only
from ptmz.tasks.pairs import grid_point_task
from ptmz.tasks.population import (
    Workspace,
    mean_over,
    per_run_task,
    result_name,
    run_units,
    shard,
    training_augment,
)
from ptmz.train import Recipe
from ptmz.weights import recalibrate_bn
from ptmz.zoo.population import Run
from ptmz.zoo.results import run_result


def averaged_epochs(run: Run, epochs: list[int] | None, last: int) -> list[int]:
    """The epochs to average, in order: those named (each must be checkpointed), or the last
    `last` checkpoints up to the run's default epoch (its last; a published zoo's landscape
    epoch, so 111-115 for CIFAR ResNet-18 as published). The latest is the final model they
    are compared with."""
    if epochs:
        return sorted({run.resolve_epoch(e) for e in epochs})
    if last < 1:
        raise ConfigError("task.last", last, "an integer >= 1")
    final = run.resolve_epoch(None)
    return [e for e in run.checkpoint_epochs if e <= final][-last:]


def measure(ws: Workspace, model: torch.nn.Module, run: Run) -> dict[str, float]:
    """Train (the run's own training data) and test loss and the zoo's metric (accuracy for
    classifiers), eval mode; a metric a split does not define is left out."""
    out, objective = {}, ws.objective(run)
    for split, data in (("train", ws.train_split(run)), ("test", ws.data.test)):
        scores = objective.evaluate(model, ws.loader(data, 512))
        out.update({f"{split}_{k}": v for k, v in scores.items() if v is not None})
    return out


def measure_recalibrated(ws: Workspace, model: torch.nn.Module, run: Run) -> dict[str, float]:
    """`measure` once the model's BN statistics are recomputed (in place) on the run's training
    data. Averaged and pruned models need it; the models they are compared with get it too, so
    a delta is the averaging's or pruning's, not the recalibration's."""
    recalibrate_bn(model, ws.loader(ws.train_split(run), 512))
    return measure(ws, model, run)


def average_epochs(cfg: DictConfig) -> dict[str, int]:
    if cfg.epoch is not None:
        allowed = "null for task=average_epochs: name its checkpoints with task.epochs=[...]"
        raise ConfigError("epoch", cfg.epoch, allowed)
    ws, t, name = Workspace(cfg), cfg.task, result_name(cfg)
    runs = shard(ws.population.runs, lambda run: run.name, cfg)

    def compute(run: Run) -> dict[str, Any]:
        epochs = averaged_epochs(run, t.epochs, t.last)
        final = measure_recalibrated(ws, run.load_model(epochs[-1]).to(ws.device), run)
        averaged = run.load_model(epochs[-1])
        averaged.load_state_dict(average_states([run.state_dict(e) for e in epochs]))
        metrics = measure_recalibrated(ws, averaged.to(ws.device), run)
        deltas = {f"delta_{k}": metrics[k] - final[k] for k in metrics}
        return {"averaged": metrics, "final": final, **deltas}

    def inputs(run: Run) -> dict[str, Any]:
        return {
            "run": run.name,
            "epochs": averaged_epochs(run, t.epochs, t.last),
            "settings": OmegaConf.to_container(t),
            **ws.data_inputs,
        }

    return run_units(
        runs,
        lambda r: r.name,
        lambda r: run_result(r, name, averaged_epochs(r, t.epochs, t.last)[-1]),
        inputs,
        compute,
        cfg.overwrite,
        damaged_runs=ws.population.damaged,
    )


def ensemble(cfg: DictConfig) -> dict[str, int]:
    def compare(ws: Workspace, runs: list[Run], epoch: int) -> dict[str, Any]:
        models = [r.load_model(epoch).to(ws.device) for r in runs]
        return ensemble_metrics(models, ws.loader(ws.data.test, 512), ws.objective(runs[0]))

    return grid_point_task(cfg, compare)


def prune(cfg: DictConfig) -> dict[str, int]:
    ws = Workspace(cfg)

    def compute(run: Run, epoch: int) -> dict[str, Any]:
        state, model = run.state_dict(epoch), run.load_model(epoch).to(ws.device)
        keys, out = prunable(model), {"unpruned": measure(ws, model, run), "sparsity": {}}
        out["unpruned_recalibrated"] = measure_recalibrated(ws, model, run)
        for sparsity in cfg.task.sparsities:
            model.load_state_dict(magnitude_prune(state, sparsity, keys))
            out["sparsity"][str(sparsity)] = measure_recalibrated(ws, model, run)
        return out

    return per_run_task(cfg, ws, compute)


def average_seeds(cfg: DictConfig) -> dict[str, int]:
    t = cfg.task
    if t.method not in METHODS:
        raise ConfigError("task.method", t.method, " or ".join(METHODS))

    def compare(ws: Workspace, runs: list[Run], epoch: int) -> dict[str, Any]:
        models = [r.load_model(epoch).to(ws.device) for r in runs]
        states = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
        individual = mean_over(
            [measure_recalibrated(ws, m, r) for m, r in zip(models, runs, strict=True)]
        )
        model = copy.deepcopy(models[0])  # loaded with the averages; `states` stay untouched
        train = ws.train_split(runs[0])  # the seeds of a grid point share their training data
        inputs = [x for x, _ in ws.loader(train, 256, t.samples)]
        aligned = [states[0]] + [
            align(model, states[0], other, inputs, t.method, t.seed) for other in states[1:]
        ]
        out: dict[str, Any] = {"individual_mean": individual}
        for name, members in (("unaligned", states), ("aligned", aligned)):
            model.load_state_dict(average_states(members))
            metrics = measure_recalibrated(ws, model, runs[0])
            out[name] = {**metrics, **{f"delta_{k}": metrics[k] - individual[k] for k in metrics}}
        return out

    return grid_point_task(cfg, compare)


def finetune_run(cfg: DictConfig) -> dict[str, int]:
    """task=finetune: fine-tune each run on the target dataset, then the WiSE-FT curve
    (classifiers only: the target gets a classifier head)."""
    ws, t = Workspace(cfg), cfg.task
    if ws.population.runs:
        classification_only(ws.objective(ws.population.runs[0]), "finetune")
    alphas = sorted(float(a) for a in t.alphas)
    if not {0.0, 1.0} <= set(alphas) or not 0 <= alphas[0] <= alphas[-1] <= 1:
        raise ConfigError(
            "task.alphas", t.alphas, "mixing coefficients in [0, 1] including 0 and 1"
        )
    recipe = Recipe(optimizer="sgd", schedule="cosine", weight_decay=t.weight_decay)
    target_name = t.target or ws.population.dataset
    channels, size = INPUT_SHAPES[ws.population.dataset]
    fixed_size = any(run.config.get("model") == "vit" for run in ws.population.runs)
    target_channels, target_size = choose("task.target", target_name, INPUT_SHAPES)
    if target_channels != channels or (fixed_size and target_size != size):
        pixels = f" of {size}x{size} pixels (a ViT's position embedding)" if fixed_size else ""
        allowed = f"a dataset of {channels}-channel images{pixels}, as {ws.population.dataset}"
        raise ConfigError("task.target", t.target, allowed)

    @functools.cache
    def target_data() -> ImageDataset:  # loaded once, and only if a run needs computing
        if target_name == ws.population.dataset:
            return ws.data
        return load_dataset(target_name, cfg.data_root, cfg.dataset.download)

    def compute(run: Run, epoch: int) -> dict[str, Any]:
        target = target_data()
        model = run.load_model(epoch).to(ws.device)

        def loader(split, batch_size, **shuffle) -> DeviceLoader:
            return DeviceLoader(split, batch_size, target.mean, target.std, ws.device, **shuffle)

        head = fit_head(model, target.num_classes)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        generator = torch.Generator().manual_seed(t.seed)
        train = loader(
            target.train, t.batch_size, augment=training_augment(run), generator=generator
        )
        losses = finetune(model, train, t.epochs, t.lr, recipe)
        finetuned = model.state_dict()
        start.update({k: finetuned[k] for k in head})  # a new head has no zoo version to mix
        bn, test = loader(target.train, 512), loader(target.test, 512)
        curve = wiseft_curve(model, start, finetuned, alphas, bn, test)
        return {
            "target": target.name,
            "new_head": bool(head),
            "train_loss_per_epoch": losses,
            "curve": curve,
            **wiseft_summary(curve),
        }

    return per_run_task(cfg, ws, compute)
