"""What a run minimises and how a split is scored, per kind of zoo.

Every training step, Hessian and curve asks its objective for the mean loss of a batch,
`loss(model, inputs, targets)`, where `model` is any callable from inputs to outputs (a module,
or a module with other weights through `functional_call`). Taking the model rather than its
outputs lets a physics-informed loss differentiate the network with respect to its inputs.

`inputs(batch)` is what the network reads of a batch (all of it, but for a language model's
windows: all tokens but the last). `evaluate(model, loader)` scores a whole split: its mean
loss and the objective's metric, recorded as `<split>_loss` and `<split>_<metric>`.
`error(scores)` is the metric as an error (lower is better), which the curve and interpolation
tasks report along the path; None where an objective has none (a language model's paths are
measured in loss).

The convection zoo's loss is the usual PINN loss; larger beta makes it harder to minimise and,
past beta of about 10 to 20, training typically settles on a wrong, nearly flat solution: the
known failure mode of such PINNs (Krishnapriyan et al., 2021).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ptmz.data import DeviceLoader
from ptmz.data.convection import BOUNDARY, INITIAL, PERIOD, RESIDUAL, SOLUTION
from ptmz.errors import ConfigError

Model = Callable[[Tensor], Tensor]
Loss = Callable[[Model, Tensor, Tensor], Tensor]


def cross_entropy(model: Model, x: Tensor, y: Tensor) -> Tensor:
    """The classifiers' loss, stated as every loss here is: of a model on a batch."""
    return F.cross_entropy(model(x), y)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in eval mode over a whole (unaugmented) split."""
    model.eval()
    loss_sum = torch.zeros((), device=loader.labels.device)
    correct = torch.zeros((), device=loader.labels.device, dtype=torch.long)
    for x, y in loader:
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = len(loader.labels)
    return loss_sum.item() / n, correct.item() / n


class Objective(Protocol):
    metric: str
    # a batch's loss is the mean of its samples' losses, so the loss of a set of batches is
    # their size-weighted mean (what splitting the Hessian's samples into pieces relies on)
    sample_mean: bool

    def inputs(self, batch: Tensor) -> Tensor: ...

    def loss(self, model: Model, inputs: Tensor, targets: Tensor) -> Tensor: ...

    def evaluate(self, model: nn.Module, loader: DeviceLoader) -> dict[str, float | None]: ...

    def error(self, scores: dict[str, float | None]) -> float | None: ...


class Classification:
    """Cross-entropy; the metric is accuracy."""

    metric = "acc"
    sample_mean = True

    def inputs(self, batch: Tensor) -> Tensor:
        return batch

    loss = staticmethod(cross_entropy)

    def evaluate(self, model: nn.Module, loader: DeviceLoader) -> dict[str, float | None]:
        loss, acc = evaluate(model, loader)
        return {"loss": loss, "acc": acc}

    def error(self, scores: dict[str, float | None]) -> float | None:
        return 1 - scores["acc"]


CLASSIFICATION = Classification()


def exact_convection(x: Tensor, t: Tensor, beta: float) -> Tensor:
    """The solution of the convection problem (`ptmz.data.convection`): sin(x - beta t)."""
    return torch.sin(x - beta * t)


class ConvectionLoss:
    """The PINN loss at convection coefficient `beta`: the mean squared residual plus the mean
    squared initial and boundary misfits, each over the points of its kind in the batch (and,
    on test points, the mean squared error against the exact solution). The metric is the
    relative L2 error ||u - u*|| / ||u*|| over the test grid."""

    metric = "rel_l2"
    sample_mean = False  # a mean per kind of point

    def inputs(self, batch: Tensor) -> Tensor:
        return batch

    def __init__(self, beta: float) -> None:
        self.beta = beta

    def squared_errors(
        self, model: Callable[[Tensor], Tensor], points: Tensor, kinds: Tensor, graph: bool
    ) -> dict[int, Tensor]:
        """Per kind present in the batch, each point's squared error. `graph` keeps the graph
        of the residual's input derivatives, for a loss that is differentiated."""
        errors = {}
        residual = points[kinds == RESIDUAL]
        if len(residual):
            with torch.enable_grad():
                xt = residual.detach().requires_grad_(True)
                (du,) = torch.autograd.grad(model(xt).sum(), xt, create_graph=graph)
            errors[RESIDUAL] = (du[:, 1] + self.beta * du[:, 0]) ** 2
        initial = points[kinds == INITIAL]
        if len(initial):
            errors[INITIAL] = (model(initial)[:, 0] - torch.sin(initial[:, 0])) ** 2
        boundary = points[kinds == BOUNDARY]
        if len(boundary):
            shift = torch.tensor([PERIOD, 0.0], device=points.device)
            errors[BOUNDARY] = (model(boundary) - model(boundary + shift))[:, 0] ** 2
        solution = points[kinds == SOLUTION]
        if len(solution):
            u = exact_convection(solution[:, 0], solution[:, 1], self.beta)
            errors[SOLUTION] = (model(solution)[:, 0] - u) ** 2
        return errors

    def loss(self, model: Callable[[Tensor], Tensor], points: Tensor, kinds: Tensor) -> Tensor:
        errors = self.squared_errors(model, points, kinds, graph=True)
        return sum(e.mean() for e in errors.values())

    def evaluate(self, model: nn.Module, loader: DeviceLoader) -> dict[str, float | None]:
        model.eval()
        sums: dict[int, Tensor] = {}
        counts: dict[int, int] = {}
        norm = torch.zeros((), device=loader.labels.device)
        with torch.no_grad():
            for points, kinds in loader:
                for kind, e in self.squared_errors(model, points, kinds, graph=False).items():
                    sums[kind] = sums.get(kind, 0) + e.detach().sum()
                    counts[kind] = counts.get(kind, 0) + len(e)
                solution = points[kinds == SOLUTION]
                norm += (exact_convection(solution[:, 0], solution[:, 1], self.beta) ** 2).sum()
        loss = sum(sums[k].item() / counts[k] for k in sums)
        rel_l2 = math.sqrt(sums[SOLUTION].item() / norm.item()) if SOLUTION in sums else None
        return {"loss": loss, "rel_l2": rel_l2}

    def error(self, scores: dict[str, float | None]) -> float | None:
        return scores["rel_l2"]


