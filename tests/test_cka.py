"""Linear CKA against closed forms: hand-computed values, explicit-sum oracles, invariances."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from ptmz.errors import ConfigError
from ptmz.landscape.cka import (
    CKAAccumulator,
    hsic,
    linear_cka,
    mean_pairwise_cka,
    model_cka,
)
from ptmz.models import build_model

ESTIMATORS = pytest.mark.parametrize("unbiased", [False, True], ids=["biased", "unbiased"])


def features(n: int, p: int, seed: int) -> torch.Tensor:
    """Features with a non-zero mean, as logits have, so centering matters."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, p, generator=g, dtype=torch.float64) + 3 * torch.rand(p, generator=g)


def related(x: torch.Tensor, seed: int) -> torch.Tensor:
    """A second representation partly determined by x, so CKA is strictly between 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(x.shape[1], 5, generator=g, dtype=torch.float64)
    return torch.tanh(x @ mix) + 0.5 * torch.randn(x.shape[0], 5, generator=g, dtype=x.dtype)


def gram(x: torch.Tensor) -> torch.Tensor:
    return x @ x.T


def random_orthogonal(p: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
    return q


# --- HSIC and single-batch CKA against independent oracles -------------------------------------

# X (4x2) and Y (4x1); Gram matrices K = X X^T, L = Y Y^T:
#   K = [[1,0,1,2],[0,1,1,0],[1,1,2,2],[2,0,2,4]]    L = [[1,2,0,1],[2,4,0,2],[0,0,0,0],[1,2,0,1]]
# Worked out in exact rationals (fractions.Fraction), independently of this package:
#   biased   tr(KHLH)/(n-1)^2, H = I - 11^T/4:  HSIC(K,L) = 1/9, HSIC(K,K) = 7/9, HSIC(L,L) = 4/9,
#            CKA = (1/9) / sqrt(28/81) = 1/(2 sqrt 7)
#   unbiased Song et al.'s U-statistic, a sum over the 4! ordered 4-tuples of distinct indices:
#            HSIC(K,L) = -1/4, HSIC(K,K) = 1/2, HSIC(L,L) = 1/6,
#            CKA = (-1/4) / sqrt(1/12) = -sqrt(3)/2  (negative: the unbiased estimate can be)
HAND_X = torch.tensor([[1, 0], [0, 1], [1, 1], [2, 0]], dtype=torch.float64)
HAND_Y = torch.tensor([[1], [2], [0], [1]], dtype=torch.float64)


@pytest.mark.parametrize(
    "unbiased, xy, xx, yy, cka",
    [
        (False, 1 / 9, 7 / 9, 4 / 9, 1 / (2 * math.sqrt(7))),
        (True, -1 / 4, 1 / 2, 1 / 6, -math.sqrt(3) / 2),
    ],
    ids=["biased", "unbiased"],
)
def test_hsic_and_cka_match_hand_computed_values(unbiased, xy, xx, yy, cka):
    k, l = gram(HAND_X), gram(HAND_Y)  # noqa: E741
    assert hsic(k, l, unbiased).item() == pytest.approx(xy, abs=1e-12)
    assert hsic(k, k, unbiased).item() == pytest.approx(xx, abs=1e-12)
    assert hsic(l, l, unbiased).item() == pytest.approx(yy, abs=1e-12)
    assert linear_cka(HAND_X, HAND_Y, unbiased=unbiased) == pytest.approx(cka, abs=1e-12)


def test_biased_hsic_equals_trace_formula_with_explicit_centering_matrix():
    x, y = features(9, 4, seed=0), features(9, 3, seed=1)
    k, l = gram(x).numpy(), gram(y).numpy()  # noqa: E741
    h = np.eye(9) - np.ones((9, 9)) / 9
    expected = np.trace(k @ h @ l @ h) / 8**2
    assert hsic(gram(x), gram(y), unbiased=False).item() == pytest.approx(expected, rel=1e-12)


def test_unbiased_hsic_equals_song_u_statistic_over_distinct_index_tuples():
    # Song et al. 2012, Theorem 3: HSIC_1 = (n)_4^-1 sum over distinct (i, j, q, r) of
    # K_ij L_ij + K_ij L_qr - 2 K_ij L_iq  (the closed form in the package is its expansion).
    n = 6
    k, l = gram(features(n, 3, seed=2)).numpy(), gram(features(n, 2, seed=3)).numpy()  # noqa: E741
    total = sum(
        k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
        for i, j, q, r in itertools.permutations(range(n), 4)
    )
    expected = total / (n * (n - 1) * (n - 2) * (n - 3))
    got = hsic(torch.from_numpy(k), torch.from_numpy(l), unbiased=True).item()
    assert got == pytest.approx(expected, rel=1e-12)


def test_biased_cka_equals_feature_space_formula_on_centred_features():
    x, y = features(50, 8, seed=4), related(features(50, 8, seed=4), seed=5)
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = torch.linalg.norm(yc.T @ xc) ** 2 / (
        torch.linalg.norm(xc.T @ xc) * torch.linalg.norm(yc.T @ yc)
    )
    assert linear_cka(x, y, unbiased=False) == pytest.approx(expected.item(), rel=1e-12)


def reference_cka(x: np.ndarray, y: np.ndarray, unbiased: bool) -> float:
    """CKA in float64 numpy from the estimators' formulas (the unbiased one as checked against
    the U-statistic above), on features given without an offset."""

    def hsic_np(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
        n = len(k)
        if not unbiased:
            h = np.eye(n) - np.ones((n, n)) / n
            return np.trace(k @ h @ l @ h) / (n - 1) ** 2
        k, l = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))  # noqa: E741
        sums = k.sum() * l.sum() / ((n - 1) * (n - 2))
        return (np.trace(k @ l) + sums - 2 * k.sum(0) @ l.sum(1) / (n - 2)) / (n * (n - 3))

    k, l = x @ x.T, y @ y.T  # noqa: E741
    return hsic_np(k, l) / np.sqrt(hsic_np(k, k) * hsic_np(l, l))


@ESTIMATORS
@pytest.mark.parametrize("offset", [1e2, 1e3, 1e4, 1e6])
def test_a_large_feature_mean_cancels_no_digits(unbiased, offset):
    """Features far from zero (logits with a large common offset) give the CKA of the same
    features without the offset: the Gram matrices are formed from centred features."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(128, 10, generator=g, dtype=torch.float64)
    y = related(x, seed=8)
    expected = reference_cka(x.numpy(), y.numpy(), unbiased)
    assert linear_cka(x + offset, y - offset, unbiased) == pytest.approx(expected, abs=1e-9)


