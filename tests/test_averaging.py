"""Weight averages and ensembles: constructed cases with known answers, and the two tasks."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from ptmz.averaging import align, average_states, ensemble_metrics, fit_head, wiseft_curve
from ptmz.data import DeviceLoader, Split, load_dataset
from ptmz.errors import ConfigError
from ptmz.tasks import run_task
from ptmz.train import evaluate
from ptmz.weights import recalibrate_bn
from ptmz.zoo import RunDir
from ptmz.zoo.population import Population

from conftest import write_idx


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
    from ptmz.averaging import magnitude_prune, prunable

    model = nn.ModuleDict(
        {
            "tokens": nn.Embedding(2, 2),  # 2-d, but an embedding: never pruned
            "conv": nn.Conv2d(1, 1, 2),
            "bn": nn.BatchNorm2d(1),
            "fc": nn.Linear(2, 2, bias=False),
        }
    )
    keys = prunable(model)
    assert keys == ["conv.weight", "fc.weight"]
    state = {
        "tokens.weight": torch.tensor([[0.0001, 0.0002], [0.0003, 0.0004]]),
        "conv.weight": torch.tensor([[[[0.5, -0.1], [0.3, -0.9]]]]),  # 4 prunable
        "conv.bias": torch.tensor([0.01]),  # never pruned
        "bn.weight": torch.tensor([0.001]),  # never pruned
        "fc.weight": torch.tensor([[0.2, -0.05], [0.7, 0.4]]),  # 4 prunable
    }
    pruned = magnitude_prune(state, 0.5, keys)  # the 4 smallest of 8: 0.05, 0.1, 0.2, 0.3
    assert torch.allclose(pruned["conv.weight"].flatten(), torch.tensor([0.5, 0.0, 0.0, -0.9]))
    assert torch.allclose(pruned["fc.weight"], torch.tensor([[0.0, 0.0], [0.7, 0.4]]))
    for untouched in ("tokens.weight", "conv.bias", "bn.weight"):
        assert torch.equal(pruned[untouched], state[untouched])
    assert state["fc.weight"][0, 0] == 0.2  # the input is not modified
    assert torch.equal(magnitude_prune(state, 0.0, keys)["fc.weight"], state["fc.weight"])
    with pytest.raises(ConfigError, match=r"sparsity=1.0 .*\[0, 1\)"):
        magnitude_prune(state, 1.0, keys)


def test_prune_task_reports_every_sparsity(config, digits_population, tmp_path):
    population = shutil.copytree(digits_population, tmp_path / "zoo")
    args = ["task=prune", f"population={population}", "task.sparsities=[0.5,0.99]"]
    assert run_task(config(*args)) == {"computed": 3, "skipped": 0}
    (file, *_) = sorted(population.rglob("landscape/prune_epoch_0003.json"))
    result = json.loads(file.read_text())
    assert set(result["sparsity"]) == {"0.5", "0.99"}
    assert set(result["unpruned_recalibrated"]) == set(result["unpruned"])
    unpruned, gutted = result["unpruned"]["test_acc"], result["sparsity"]["0.99"]["test_acc"]
    assert gutted < unpruned - 0.2  # 1% of the weights left: near chance


def test_recalibration_agrees_with_update_bn():
    """torch's update_bn weights each batch equally; with equal batches the two must agree."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.BatchNorm2d(3))
    batches = [(torch.randn(8, 2, 6, 6) * 3 + 1, None) for _ in range(5)]
    ours, theirs = copy.deepcopy(net), copy.deepcopy(net)
    recalibrate_bn(ours, batches)
    update_bn([x for x, _ in batches], theirs)
    for key, value in theirs.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(ours.state_dict()[key], value, atol=1e-5), key


def test_averaging_identical_models_returns_the_model(digits_population):
    run = Population(digits_population).runs[0]
    state = run.state_dict()
    mean = average_states([state, state])
    assert all(torch.allclose(mean[k].float(), v.float(), atol=1e-7) for k, v in state.items())
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(align(run.load_model(), state, state, [x])["fc.weight"], state["fc.weight"])


def test_average_seeds_task(config, digits_population, tmp_path):
    population = shutil.copytree(digits_population, tmp_path / "zoo")
    args = ["task=average_seeds", f"population={population}", "task.samples=256"]
    assert run_task(config(*args)) == {"computed": 2, "skipped": 0}
    assert run_task(config(*args))["computed"] == 0
    results = [json.loads(f.read_text()) for f in population.rglob("average_seeds_epoch_0003.json")]
    (pair,) = [r for r in results if r["applicable"]]
    runs = [r for r in Population(population).runs if r.name in pair["inputs"]["runs"]]
    individual = sum(recalibrated_test_acc(r.load_model(3)) for r in runs) / 2
    assert pair["individual_mean"]["test_acc"] == pytest.approx(individual)
    for name in ("unaligned", "aligned"):
        delta = pair[name]["test_acc"] - individual
        assert pair[name]["delta_test_acc"] == pytest.approx(delta)
    with pytest.raises(ConfigError, match="task.method='permute' is not allowed"):
        run_task(config(*args, "task.method=permute"))


