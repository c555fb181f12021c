"""What only a GPU exercises: channels_last, fused optimizers, CUDA graphs and bf16 on CUDA.
Skipped without one; `scripts/gpu_check.sh` runs them on a GPU machine."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch

from ptmz.data import DeviceLoader, load_dataset
from ptmz.models import build_model
from ptmz.objectives import cross_entropy
from ptmz.train import RunSpec, evaluate, train_run, train_together
from ptmz.train.gradients import Gradients, GraphedGradients
from ptmz.train.loop import prepare_model
from ptmz.train.run import Trainee, data_for
from ptmz.zoo import RunDir

from conftest import training_gap

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# lr small enough that runs compared after one epoch have not yet drifted apart (training_gap):
# at 0.02, two plain runs differing only in cuDNN's nondeterministic sums ended at 2.4 and 4.2
# in training loss.
TINY = dict(width=4, batch_size=64, epochs=2, lr=0.002, device="cuda", progress=False)


def reevaluated_test_acc(spec: RunSpec) -> float:
    """The saved weights, loaded into a fresh CPU model and evaluated on the CPU."""
    data = load_dataset("digits", "data", download=False)
    model = build_model("resnet18", spec.width, data.in_channels, data.num_classes)
    model.load_state_dict(RunDir(spec.run_dir).load_weights(spec.epochs))
    test = DeviceLoader(data.test, 1024, data.mean, data.std, torch.device("cpu"))
    return evaluate(model, test)[1]


def test_cuda_run_is_channels_last_and_saves_plain_weights(tmp_path):
    spec = RunSpec(out_dir=str(tmp_path), **TINY)
    assert train_run(spec) == "done"
    recorded = RunDir(spec.run_dir).records[-1]["test_acc"]
    assert reevaluated_test_acc(spec) == pytest.approx(recorded, abs=3 / 450)  # TF32 vs fp32
    spec2 = RunSpec(out_dir=str(tmp_path / "fresh"), **TINY)
    cuda, run = torch.device("cuda"), RunDir(spec2.run_dir)
    run.create(spec2.to_dict())
    trainee = Trainee(spec2, run, data_for(spec2, cuda), cuda)
    assert trainee.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "change",
    [
        dict(compile=True),
        dict(cuda_graph=True),
        dict(precision="bf16"),
        dict(cuda_graph=True, precision="bf16"),
    ],
)
def test_compiled_graphed_and_bf16_runs_train_like_the_plain_one(tmp_path, change):
    plain = RunSpec(out_dir=str(tmp_path / "plain"), **TINY)
    other = RunSpec(out_dir=str(tmp_path / "other"), **{**TINY, **change})
    assert train_run(plain) == train_run(other) == "done"
    assert (other.run_id == plain.run_id) == ("precision" not in change)  # bf16: another run
    assert training_gap(other.run_dir, plain.run_dir) < 0.25
    recorded = RunDir(other.run_dir).records[-1]["test_acc"]
    assert reevaluated_test_acc(other) == pytest.approx(recorded, abs=3 / 450)


@pytest.mark.parametrize(
    "change", [dict(), dict(cuda_graph=True), dict(cuda_graph=True, precision="bf16")]
)
def test_seeds_together_on_cuda(tmp_path, change):
    specs = [RunSpec(out_dir=str(tmp_path), seed=s, **TINY, **change) for s in range(3)]
    alone = RunSpec(out_dir=str(tmp_path / "alone"), seed=0, **TINY, **change)
    assert train_together(specs) == ["done"] * 3
    assert train_run(alone) == "done"
    assert training_gap(specs[0].run_dir, alone.run_dir) < 0.25
    for spec in specs:
        recorded = RunDir(spec.run_dir).records[-1]["test_acc"]
        assert reevaluated_test_acc(spec) == pytest.approx(recorded, abs=3 / 450)


def test_graphed_gradients_equal_eager_ones(monkeypatch):
    """Replayed from CUDA graphs, a step gives the eager step's loss, gradients and batch-norm
    statistics, for both batch shapes of an epoch, however the shapes alternate: recording
    (with its warm-up steps) leaves no trace. A parameter the loss does not use keeps no
    gradient (so the optimizer skips it, as eagerly), and gradients set to None in between
    are found again."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)  # both sides, same sums
    cuda = torch.device("cuda")
    torch.manual_seed(0)
    eager_model = prepare_model(build_model("resnet18", 4, 1, 10, 8), cuda).train()
    eager_model.unused = torch.nn.Parameter(torch.zeros(3, device=cuda))
    graphed_model = copy.deepcopy(eager_model)
    eager = Gradients(partial(cross_entropy, eager_model), list(eager_model.parameters()), "fp32")
    graphed = GraphedGradients(
        partial(cross_entropy, graphed_model),
        list(graphed_model.parameters()),
        "fp32",
        list(graphed_model.buffers()),
    )
    for step, n in enumerate((64, 64, 3, 64, 3, 3)):
        if step == 4:
            for p in graphed.params:
                p.grad = None
        x = torch.randn(n, 1, 8, 8, device=cuda)
        y = torch.randint(0, 10, (n,), device=cuda)
        torch.testing.assert_close(graphed(x, y), eager(x, y))
        for p_graphed, p_eager in zip(graphed.params, eager.params, strict=True):
            torch.testing.assert_close(p_graphed.grad, p_eager.grad)  # both None for `unused`
        for b_graphed, b_eager in zip(graphed_model.buffers(), eager_model.buffers(), strict=True):
            torch.testing.assert_close(b_graphed, b_eager)
    assert len(graphed.graphs) == 2