# --- CKA properties ------------------------------------------------------------------------------


@ESTIMATORS
def test_cka_of_a_representation_with_itself_is_one(unbiased):
    batches = [features(32, 6, seed=s) for s in range(4)]
    assert linear_cka(batches[0], batches[0], unbiased=unbiased) == pytest.approx(1, abs=1e-12)
    accumulator = CKAAccumulator(unbiased=unbiased)
    for x in batches:
        accumulator.update(x, x)
    assert accumulator.compute() == pytest.approx(1, abs=1e-12)


@ESTIMATORS
def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling(unbiased):
    x = features(40, 6, seed=6)
    y = related(x, seed=7)
    reference = linear_cka(x, y, unbiased=unbiased)
    assert 0.05 < reference < 0.95  # a non-trivial value, so invariance is not vacuous
    q_x, q_y = random_orthogonal(6, seed=8), random_orthogonal(5, seed=9)
    for x2, y2 in [(x @ q_x, y), (x, y @ q_y), (7.5 * x, y), (x, 0.01 * y), (3 * x @ q_x, y @ q_y)]:
        assert linear_cka(x2, y2, unbiased=unbiased) == pytest.approx(reference, rel=1e-10)


@ESTIMATORS
def test_cka_changes_under_non_isotropic_scaling(unbiased):
    x = features(40, 6, seed=10)
    y = related(x, seed=11)
    stretch = torch.tensor([10.0, 1, 1, 1, 1, 0.1], dtype=torch.float64)
    reference = linear_cka(x, y, unbiased=unbiased)
    assert abs(linear_cka(x * stretch, y, unbiased=unbiased) - reference) > 1e-2


# --- minibatch accumulation ----------------------------------------------------------------------


@ESTIMATORS
def test_accumulator_over_one_batch_equals_linear_cka(unbiased):
    x = features(30, 7, seed=12)
    y = related(x, seed=13)
    accumulator = CKAAccumulator(unbiased=unbiased)
    accumulator.update(x, y)
    assert accumulator.compute() == pytest.approx(linear_cka(x, y, unbiased), rel=1e-12)


def test_accumulator_averages_each_hsic_over_batches_before_the_ratio():
    xs = [features(20, 5, seed=s) for s in range(3)]
    ys = [related(x, seed=10 + s) for s, x in enumerate(xs)]
    accumulator = CKAAccumulator(unbiased=True)
    for x, y in zip(xs, ys, strict=True):
        accumulator.update(x, y)

    def mean_hsic(a, b):
        return np.mean(
            [hsic(gram(u), gram(v), unbiased=True).item() for u, v in zip(a, b, strict=True)]
        )

    expected = mean_hsic(xs, ys) / math.sqrt(mean_hsic(xs, xs) * mean_hsic(ys, ys))
    assert accumulator.compute() == pytest.approx(expected, rel=1e-12)
    # ... which is not the mean of the per-batch CKAs.
    per_batch = np.mean([linear_cka(x, y, unbiased=True) for x, y in zip(xs, ys, strict=True)])
    assert abs(accumulator.compute() - per_batch) > 1e-6


