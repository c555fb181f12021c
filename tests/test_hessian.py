"""Hessian metrics against a dense oracle: the full Hessian of the same mean loss from
torch.autograd.functional.hessian, eigendecomposed in float64."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ptmz.errors import ConfigError
from ptmz.landscape.hessian import (
    HessianSettings,
    exact_trace,
    graph_bytes_per_sample,
    hessian_metrics,
    hutchinson_trace,
    hvp_fn,
    split_for_memory,
    top_eigenvalues,
    trainable_parameters,
)
from ptmz.objectives import cross_entropy


def metrics(model, data, **settings):
    return hessian_metrics(model, data, HessianSettings(**settings))


SIZES = (4, 9, 6)  # unequal batch sizes: each sample must weigh the same


def mlp() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    return model, batches((5,), SIZES)


def conv_bn() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Conv -> BatchNorm -> tanh -> pool -> linear, 135 parameters, with running statistics and
    affine parameters far from their defaults so that eval-mode BatchNorm matters."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3),
    ).double()
    bn = model[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.3, 3.0)
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-0.5, 0.5)
    return model, batches((2, 4, 4), SIZES)


def batches(
    shape: tuple[int, ...], sizes: tuple[int, ...]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return [
        (
            torch.randn(s, *shape, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (s,), generator=g),
        )
        for s in sizes
    ]


def dense_hessian(model: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The oracle: Hessian of the summed cross-entropy / N, as a function of a flat vector."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    params = trainable_parameters(model)
    shapes = [p.shape for p in params]
    buffers = dict(model.named_buffers())
    total = sum(len(y) for _, y in data)

    def loss(flat: torch.Tensor) -> torch.Tensor:
        pieces = flat.split([math.prod(s) for s in shapes])
        values = {n: x.view(s) for n, x, s in zip(names, pieces, shapes, strict=True)}
        return (
            sum(
                F.cross_entropy(functional_call(model, (values, buffers), (x,)), y, reduction="sum")
                for x, y in data
            )
            / total
        )

    flat = torch.cat([p.detach().reshape(-1) for p in params]).double()
    was_training = model.training
    model.eval()
    hessian = torch.autograd.functional.hessian(loss, flat)
    model.train(was_training)
    return hessian


@pytest.fixture(params=[mlp, conv_bn], ids=["mlp", "conv_bn"])
def problem(request):
    model, data = request.param()
    return model, data, dense_hessian(model, data)


def test_oracle_is_symmetric_and_indefinite(problem):
    """Guard the oracle itself: a symmetric Hessian with both signs, so the sign convention of
    'top' (most positive, not largest magnitude) is exercised."""
    _, _, h = problem
    spectrum = torch.linalg.eigvalsh(h)
    assert torch.allclose(h, h.T, atol=1e-12)
    assert spectrum[0] < 0 < spectrum[-1]


@pytest.mark.parametrize("share", [math.inf, 0, 0.5, 0.2], ids=["all", "none", "half", "fifth"])
def test_hvp_matches_dense(problem, share):
    """The whole graph cached, every batch recomputed per HVP, or the samples that fit a
    memory budget (a share of the whole graph's bytes) cached and the rest recomputed in
    pieces: the same H v."""
    model, data, h = problem
    per_sample = 2 * graph_bytes_per_sample(model, data[0], cross_entropy)  # with its backward
    budget = share * per_sample * sum(len(y) for _, y in data) if share else 0
    cached, pieces = split_for_memory(model, data, cross_entropy, budget)
    if share in (0.5, 0.2):  # some of each, and never more alive at once than the budget
        assert cached is not None and pieces
        biggest = max(len(y) for _, y in pieces)
        assert (len(cached[1]) + biggest) * per_sample <= budget
    v = torch.randn(h.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    hv = hvp_fn(model, data, max_cache_bytes=budget)(v)
    assert torch.allclose(hv, h @ v, rtol=1e-9, atol=1e-12)


def test_top_eigenvalues_match_dense(problem):
    model, data, h = problem
    expected = torch.linalg.eigvalsh(h).flip(0)[:3]
    result = metrics(model, data, top_k=3, tol=1e-6, trace_probes=2)
    assert result.eigenvalues == pytest.approx(expected.tolist(), rel=1e-3)
    assert 3 <= result.eigen_iterations <= h.shape[0] and result.eigen_converged


def test_eigenvalues_short_of_their_tolerance_say_so(problem):
    model, data, _ = problem
    with pytest.warns(RuntimeWarning, match="not converged"):
        result = metrics(model, data, top_k=3, max_iter=3, tol=1e-12, trace_probes=2)
    assert result.eigen_iterations == 3 and not result.eigen_converged
    assert result.to_dict()["eigen_converged"] is False


def test_top_eigenvalue_at_default_tolerance(problem):
    model, data, h = problem
    result = metrics(model, data, trace_probes=2)
    assert result.eigenvalues == pytest.approx([torch.linalg.eigvalsh(h)[-1].item()], rel=1e-3)


@pytest.mark.parametrize("method", ["hutchinson", "deflated"])
def test_trace_within_three_standard_errors(problem, method):
    """Both estimators on both networks, whose spectra have a negative part (the oracle test
    above), with a fixed budget of probes and a Krylov space far smaller than the network."""
    model, data, h = problem
    settings = dict(trace=method, trace_rtol=0, trace_probes=200, trace_deflation=4)
    result = metrics(model, data, max_iter=4, tol=0.5, **settings)
    assert result.trace_probes == 200 and result.trace_method == method
    assert result.trace_deflated == (4 if method == "deflated" else 0) < h.shape[0] / 10
    assert result.trace_stderr > 0 and result.trace_rtol_met is None
    assert abs(result.trace - torch.trace(h).item()) <= 3 * result.trace_stderr


def test_deflated_trace_is_exact_on_an_invariant_krylov_space(problem):
    """Lanczos run to the whole space: the exact part is the whole trace, the probes see
    nothing (a lost exact part, or probes not projected off the basis, show here)."""
    model, data, h = problem
    n = h.shape[0]
    result = metrics(model, data, max_iter=n, trace_deflation=n, trace_probes=10)
    assert result.trace == pytest.approx(torch.trace(h).item(), rel=1e-8)
    assert result.trace_stderr <= 1e-8 * abs(result.trace)


def outliers_and_bulk(n: int = 80) -> torch.Tensor:
    """A Hessian-like symmetric matrix: three outliers above a bulk with a negative part."""
    g = torch.Generator().manual_seed(4)
    bulk = torch.rand(n - 3, generator=g, dtype=torch.float64) * 4 - 1
    spectrum = torch.cat([torch.tensor([60.0, 35.0, 20.0], dtype=torch.float64), bulk])
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q @ torch.diag(spectrum) @ q.T


def test_deflated_trace_is_unbiased_with_an_honest_and_smaller_stderr():
    """1000 independent runs of 10 probes each: the deflated estimates average to tr A, their
    spread is what each run's stderr says it is, and it is several times smaller than plain
    Hutchinson's, whose variance the outliers dominate."""
    a = outliers_and_bulk()
    n, exact = a.shape[0], torch.trace(a).item()

    def estimates(deflated: bool) -> tuple[torch.Tensor, torch.Tensor]:
        means, stderrs = [], []
        for seed in range(1000):
            generator = torch.Generator().manual_seed(seed)
            hvp = lambda v: a @ v  # noqa: E731
            eigen = top_eigenvalues(hvp, n, 1, 6, 0.5, generator, min_steps=6) if deflated else None
            estimate = hutchinson_trace(hvp, n, 10, generator, deflate=eigen)
            means.append(estimate.mean)
            stderrs.append(estimate.stderr)
        return torch.tensor(means), torch.tensor(stderrs)

    deflated, stderrs = estimates(True)
    plain, _ = estimates(False)
    spread = deflated.std().item()
    assert abs(deflated.mean().item() - exact) <= 4 * spread / math.sqrt(len(deflated))
    assert stderrs.pow(2).mean().sqrt().item() == pytest.approx(spread, rel=0.15)
    assert spread < plain.std().item() / 4


def test_trace_stops_at_its_relative_standard_error():
    a = outliers_and_bulk()
    hvp, n = (lambda v: a @ v), a.shape[0]
    generator = torch.Generator().manual_seed(0)
    eigen = top_eigenvalues(hvp, n, 1, 6, 0.5, generator, min_steps=6)
    met = hutchinson_trace(hvp, n, 500, generator, deflate=eigen, rtol=0.01, min_probes=10)
    assert met.rtol_met and 10 <= met.probes < 500
    assert met.stderr <= 0.01 * abs(met.mean)
    short = hutchinson_trace(hvp, n, 12, generator, rtol=1e-6)
    assert short.probes == 12 and short.rtol_met is False


def test_trace_exact_with_every_basis_vector(problem):
    model, data, h = problem
    estimate = exact_trace(hvp_fn(model, data), h.shape[0])
    assert estimate.probes == h.shape[0]
    assert estimate.mean == pytest.approx(torch.trace(h).item(), rel=1e-6)


def test_density_is_a_probability_measure_on_the_spectrum(problem):
    model, data, h = problem
    spectrum = torch.linalg.eigvalsh(h)
    slack = 1e-6 * spectrum.abs().max().item()
    result = metrics(
        model, data, trace_probes=2, density=True, density_iter=h.shape[0], density_runs=3
    )
    nodes, weights = result.density
    assert len(nodes) == len(weights) > 3
    assert sum(weights) == pytest.approx(1.0, abs=1e-9)
    assert min(weights) >= 0
    assert spectrum[0].item() - slack <= min(nodes)
    assert max(nodes) <= spectrum[-1].item() + slack
    # A full-length Lanczos run reaches the extreme eigenvalues themselves.
    assert max(nodes) == pytest.approx(spectrum[-1].item(), rel=1e-6)


def test_deterministic_given_seed():
    model, data = conv_bn()
    settings = {"trace_probes": 20, "density": True, "density_iter": 10}
    first = metrics(model, data, seed=5, **settings)
    assert metrics(model, data, seed=5, **settings) == first
    assert metrics(model, data, seed=6, **settings).trace != first.trace


def test_model_left_as_it_was():
    """Training flags restored (each submodule's own), parameters and BN statistics untouched:
    had the model run in train mode, BatchNorm would have updated its running statistics."""
    model, data = conv_bn()
    model.train()
    model[2].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics(model, data, trace_probes=2)
    assert [m.training for m in model.modules()] == [True, True, True, False, True, True, True]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_train_mode_model_gets_eval_mode_hessian():
    model, data = conv_bn()
    h = dense_hessian(model, data)  # eval mode
    model.train()
    result = metrics(model, data, tol=1e-6, trace_probes=2)
    assert result.eigenvalues[0] == pytest.approx(torch.linalg.eigvalsh(h)[-1].item(), rel=1e-3)


def test_top_means_most_positive_not_largest_magnitude():
    """On diag(-10, 3, 2, 1, 0.5) power iteration would find -10; we report 3 then 2."""
    spectrum = torch.tensor([-10.0, 3.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    a = q @ torch.diag(spectrum) @ q.T
    pairs = top_eigenvalues(lambda v: a @ v, 5, 2, 50, 1e-8, torch.Generator().manual_seed(0))
    assert pairs.values == pytest.approx([3.0, 2.0], rel=1e-8)
    for value, vector in zip(pairs.values, pairs.vectors, strict=True):
        assert torch.allclose(a @ vector, value * vector, atol=1e-6)


def test_result_is_json_friendly():
    model, data = mlp()
    result = metrics(model, data, trace_probes=5, density=True, density_iter=5)
    out = json.loads(json.dumps(result.to_dict()))
    assert out["trace_probes"] == 5
    assert len(out["density"]["nodes"]) == len(out["density"]["weights"]) == 5
    assert out["eigenvalues"] == result.eigenvalues


@pytest.mark.parametrize(
    ("key", "kwargs"),
    [
        ("batches", {"batches": []}),
        ("top_k", {"top_k": 0}),
        ("trace_probes", {"trace_probes": 1}),
        ("trace", {"trace": "hutch"}),
        ("trace_rtol", {"trace_rtol": -0.1}),
        ("trace_deflation", {"trace_deflation": -1}),
        ("trace_min_probes", {"trace_min_probes": 1}),
        ("max_iter", {"top_k": 4, "max_iter": 3}),
        ("density_iter", {"density": True, "density_iter": 0}),
        ("density_runs", {"density": True, "density_runs": 0}),
    ],
)
def test_bad_inputs_name_the_key(key, kwargs):
    model, data = mlp()
    kwargs = {"batches": data} | kwargs
    with pytest.raises(ConfigError) as error:
        metrics(model, kwargs.pop("batches"), **kwargs)
    assert error.value.key == key


def test_progress_tells_the_phase_and_the_estimate():
    model, data = mlp()
    lines: list[str] = []
    result = hessian_metrics(model, data, HessianSettings(trace_probes=12), progress=lines.append)
    lanczos = [line for line in lines if line.startswith("Lanczos step")]
    probes = [line for line in lines if line.startswith("probe")]
    assert len(lanczos) == result.eigen_iterations and len(lanczos) + len(probes) + 1 == result.hvps
    assert probes[-1].startswith(f"probe {result.trace_probes}/12: trace {result.trace:.5g} ± ")
