"""Fine-tuning a zoo model on a target dataset, and WiSE-FT: the straight line in weight space
between the zoo model and its fine-tuned version, evaluated at several mixing coefficients."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ptmz.data import DeviceLoader
from ptmz.objectives import evaluate
from ptmz.train.loop import build_optimizer, train_epoch
from ptmz.train.spec import Recipe
from ptmz.weights import State, lerp, recalibrate_bn


def fit_head(model: nn.Module, num_classes: int) -> list[str]:
    """Make `model`'s last Linear layer output `num_classes`: kept when it already does, else
    replaced by a new one initialised as the zoo's were (kaiming-uniform weight, bias 0.01).
    Returns the state-dict keys of a new head (empty when kept)."""
    name, head = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    if head.out_features == num_classes:
        return []
    new = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    nn.init.kaiming_uniform_(new.weight)
    if new.bias is not None:
        nn.init.constant_(new.bias, 0.01)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, new.to(head.weight.device))
    return [f"{name}.{k}" for k, _ in new.named_parameters()]


def finetune(
    model: nn.Module, loader: DeviceLoader, epochs: int, lr: float, recipe: Recipe
) -> list[float]:
    """Train `model` in place on `loader` with the recipe's optimizer and schedule; returns
    the mean training loss of each epoch."""
    optimizer, schedule = build_optimizer(model.parameters(), recipe, lr, epochs, len(loader))
    return [train_epoch(model, loader, optimizer, schedule) for _ in range(epochs)]


def wiseft_curve(
    model: nn.Module,
    zoo: State,
    finetuned: State,
    alphas: Sequence[float],
    bn: DeviceLoader,
    test: DeviceLoader,
) -> list[dict[str, float]]:
    """Test loss and accuracy of (1 - alpha) zoo + alpha finetuned for each alpha, with BN
    statistics recomputed on `bn` at every point (alpha = 1 is the fine-tuned model)."""
    # copies: either state may be `model`'s own live tensors, which loading overwrites
    zoo, finetuned = ({k: v.detach().clone() for k, v in s.items()} for s in (zoo, finetuned))
    curve = []
    for alpha in alphas:
        model.load_state_dict(lerp(zoo, finetuned, alpha))
        recalibrate_bn(model, bn)
        loss, acc = evaluate(model, test)
        curve.append({"alpha": float(alpha), "test_loss": loss, "test_acc": acc})
    return curve


def wiseft_summary(curve: list[dict[str, float]]) -> dict[str, float]:
    """The zoo model (alpha = 0), the fine-tuned one (alpha = 1), the best point of the curve
    and its gain over the fine-tuned model: the published `wiseft_acc_test_delta` (>= 0)."""
    at = {point["alpha"]: point for point in curve}
    best = max(curve, key=lambda point: point["test_acc"])
    finetuned = at[1.0]
    return {
        "zoo_test_acc": at[0.0]["test_acc"],
        "finetuned_test_acc": finetuned["test_acc"],
        "best_alpha": best["alpha"],
        "best_test_acc": best["test_acc"],
        "wiseft_delta_test_acc": best["test_acc"] - finetuned["test_acc"],
    }