def test_accumulator_flattens_trailing_dims_and_computes_in_float64():
    x = features(16, 12, seed=14)
    y = related(x, seed=15)
    flat, shaped = CKAAccumulator(), CKAAccumulator()
    flat.update(x, y)
    shaped.update(x.reshape(16, 3, 2, 2).float(), y.float())
    # float32 inputs are cast before any arithmetic, so the only error is their rounding.
    assert shaped.compute() == pytest.approx(flat.compute(), rel=1e-6)


def test_bad_inputs_raise_config_error_naming_the_problem():
    with pytest.raises(ConfigError, match="y.shape"):
        linear_cka(torch.randn(8, 3), torch.randn(7, 3))
    with pytest.raises(ConfigError, match="batch size=3.*unbiased"):
        CKAAccumulator(unbiased=True).update(torch.randn(3, 2), torch.randn(3, 2))
    with pytest.raises(ConfigError, match="batch size=1"):
        linear_cka(torch.randn(1, 2), torch.randn(1, 2), unbiased=False)
    with pytest.raises(ConfigError, match="gram shapes"):
        hsic(torch.eye(5), torch.eye(4), unbiased=False)
    with pytest.raises(ConfigError, match="batches=0"):
        CKAAccumulator().compute()


# --- models --------------------------------------------------------------------------------------


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 5)
    )


def input_batches(count: int = 3, n: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(99)
    return [torch.randn(n, 3, 2, 2, generator=g) for _ in range(count)]


def test_model_cka_of_a_model_with_itself_is_one_in_eval_mode_and_restores_flags():
    model = mlp(0)
    model.train()
    model[1].eval()  # a mixed state, which must come back exactly
    flags = [m.training for m in model.modules()]
    # In train mode, dropout would make the two forward passes differ and CKA < 1.
    cka = model_cka(model, model, input_batches())
    assert cka == {"logits": pytest.approx(1, abs=1e-12)}
    assert [m.training for m in model.modules()] == flags


def test_model_cka_logits_equal_accumulated_cka_of_the_outputs():
    a, b = mlp(1).eval(), mlp(2).eval()
    batches = input_batches()
    expected = CKAAccumulator(unbiased=True)
    with torch.no_grad():
        for x in batches:
            expected.update(a(x), b(x))
    # (x, y) tuples and bare tensors are both accepted; y is ignored.
    labelled = [(x, torch.zeros(len(x), dtype=torch.long)) for x in batches]
    for given in (batches, labelled):
        assert model_cka(a, b, given)["logits"] == pytest.approx(expected.compute(), rel=1e-12)


def test_model_cka_layers_capture_module_outputs_before_in_place_ops():
    torch.manual_seed(0)
    a, b = (build_model("resnet18", 2, 3, 10).eval() for _ in range(2))
    batches = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    cka = model_cka(a, b, batches, layers=["bn1", "layer1.0"])
    assert set(cka) == {"logits", "bn1", "layer1.0"}
    # ResNet applies ReLU(inplace=True) to bn1's output: the value must be bn1's own output.
    expected = CKAAccumulator(unbiased=True)
    with torch.no_grad():
        for x in batches:
            expected.update(a.bn1(a.conv1(x)), b.bn1(b.conv1(x)))
    assert cka["bn1"] == pytest.approx(expected.compute(), rel=1e-10)


def test_model_cka_unknown_layer_raises_config_error():
    with pytest.raises(ConfigError, match="layers='fc9'"):
        model_cka(mlp(0), mlp(1), input_batches(), layers=["fc9"])


def test_mean_pairwise_cka_covers_every_seed_pair_and_averages_them():
    models = [mlp(seed) for seed in range(3)]
    batches = input_batches()
    # A one-shot generator: every pair must come from a single pass over the batches.
    result = mean_pairwise_cka(models, (x for x in batches), layers=["1"])
    assert set(result["pairs"]) == {"0-1", "0-2", "1-2"}
    for pair, cka in result["pairs"].items():
        i, j = (int(s) for s in pair.split("-"))
        assert cka == pytest.approx(model_cka(models[i], models[j], batches, layers=["1"]))
    for key in ("logits", "1"):
        expected = np.mean([cka[key] for cka in result["pairs"].values()])
        assert result["mean"][key] == pytest.approx(expected, rel=1e-12)


def test_mean_pairwise_cka_needs_two_models():
    with pytest.raises(ConfigError, match="models=1"):
        mean_pairwise_cka([mlp(0)], input_batches())