def recalibrated_test_acc(model: nn.Module) -> float:
    """A digits model's test accuracy with its BN statistics recomputed on the training set."""
    data, cpu = load_dataset("digits"), torch.device("cpu")
    recalibrate_bn(model, DeviceLoader(data.train, 512, data.mean, data.std, cpu))
    return evaluate(model, DeviceLoader(data.test, 512, data.mean, data.std, cpu))[1]


def test_averages_of_one_model_change_nothing(config, digits_population, tmp_path):
    """The average of one checkpoint, or of two seeds with the same weights, is that model:
    every delta is exactly 0, recomputed BN statistics and all."""
    population = shutil.copytree(digits_population, tmp_path / "zoo")
    seed0, seed1 = [r for r in Population(population).runs if r.name.startswith("w4_bs32")]
    RunDir(seed1.path).save_weights(3, seed0.state_dict(3))
    run_task(config("task=average_epochs", f"population={population}", "task.last=1"))
    run_task(config("task=average_seeds", f"population={population}", "task.samples=256"))
    results = [json.loads(f.read_text()) for f in population.rglob("average_*_epoch_0003.json")]
    deltas = [
        v
        for r in results
        for part in (r, r.get("aligned"), r.get("unaligned"))
        if part
        for k, v in part.items()
        if k.startswith("delta_")
    ]
    assert len(deltas) == 3 * 4 + 2 * 4  # 3 runs, 1 pair of seeds; 4 metrics each
    assert deltas == [0.0] * len(deltas)


def test_finetune_task_on_the_zoo_dataset(config, digits_population, tmp_path):
    population = shutil.copytree(digits_population, tmp_path / "zoo")
    args = ["task=finetune", f"population={population}", "task.epochs=1", "epoch=2"]
    args.append("task.alphas=[0,0.5,1]")
    assert run_task(config(*args)) == {"computed": 3, "skipped": 0}
    assert run_task(config(*args))["computed"] == 0
    run = Population(population).runs[0]
    result = json.loads((run.path / "landscape/finetune_epoch_0002.json").read_text())
    assert [p["alpha"] for p in result["curve"]] == [0, 0.5, 1]
    assert result["target"] == "digits" and not result["new_head"]
    assert result["wiseft_delta_test_acc"] == pytest.approx(
        max(p["test_acc"] for p in result["curve"]) - result["finetuned_test_acc"]
    )
    # alpha = 0 is the zoo model itself with its BN statistics recomputed
    data = load_dataset("digits")
    model = run.load_model(2)
    recalibrate_bn(model, DeviceLoader(data.train, 512, data.mean, data.std, torch.device("cpu")))
    test = DeviceLoader(data.test, 512, data.mean, data.std, torch.device("cpu"))
    assert result["zoo_test_acc"] == pytest.approx(evaluate(model, test)[1])
    with pytest.raises(ConfigError, match=r"task.alphas=\[0.5\]"):
        run_task(config(*args[:-1], "task.alphas=[0.5]"))


def test_finetune_on_another_dataset(config, digits_population, tmp_path):
    generator = torch.Generator().manual_seed(0)
    for split, n in (("train", 64), ("t10k", 32)):
        images = torch.randint(0, 256, (n, 28, 28), generator=generator, dtype=torch.uint8)
        write_idx(tmp_path / "data/MNIST/raw" / f"{split}-images-idx3-ubyte", images)
        labels = torch.arange(n, dtype=torch.uint8) % 10
        write_idx(tmp_path / "data/MNIST/raw" / f"{split}-labels-idx1-ubyte", labels)
    population = shutil.copytree(digits_population, tmp_path / "zoo")
    args = ["task=finetune", f"population={population}", "task.target=mnist", "task.epochs=1"]
    args += [f"data_root={tmp_path / 'data'}", "shard=0", "num_shards=3"]
    assert run_task(config(*args))["computed"] >= 1
    (file, *_) = population.rglob("finetune_epoch_0003.json")
    assert json.loads(file.read_text())["target"] == "mnist"


def test_new_head_for_another_class_count():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 10))
    assert fit_head(model, 10) == [] and model[2].out_features == 10
    assert fit_head(model, 3) == ["2.weight", "2.bias"]
    assert model(torch.randn(5, 4)).shape == (5, 3)
    assert torch.all(model[2].bias == 0.01)


def test_wiseft_curve_endpoints_are_the_two_models(digits_population):
    """The fine-tuned state may be the model's own live tensors (model.state_dict()): the
    curve must still end at the fine-tuned network, not at whatever was loaded last."""
    zoo_run, other_run = Population(digits_population).runs[:2]
    data = load_dataset("digits")
    bn = DeviceLoader(data.train, 512, data.mean, data.std, torch.device("cpu"))
    test = DeviceLoader(data.test, 512, data.mean, data.std, torch.device("cpu"))
    expected = []
    for run in (zoo_run, other_run):
        model = recalibrate_bn(run.load_model(), bn)
        expected.append(evaluate(model, test)[1])
    model = other_run.load_model()
    curve = wiseft_curve(model, zoo_run.state_dict(), model.state_dict(), [0, 1], bn, test)
    assert [p["test_acc"] for p in curve] == pytest.approx(expected)
    assert expected[0] != expected[1]
