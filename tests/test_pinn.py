"""The convection PINN zoo: its loss against hand-derived residuals, the known failure mode at
large beta, the landscape tasks on it, and the errors that keep it out of classifier tasks."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from ptmz.data import Augment, DeviceLoader, load_dataset
from ptmz.data.convection import BOUNDARY, INITIAL, RESIDUAL, SOLUTION
from ptmz.errors import ConfigError
from ptmz.objectives import ConvectionLoss
from ptmz.tasks import run_task
from ptmz.train import Recipe, RunSpec, train_together
from ptmz.zoo import RunDir

from conftest import landscape_tasks, small_zoo


class Field(nn.Module):
    """A known u(x, t) as a network: inputs (N, 2) -> (N, 1)."""

    def __init__(self, u) -> None:
        super().__init__()
        self.u = u

    def forward(self, xt: torch.Tensor) -> torch.Tensor:
        return self.u(xt[:, 0], xt[:, 1])[:, None]


def points(kind: int, xt: list[tuple[float, float]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(xt, dtype=torch.float64), torch.full((len(xt),), kind)


def test_squared_errors_match_hand_derivatives():
    beta = 3.0
    loss = ConvectionLoss(beta)
    # u = sin(x) + t^2: u_t = 2t, u_x = cos(x); u(x, 0) = sin(x); u(0, t) - u(2 pi, t) = 0
    field = Field(lambda x, t: torch.sin(x) + t**2)
    xt = [(0.3, 0.2), (1.7, 0.9), (4.0, 0.5)]
    for kind, expected in [
        (RESIDUAL, [(2 * t + beta * math.cos(x)) ** 2 for x, t in xt]),
        (INITIAL, [t**4 for _, t in xt]),  # compared with sin(x) at the point's own t
        (BOUNDARY, [0.0] * 3),
        (SOLUTION, [(math.sin(x) + t**2 - math.sin(x - beta * t)) ** 2 for x, t in xt]),
    ]:
        errors = loss.squared_errors(field, *points(kind, xt), graph=False)
        torch.testing.assert_close(errors[kind], torch.tensor(expected, dtype=torch.float64))


def test_the_exact_solution_scores_zero_and_zero_scores_one():
    data = load_dataset("convection", download=False)
    beta = 7.0
    loss = ConvectionLoss(beta)
    exact = Field(lambda x, t: torch.sin(x - beta * t))
    zero = Field(lambda x, t: 0 * x)
    cpu = torch.device("cpu")
    train, test = (DeviceLoader(s, 700, None, None, cpu) for s in (data.train, data.test))
    assert loss.evaluate(exact, train)["loss"] < 1e-10
    assert loss.evaluate(exact, test) == pytest.approx({"loss": 0.0, "rel_l2": 0.0}, abs=1e-6)
    assert loss.evaluate(zero, test)["rel_l2"] == pytest.approx(1.0)
    initial = data.train.images[data.train.labels == INITIAL]
    assert loss.evaluate(zero, train)["loss"] == pytest.approx(
        float((torch.sin(initial[:, 0]) ** 2).mean()), rel=1e-5
    )


def test_pinn_fails_at_large_beta_and_takes_the_landscape_tasks(tmp_path, config):
    zoo = small_zoo(tmp_path, "convection_pinn", "beta=1,30", "lr=1e-3", "seed=0,1", "epochs=200")
    final = {}
    for run in zoo.glob("beta*"):
        record = RunDir(run).records[-1]
        final.setdefault(run.name.split("_")[0], []).append(record["test_rel_l2"])
    assert max(final["beta1"]) < 0.1  # solved
    assert min(final["beta30"]) > 0.5  # the failure mode: a wrong solution
    landscape_tasks(config, zoo, runs=4, grid_points=2)
    curve = json.loads(next(zoo.glob("landscape/**/curve_epoch_0200.json")).read_text())
    assert "mc_train_loss" in curve["mean"] and "mc_test_error" in curve["mean"]
    assert "mc_train_error" not in curve["mean"]  # no error without a solution to compare
    assert run_task(config("task=plot", f"population={zoo}"))["files"]
    # weight averaging measures the zoo's own metric; the MLP's hidden units align
    seeds = run_task(config("task=average_seeds", f"population={zoo}", "task.samples=256"))
    assert seeds["computed"] == 2
    averaged = json.loads(next(zoo.glob("landscape/**/average_seeds_epoch_0200.json")).read_text())
    assert {"test_rel_l2", "delta_test_rel_l2"} <= set(averaged["aligned"])
    ensemble = run_task(config("task=ensemble", f"population={zoo}"))  # averaged fields
    assert ensemble["computed"] == 2
    with pytest.raises(ConfigError, match="task='finetune'.*rel_l2, not accuracy"):
        run_task(config("task=finetune", f"population={zoo}"))


POINTS = dict(dataset="convection", model="mlp", recipe=Recipe(augment=Augment(0, False, 0)))


def test_beta_belongs_to_the_convection_zoo_only():
    with pytest.raises(ConfigError, match=r"beta=None .*a number >= 0 for dataset=convection"):
        RunSpec(**POINTS, width=50)
    with pytest.raises(ConfigError, match=r"beta=2.0 .*null \(convection only\)"):
        RunSpec(beta=2.0)
    with pytest.raises(ConfigError, match=r"beta='x' .*a number >= 0"):
        RunSpec(**POINTS, beta="x")
    for key in ("precision", "eval_precision"):
        with pytest.raises(ConfigError, match=rf"{key}='bf16' .*fp32 for dataset=convection"):
            RunSpec(**POINTS, beta=1.0, **{key: "bf16"})
    assert RunSpec(**POINTS, beta=5).digest == (RunSpec(**POINTS, beta=5.0).digest)
    assert "beta" not in RunSpec().identity  # image runs keep their ids
    specs = [RunSpec(**POINTS, beta=1.0, seed=s) for s in (0, 1)]
    with pytest.raises(ConfigError, match="seeds_together.*classifiers only"):
        train_together(specs)
