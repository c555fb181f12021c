"""Weight averages and ensembles: constructed cases with known answers, and the two tasks."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from ptmz.averaging import average_states, ensemble_metrics
from ptmz.data import DeviceLoader, Split
from ptmz.tasks import run_task
from ptmz.zoo.population import Population


def test_average_covers_every_float_entry_biases_included():
    torch.manual_seed(0)
    a, b, c = (nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).state_dict() for _ in range(3))
    for i, state in enumerate((a, b, c)):
        state["1.running_mean"] += i
        state["1.num_batches_tracked"] += 7 * i
    mean = average_states([a, b, c])
    for key in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        assert torch.allclose(mean[key], (a[key] + b[key] + c[key]) / 3)
    assert torch.equal(mean["1.running_mean"], (a["1.running_mean"] * 3 + 3) / 3)
    assert mean["1.num_batches_tracked"] == a["1.num_batches_tracked"]


class Table(nn.Module):
    """Logits looked up by sample index (the index is the image's pixel value)."""

    def __init__(self, logits: list[list[float]]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x[:, 0, 0, 0].round().long()]


def test_ensemble_on_constructed_logits():
    images = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1)
    split = Split(images, torch.tensor([0, 0, 1, 1]))
    loader = DeviceLoader(split, 3, (0.0,), (1 / 255,), torch.device("cpu"))  # x = pixel value
    a = Table([[2, 0], [2, 0], [2, 0], [0, 1]])  # predicts 0 0 0 1: accuracy 3/4
    b = Table([[0, 1], [0, 1], [0, 3], [0, 3]])  # predicts 1 1 1 1: accuracy 1/2
    # mean logits [1, .5] [1, .5] [1, 1.5] [0, 2] predict 0 0 1 1: accuracy 1
    result = ensemble_metrics([a, b], loader)
    assert result["ensemble_acc"] == 1.0 and result["members_acc"] == 0.625
    assert result["ensemble_gain_acc"] == pytest.approx(0.375)
    expected = torch.nn.functional.cross_entropy(
        torch.tensor([[1, 0.5], [1, 0.5], [1, 1.5], [0, 2]]), torch.tensor([0, 0, 1, 1])
    )
    assert result["ensemble_loss"] == pytest.approx(expected.item())


@pytest.mark.parametrize("task, units", [("average_epochs", 3), ("ensemble", 2)])
def test_averaging_tasks(config, digits_population, tmp_path, task, units):
    population = shutil.copytree(digits_population, tmp_path / "zoo")
    args = [f"task={task}", f"population={population}"]
    if task == "average_epochs":
        args.append("task.last=2")
    assert run_task(config(*args)) == {"computed": units, "skipped": 0}
    assert run_task(config(*args))["computed"] == 0
    files = sorted(population.rglob(f"landscape/**/{task}_epoch_0003.json"))
    assert len(files) == units
    result = json.loads(files[0].read_text())
    if task == "average_epochs":
        assert result["inputs"]["epochs"] == [2, 3]
        assert result["delta_test_acc"] == pytest.approx(
            result["averaged"]["test_acc"] - result["final"]["test_acc"]
        )
    else:
        pair = next(
            json.loads(f.read_text())
            for f in files
            if len(json.loads(f.read_text())["inputs"]["runs"]) == 2
        )
        assert 0 <= pair["ensemble_acc"] <= 1 and "ensemble_gain_acc" in pair
    assert len(Population(population)) == 3


def test_magnitude_pruning_zeroes_exactly_the_smallest_weights():
    from ptmz.averaging import magnitude_prune

    state = {
        "conv.weight": torch.tensor([[[[0.5, -0.1], [0.3, -0.9]]]]),  # 4 prunable
        "conv.bias": torch.tensor([0.01]),  # never pruned
        "bn.weight": torch.tensor([0.001]),  # 1-d: never pruned
        "fc.weight": torch.tensor([[0.2, -0.05], [0.7, 0.4]]),  # 4 prunable
    }
    pruned = magnitude_prune(state, 0.5)  # the 4 smallest of 8: 0.05, 0.1, 0.2, 0.3
    assert torch.allclose(pruned["conv.weight"].flatten(), torch.tensor([0.5, 0.0, 0.0, -0.9]))
    assert torch.allclose(pruned["fc.weight"], torch.tensor([[0.0, 0.0], [0.7, 0.4]]))
    assert torch.equal(pruned["conv.bias"], state["conv.bias"])
    assert torch.equal(pruned["bn.weight"], state["bn.weight"])
    assert state["fc.weight"][0, 0] == 0.2  # the input is not modified
    assert torch.equal(magnitude_prune(state, 0.0)["fc.weight"], state["fc.weight"])
    from ptmz.errors import ConfigError

    with pytest.raises(ConfigError, match=r"sparsity=1.0 .*\[0, 1\)"):
        magnitude_prune(state, 1.0)


def test_prune_task_reports_every_sparsity(config, digits_population, tmp_path):
    population = shutil.copytree(digits_population, tmp_path / "zoo")
    args = ["task=prune", f"population={population}", "task.sparsities=[0.5,0.99]"]
    assert run_task(config(*args)) == {"computed": 3, "skipped": 0}
    (file, *_) = sorted(population.rglob("landscape/prune_epoch_0003.json"))
    result = json.loads(file.read_text())
    assert set(result["sparsity"]) == {"0.5", "0.99"}
    unpruned, gutted = result["unpruned"]["test_acc"], result["sparsity"]["0.99"]["test_acc"]
    assert gutted < unpruned - 0.2  # 1% of the weights left: near chance
