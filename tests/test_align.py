"""Permutation alignment against its oracle: a trained network with its hidden units shuffled
computes the same function, and aligning the shuffled copy back must recover the original
weights exactly, with no barrier left between the two."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ptmz.averaging.align import (
    activation_matching,
    apply_permutation,
    permutation_spec,
    weight_matching,
)
from ptmz.data import DeviceLoader, load_dataset
from ptmz.errors import PtmzError
from ptmz.landscape.paths import PathData, interpolation_metrics
from ptmz.train import RunSpec, train_run
from ptmz.zoo.population import Population


@pytest.fixture(scope="module")
def digits_test() -> DeviceLoader:
    data = load_dataset("digits")
    return DeviceLoader(data.test, 150, data.mean, data.std, torch.device("cpu"))


@pytest.fixture(scope="module")
def trained_resnet50(tmp_path_factory) -> nn.Module:
    out = tmp_path_factory.mktemp("zoo")
    spec = RunSpec(
        model="resnet50",
        width=2,
        batch_size=32,
        lr=0.02,
        epochs=2,
        out_dir=str(out),
        progress=False,
    )
    assert train_run(spec) == "done"
    return Population(out / spec.zoo).runs[0].load_model()


def shuffled_copy(model: nn.Module, x: torch.Tensor, seed: int) -> tuple[nn.Module, dict]:
    """`model` with every permutation group shuffled at random, and its permutation spec."""
    spec = permutation_spec(model, x)
    generator = torch.Generator().manual_seed(seed)
    perms = {g: torch.randperm(n, generator=generator) for g, n in spec.sizes.items()}
    shuffled = copy.deepcopy(model)
    shuffled.load_state_dict(apply_permutation(spec, perms, model.state_dict()))
    return shuffled.eval(), spec


# Activation matching identifies units only up to equal activations on the data: the briefly
# trained ResNet-50 has dead channels (constant on every test image, e.g. 3 of the 8 after
# layer3.5.conv1) that no activation can tell apart, so its oracle is weight matching alone.
@pytest.mark.parametrize(
    ("depth", "method"),
    [("resnet18", "weights"), ("resnet18", "activations"), ("resnet50", "weights")],
)
def test_shuffled_network_aligns_back_exactly(
    request, digits_population, digits_test, depth, method
):
    """A trained BasicBlock network (the digits zoo) and a trained Bottleneck one."""
    if depth == "resnet18":
        trained = Population(digits_population).runs[0].load_model().eval()
    else:
        trained = request.getfixturevalue("trained_resnet50").eval()
    x = next(iter(digits_test))[0]
    shuffled, spec = shuffled_copy(trained, x, seed=1)
    original, moved = trained.state_dict(), shuffled.state_dict()
    assert any(not torch.equal(moved[k], original[k]) for k in original)
    with torch.no_grad():  # the shuffle keeps the function
        logits = trained(x)
        assert (shuffled(x) - logits).abs().max() < 1e-5 * logits.abs().max()

    if method == "weights":
        perms = weight_matching(spec, original, moved)
    else:
        perms = activation_matching(spec, trained, shuffled, [b for b, _ in digits_test])
    aligned = apply_permutation(spec, perms, moved)
    for key in original:
        assert torch.equal(aligned[key], original[key]), key

    data = PathData(bn=digits_test, train=digits_test, test=digits_test)
    before = interpolation_metrics(trained, original, moved, data, points=5)
    after = interpolation_metrics(trained, original, aligned, data, points=5)
    assert before["barrier_test_loss"] > 0.05  # the unaligned midpoint is another network
    assert after["barrier_test_error"] == 0 and after["barrier_test_loss"] == 0


def test_bn_running_statistics_move_with_their_channels(digits_population, digits_test):
    model = Population(digits_population).runs[0].load_model().eval()
    spec = permutation_spec(model, next(iter(digits_test))[0])
    assert spec.axes["layer1.0.bn1.running_var"] == {0: "layer1.0.conv1"}
    stream = spec.axes["layer1.0.bn2.running_mean"][0]  # the residual stream of stage 1 ...
    assert spec.axes["bn1.running_mean"] == {0: stream}  # ... is shared with the stem
    assert spec.axes["layer2.0.downsample.1.running_var"] == spec.axes["layer2.1.bn2.weight"]
    assert "fc.bias" not in spec.axes and set(spec.axes["fc.weight"]) == {1}


def test_deriving_the_groups_leaves_a_training_model_as_it_was(digits_population, digits_test):
    model = Population(digits_population).runs[0].load_model().train()
    before = copy.deepcopy(model.state_dict())
    permutation_spec(model, next(iter(digits_test))[0])
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)  # BN statistics included
    assert all(m.training for m in model.modules())


def test_mlp_groups_and_alignment():
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 3)
    )
    x = torch.randn(20, 1, 8, 8)
    shuffled, spec = shuffled_copy(mlp, x, seed=3)
    assert spec.sizes == {"1": 32, "3": 16}
    assert torch.allclose(shuffled(x), mlp(x), atol=1e-6)
    perms = weight_matching(spec, mlp.state_dict(), shuffled.state_dict())
    aligned = apply_permutation(spec, perms, shuffled.state_dict())
    assert all(torch.equal(aligned[k], v) for k, v in mlp.state_dict().items())


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        return torch.softmax(h @ h.transpose(-1, -2), -1) @ h


class WideFlatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv(x), 1))


@pytest.mark.parametrize(
    ("model", "x", "named"),
    [
        (Attention(), torch.randn(2, 5, 8), "call_method transpose"),
        (WideFlatten(), torch.randn(2, 1, 8, 8), "flatten of permuted channels"),
        (nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), torch.randn(1, 4, 5, 5), "grouped"),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Linear(6, 2)), torch.randn(2, 1, 8, 8), "positions"),
    ],
)
def test_unsupported_operations_are_named(model, x, named):
    with pytest.raises(PtmzError, match=named):
        permutation_spec(model, x)