class NextToken:
    """Next-token cross-entropy over every position of a window (inputs: its first T - 1
    tokens, targets: its last T - 1; the targets of a batch are unused); the metric is the
    perplexity exp(loss) per token."""

    metric = "ppl"
    sample_mean = True  # every window has the same number of positions

    def inputs(self, batch: Tensor) -> Tensor:
        return batch[:, :-1]

    def loss(self, model: Model, windows: Tensor, targets: Tensor) -> Tensor:
        logits = model(self.inputs(windows))
        return F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DeviceLoader) -> dict[str, float | None]:
        model.eval()
        loss_sum = torch.zeros((), device=loader.labels.device)
        tokens = 0
        for windows, _ in loader:
            logits = model(self.inputs(windows))
            targets = windows[:, 1:].flatten()
            loss_sum += F.cross_entropy(logits.flatten(0, 1), targets, reduction="sum")
            tokens += len(targets)
        loss = loss_sum.item() / tokens
        return {"loss": loss, "ppl": math.exp(min(loss, 700.0))}

    def error(self, scores: dict[str, float | None]) -> float | None:
        return None


def objective_for(dataset: str, config: dict[str, Any]) -> Objective:
    """The objective of runs on `dataset`, whose (run) config supplies its parameters."""
    if dataset == "text":
        return NextToken()
    if dataset != "convection":
        return CLASSIFICATION
    if config.get("beta") is None:
        raise ConfigError("beta", None, "the convection coefficient, a number >= 0")
    return ConvectionLoss(config["beta"])


def classification_only(objective: Objective, task: str) -> None:
    """Refuse a task whose measurements are defined for classifiers only."""
    if not isinstance(objective, Classification):
        raise ConfigError(
            "task",
            task,
            f"a task defined for this zoo (its metric is {objective.metric}, not accuracy): "
            "any but finetune",
        )
