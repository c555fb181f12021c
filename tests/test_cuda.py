"""What only a GPU exercises: channels_last, fused optimizers, CUDA graphs and bf16 on CUDA.
Skipped without one; `scripts/gpu_check.sh` runs them on a GPU machine."""

from __future__ import annotations

import pytest
import torch

from ptmz.data import DeviceLoader, load_dataset
from ptmz.models import build_model
from ptmz.train import RunSpec, evaluate, train_run, train_together
from ptmz.train.run import Trainee, data_for
from ptmz.zoo import RunDir

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TINY = dict(width=4, batch_size=64, epochs=2, lr=0.02, device="cuda", progress=False)


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


@pytest.mark.parametrize("change", [dict(compile=True), dict(precision="bf16")])
def test_compiled_and_bf16_runs_train_like_the_plain_one(tmp_path, change):
    plain = RunSpec(out_dir=str(tmp_path / "plain"), **TINY)
    other = RunSpec(out_dir=str(tmp_path / "other"), **{**TINY, **change})
    assert train_run(plain) == train_run(other) == "done"
    assert (other.run_id == plain.run_id) == ("compile" in change)  # bf16 is another run
    a, b = RunDir(plain.run_dir).records[-1], RunDir(other.run_dir).records[-1]
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.1)
    assert reevaluated_test_acc(other) == pytest.approx(b["test_acc"], abs=3 / 450)


def test_seeds_together_on_cuda(tmp_path):
    specs = [RunSpec(out_dir=str(tmp_path), seed=s, **TINY) for s in (0, 1, 2)]
    assert train_together(specs) == ["done"] * 3
    for spec in specs:
        recorded = RunDir(spec.run_dir).records[-1]["test_acc"]
        assert reevaluated_test_acc(spec) == pytest.approx(recorded, abs=3 / 450)
