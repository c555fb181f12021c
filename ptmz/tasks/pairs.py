"""The grid-point tasks: cka, curve and interpolate compare the seeds of one grid point (one
file per grid point and epoch). A grid point with one seed is recorded as not applicable."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ptmz.errors import ConfigError
from ptmz.landscape.cka import mean_pairwise_cka, min_inputs
from ptmz.landscape.paths import (
    CurveSettings,
    PathData,
    curve_metrics,
    interpolation_metrics,
    path_ts,
)
from ptmz.tasks.population import (
    Workspace,
    common_epoch,
    mean_over,
    result_name,
    run_units,
    seed_pairs,
    shard,
    training_augment,
)
from ptmz.zoo.population import Run
from ptmz.zoo.results import grid_point_result

Compare = Callable[[Workspace, list[Run], int], dict[str, Any]]


def grid_point_task(
    cfg: DictConfig,
    compare: Compare,
    definitions: dict[str, str] | None = None,
    headline: Sequence[str] = (),
) -> dict[str, int]:
    """`compare` on this shard's grid points; `definitions` (of the metrics, where one changed)
    are part of each result's inputs, so a result of another definition is recomputed."""
    ws, result = Workspace(cfg), result_name(cfg)
    points = shard(list(ws.population.grid_points().items()), lambda point: point[0], cfg)

    def target(point: tuple[str, list[Run]]) -> Path:
        name, runs = point
        return grid_point_result(ws.population, name, result, common_epoch(runs, cfg.epoch))

    def inputs(point: tuple[str, list[Run]]) -> dict[str, Any]:
        name, runs = point
        return {
            "grid_point": name,
            "epoch": common_epoch(runs, cfg.epoch),
            "runs": [r.name for r in runs],
            "settings": OmegaConf.to_container(cfg.task),
            **ws.data_inputs,
            **(definitions or {}),
        }

    def compute(point: tuple[str, list[Run]]) -> dict[str, Any]:
        _, runs = point
        if len(runs) < 2:
            return {"applicable": False, "reason": "the grid point has a single seed"}
        return {"applicable": True, **compare(ws, runs, common_epoch(runs, cfg.epoch))}

    return run_units(
        points, _point_name, target, inputs, compute, cfg.overwrite, headline, ws.population.damaged
    )


def _point_name(point: tuple[str, list[Run]]) -> str:
    return point[0]


def _path_data(ws: Workspace, run: Run, t: DictConfig) -> PathData:
    train = ws.train_split(run)
    return PathData(
        bn=ws.loader(train, t.batch_size, t.bn_samples),
        train=ws.loader(train, t.batch_size, t.eval_samples),
        test=ws.loader(ws.data.test, t.batch_size, t.eval_samples),
        objective=ws.objective(run),
    )


def _each_pair(
    ws: Workspace,
    runs: list[Run],
    epoch: int,
    t: DictConfig,
    measure: Callable[[Run, Run, PathData], dict],
) -> dict[str, Any]:
    results = {}
    for a, b in seed_pairs(runs, t.pairs):
        results[f"{a.name}|{b.name}"] = measure(a, b, _path_data(ws, a, t))
    return {"pairs": results, "mean": mean_over(list(results.values()))}


def cka(cfg: DictConfig) -> dict[str, int]:
    t = cfg.task

    # keys set by cka_published only, so results of task=cka keep their inputs
    sampling, per_batch = t.get("sampling", "fixed"), t.get("per_batch", False)
    if not isinstance(per_batch, bool):
        raise ConfigError("task.per_batch", per_batch, "true or false")

    def compare(ws: Workspace, runs: list[Run], epoch: int) -> dict[str, Any]:
        tested = ws.batches(runs[0], "test", t.batch_size, t.samples, sampling, seed=0)
        smallest = min(len(y) for _, y in tested)
        if smallest < min_inputs(t.unbiased):
            raise ConfigError(
                "task.batch_size",
                t.batch_size,
                f"batches of at least {min_inputs(t.unbiased)} of the "
                f"{sum(len(y) for _, y in tested)} test inputs (task.samples={t.samples}, "
                f"task.unbiased={t.unbiased}); the last one holds {smallest}",
            )
        models = [r.load_model(epoch).to(ws.device) for r in runs]
        objective = ws.objective(runs[0])
        batches = [objective.inputs(x) for x, _ in tested]
        layers = list(t.layers) or None
        return mean_pairwise_cka(
            models, batches, layers=layers, unbiased=t.unbiased, per_batch=per_batch
        )

    return grid_point_task(cfg, compare, headline=["mean.logits"])


def interpolate(cfg: DictConfig) -> dict[str, int]:
    t = cfg.task
    path_ts(t.points, "task.points")  # refused before any model loads

    def compare(ws: Workspace, runs: list[Run], epoch: int) -> dict[str, Any]:
        def measure(a: Run, b: Run, data: PathData) -> dict:
            model = a.load_model(epoch).to(ws.device)
            return interpolation_metrics(
                model, a.state_dict(epoch), b.state_dict(epoch), data, points=t.points
            )

        return _each_pair(ws, runs, epoch, t, measure)

    barrier = {"barrier": "max_t E(t) - ((1 - t) E(0) + t E(1))"}
    return grid_point_task(cfg, compare, barrier, ["mean.barrier_train_error"])


def curve(cfg: DictConfig) -> dict[str, int]:
    t = cfg.task
    settings = CurveSettings(
        epochs=t.epochs, lr=t.lr, momentum=t.momentum, l2=t.l2, points=t.points, seed=t.seed
    )
    path_ts(t.points, "task.points")  # refused before any curve is fitted

    def compare(ws: Workspace, runs: list[Run], epoch: int) -> dict[str, Any]:
        def measure(a: Run, b: Run, data: PathData) -> dict:
            model = a.load_model(epoch).to(ws.device)
            augment = training_augment(a)
            train = ws.loader(ws.train_split(a), t.batch_size, augment=augment, seed=t.seed)
            return curve_metrics(
                model,
                a.state_dict(epoch),
                b.state_dict(epoch),
                train,
                data,
                settings,
                progress=cfg.progress,
            )

        return _each_pair(ws, runs, epoch, t, measure)

    return grid_point_task(cfg, compare, headline=["mean.mc_train_error", "mean.mc_train_loss"])
