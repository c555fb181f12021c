"""Hessian of a model's loss: top eigenvalues (Lanczos), trace (Hutchinson), density (SLQ).

Definition. ``L(θ) = (1/N) Σ_i loss_fn(f(x_i; θ), y_i)`` over all N samples in ``batches``,
every sample weighted equally whatever the batch sizes; θ is every parameter with
``requires_grad`` (BatchNorm weight and bias included, as in PyHessian); the model is in eval
mode, so BatchNorm normalises with its running statistics, which are constants; there is no
weight-decay term. ``H = ∇²L(θ)`` is the symmetric n×n Hessian, n = number of trainable
parameters. Vectors are flat, in the order of ``model.parameters()``.

Sign conventions. Eigenvalues are algebraic: ``eigenvalues[0]`` is the most positive eigenvalue
of H, not the one of largest magnitude (which is what PyHessian's power iteration returns, so
the two differ when negative curvature dominates). The trace is Σ λ_i, negative curvature
counting negative. Density nodes are eigenvalues on the same scale as H.

Algorithms.
  - Top-k eigenvalues: Lanczos with full reorthogonalisation from a Gaussian start vector,
    stopped once every top-k Ritz value θ has residual ‖Hy − θy‖ = β|s_m| ≤ tol·|θ| (then an
    eigenvalue of H lies within tol·|θ| of θ) and at least ``trace_deflation`` steps are made.
    ``eigen_iterations`` is the number of Lanczos steps, i.e. of Hessian-vector products (HVPs).
  - Trace, ``deflated`` (the default): the Lanczos run's orthonormal basis Q (m × n) spans a
    Krylov space that holds the top of the spectrum, which dominates the variance of a
    stochastic trace. Its part of the trace is exact and free, tr(QᵀHQ) = Σ α_j (the Lanczos
    diagonal); the rest, tr(P⊥HP⊥) with P⊥ = I − QQᵀ, is Hutchinson's mean of (P⊥z)ᵀH(P⊥z)
    over Rademacher probes z drawn independently of Q, so the sum is unbiased (the deflated
    Hutchinson estimator; Hutch++, Meyer et al. 2021, with a Krylov sketch). ``hutchinson``:
    plain ``mean(zᵀHz)``. Either way the standard error is the probes' std/√probes (ddof=1);
    probing stops once it is at most ``trace_rtol``·|trace| (after ``trace_min_probes``), or
    after ``trace_probes``. A stop that looks at the samples biases the mean by a small
    fraction of the standard error; ``trace_rtol=0`` runs exactly ``trace_probes`` probes.
  - Density: stochastic Lanczos quadrature (Ghorbani et al. 2019): for each of ``density_runs``
    Rademacher starts, ``density_iter`` Lanczos steps; nodes are the Ritz values and weights the
    squared first components of the tridiagonal matrix's eigenvectors, averaged over runs (the
    weights sum to 1).

Random vectors come from one CPU ``torch.Generator`` seeded with ``seed``, so results are
deterministic for a given model, data and seed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ptmz.errors import ConfigError, choose
from ptmz.models.mode import eval_mode
from ptmz.objectives import Loss, cross_entropy

HVP = Callable[[Tensor], Tensor]
Batch = tuple[Tensor, Tensor]
Progress = Callable[[str], None]
TRACE_METHODS = {
    "deflated": "exact on the Lanczos run's Krylov space, Hutchinson on the rest",
    "hutchinson": "plain Hutchinson",
}


@dataclass(frozen=True)
class HessianResult:
    eigenvalues: list[float]  # top-k, most positive first
    eigen_iterations: int  # Lanczos steps = HVPs of the run behind the eigenvalues (and deflation)
    eigen_converged: bool  # every top-k residual within tol; False: max_iter ran out first
    trace: float
    trace_stderr: float  # of the estimator used: the probes' std/sqrt(probes), ddof=1
    trace_probes: int  # probes used
    trace_method: str  # deflated or hutchinson
    trace_deflated: int  # dimension of the space whose trace is exact (0: plain Hutchinson)
    trace_rtol_met: bool | None  # stderr <= trace_rtol·|trace| reached; None: no target set
    hvps: int  # Hessian-vector products in all
    density: tuple[list[float], list[float]] | None  # SLQ (nodes, weights), if asked for

    def to_dict(self) -> dict:
        """Plain JSON-friendly values; the density becomes {"nodes": [...], "weights": [...]}."""
        out = asdict(self)
        if self.density is not None:
            out["density"] = dict(zip(("nodes", "weights"), self.density, strict=True))
        return out


@dataclass(frozen=True)
class Eigenpairs:
    values: list[float]  # most positive first
    vectors: Tensor  # (k, n) unit Ritz vectors, row i belongs to values[i]
    iterations: int  # Lanczos steps (HVPs)
    converged: bool  # every value's residual within tol
    basis: Tensor  # (m, n) the run's orthonormal Lanczos vectors
    basis_trace: float  # tr(QᵀHQ) over that basis: the sum of the Lanczos diagonal


@dataclass(frozen=True)
class TraceEstimate:
    mean: float
    stderr: float
    probes: int
    rtol_met: bool | None = None  # None: a fixed number of probes


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def hvp_fn(
    model: nn.Module,
    batches: list[tuple[Tensor, Tensor]],
    loss_fn: Loss = cross_entropy,
    *,
    max_cache_bytes: float = math.inf,
) -> HVP:
    """``v -> Hv`` for the mean loss over all samples in ``batches`` (see the module docstring).

    ``loss_fn(model, inputs, targets)`` must return the mean over its batch (the zoo's
    objective: cross-entropy, or a PDE loss that differentiates the inputs too). ``v`` is a
    flat vector of any dtype and device; Hv comes back in v's dtype and device.

    HVPs are double backward. The gradient graph of as many samples as ``max_cache_bytes``
    allows is built once and each HVP only backpropagates through it; the other samples are
    recomputed per HVP in pieces (forward, backward, double backward: about 3x the cost), so
    that the graphs alive at once fit the budget (`split_for_memory`). For ResNet-18 width 8
    on 640 32x32 inputs (2-core CPU) a cached HVP took 2.4 s, against 3.5 s for
    forward-over-reverse
    ``torch.func.jvp(grad(loss))`` and 3.3-3.5 s recomputed; on 640 8x8 digits 0.23 s against
    0.79 s for PyHessian's per-batch recomputation. Batches are combined as a size-weighted
    mean of batch means: a loss that is not a mean over samples (the PINN's sum of per-kind
    means) needs the whole graph cached (the default, an unbounded budget).
    """
    if not batches:
        raise ConfigError("batches", batches, "at least one (inputs, targets) batch")
    params = trainable_parameters(model)
    device = params[0].device

    def gradient(inputs: Tensor, targets: Tensor) -> tuple[Tensor, ...]:
        return _gradient_graph(model, loss_fn, inputs, targets)

    def hessian_times(grads: tuple[Tensor, ...], v: Tensor, retain: bool) -> Tensor:
        pieces = v.to(params[0].dtype).to(device).split([p.numel() for p in params])
        pairs = [(g, x.view_as(g)) for g, x in zip(grads, pieces, strict=True) if g.requires_grad]
        hv = torch.autograd.grad(
            [g for g, _ in pairs],
            params,
            [piece for _, piece in pairs],
            retain_graph=retain,
            allow_unused=True,
            materialize_grads=True,
        )
        return torch.cat([h.reshape(-1) for h in hv]).to(v)

    total = sum(len(targets) for _, targets in batches)
    cached, recomputed = split_for_memory(model, batches, loss_fn, max_cache_bytes)
    graph = gradient(*cached) if cached is not None else ()
    cached_share = len(cached[1]) / total if cached is not None else 0.0

    def hvp(v: Tensor) -> Tensor:
        hv = hessian_times(graph, v, retain=True) * cached_share if graph else 0
        for inputs, targets in recomputed:  # each piece's mean-loss Hessian, by its share
            hv = hv + hessian_times(gradient(inputs, targets), v, retain=False) * (
                len(targets) / total
            )
        return hv

    return hvp


def _gradient_graph(
    model: nn.Module, loss_fn: Loss, inputs: Tensor, targets: Tensor
) -> tuple[Tensor, ...]:
    """The loss gradient of every trainable parameter, with its graph (for double backward)."""
    params = trainable_parameters(model)
    with eval_mode(model):
        loss = loss_fn(model, inputs.to(params[0].device), targets.to(params[0].device))
    # allow_unused/materialize: a parameter the loss does not use has zero Hessian rows.
    return torch.autograd.grad(
        loss, params, create_graph=True, allow_unused=True, materialize_grads=True
    )


def graph_bytes_per_sample(model: nn.Module, batch: Batch, loss_fn: Loss) -> float:
    """The bytes of the tensors the gradient graph of `batch` saves (its parameters aside),
    per sample."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def count(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        _gradient_graph(model, loss_fn, *batch)
    return sum(saved.values()) / len(batch[1])


MEASURED_SAMPLES = 16


def split_for_memory(
    model: nn.Module, batches: list[Batch], loss_fn: Loss, budget: float
) -> tuple[Batch | None, list[Batch]]:
    """The samples whose gradient graph is built once (None: none) and the pieces built anew
    for every HVP, so that the graphs alive at once and the HVP's backward through them fit
    `budget` bytes (measured on the first samples: `graph_bytes_per_sample`, doubled). All fit:
    one graph of every sample. Else the pieces hold what a quarter of the budget does (at
    least one sample) and the cached samples what is left. A budget of 0 recomputes the
    batches as given."""
    if budget == math.inf:
        return _joined(batches), []
    if budget <= 0:
        return None, batches
    inputs, targets = _joined(batches)
    # measured on a few samples: the graph of a whole batch may be what does not fit; an HVP's
    # backward through a graph allocates about as much again as the graph holds
    first = (batches[0][0][:MEASURED_SAMPLES], batches[0][1][:MEASURED_SAMPLES])
    per_sample = 2 * graph_bytes_per_sample(model, first, loss_fn)
    if len(targets) * per_sample <= budget:
        return (inputs, targets), []
    piece = max(1, int(budget / 4 / per_sample))
    kept = max(0, int((budget - piece * per_sample) / per_sample))
    cached = (inputs[:kept], targets[:kept]) if kept else None
    pieces = list(zip(inputs[kept:].split(piece), targets[kept:].split(piece), strict=True))
    return cached, pieces


def _joined(batches: list[Batch]) -> Batch:
    inputs, targets = zip(*batches, strict=True)
    return torch.cat(inputs), torch.cat(targets)


def default_cache_bytes(device: torch.device) -> float:
    """The gradient graph's default budget: a quarter of the device's free memory, and on the
    CPU (memory other jobs on a node share) at most 1 GiB."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 4
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):  # not Linux: assume a laptop's 8 GiB
        available = 8 * 2**30
    return min(available / 4, 2**30)


def _at_least(key: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(key, value, f"an integer >= {minimum}")


def _check_rtol(rtol: float) -> None:
    if not (isinstance(rtol, int | float) and 0 <= rtol < math.inf):
        raise ConfigError("trace_rtol", rtol, "a number >= 0 (0: always trace_probes probes)")


def _gaussian(n: int, generator: torch.Generator, dtype: torch.dtype, device) -> Tensor:
    return torch.randn(n, generator=generator, dtype=dtype).to(device)


def _rademacher(n: int, generator: torch.Generator, dtype: torch.dtype, device) -> Tensor:
    return (torch.randint(0, 2, (n,), generator=generator) * 2 - 1).to(dtype).to(device)


@dataclass(frozen=True)
class _Krylov:
    alphas: list[float]  # diagonal of the tridiagonal T
    betas: list[float]  # off-diagonal of T, then ‖residual‖ after the last step
    basis: Tensor  # (m, n) orthonormal Lanczos vectors

    def ritz(self) -> tuple[Tensor, Tensor]:
        """Eigenvalues (ascending) and eigenvectors of T, in float64."""
        diagonal = torch.tensor(self.alphas, dtype=torch.float64)
        off = torch.tensor(self.betas[: len(self.alphas) - 1], dtype=torch.float64)
        return torch.linalg.eigh(torch.diag(diagonal) + torch.diag(off, 1) + torch.diag(off, -1))


def _lanczos(
    hvp: HVP, start: Tensor, steps: int, done: Callable[[_Krylov], bool] = lambda _: False
) -> _Krylov:
    """Up to ``steps`` Lanczos steps on H from ``start``, stopping early once ``done``.

    Full reorthogonalisation (classical Gram-Schmidt against every basis vector, twice: "twice is
    enough") keeps the basis orthonormal, so no spurious copies of converged eigenvalues appear;
    it also subtracts the three-term recurrence's α q_j and β q_{j-1}. The run ends early when the
    residual vanishes: the Krylov space is then invariant and the Ritz values are exact. The
    basis grows as the run goes (a run stopping early holds no room for ``steps`` vectors).
    """
    steps = min(steps, start.numel())
    basis = start.new_empty(min(steps, 16), start.numel())
    basis[0] = start / start.norm()
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0  # running estimate of ‖H‖, to judge a vanishing residual
    for j in range(steps):
        w = hvp(basis[j])
        alphas.append(float(basis[j] @ w))
        for _ in range(2):  # out of place: hvp may hand back a tensor it still uses
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        betas.append(float(w.norm()))
        scale = max(scale, abs(alphas[-1]) + betas[-1])
        krylov = _Krylov(alphas, betas, basis[: j + 1])
        invariant = betas[-1] <= 100 * torch.finfo(w.dtype).eps * scale
        if j + 1 == steps or invariant or done(krylov):
            break
        if j + 1 == len(basis):
            room = basis.new_empty(min(len(basis), steps - len(basis)), basis.shape[1])
            basis = torch.cat([basis, room])
        basis[j + 1] = w / betas[-1]
    return krylov


def _top_ritz_converged(k: int, tol: float) -> Callable[[_Krylov], bool]:
    """True once each of the top-k Ritz values θ has residual β|s_m| <= tol·|θ|."""

    def done(krylov: _Krylov) -> bool:
        if len(krylov.alphas) < k:
            return False
        values, vectors = krylov.ritz()
        residuals = krylov.betas[-1] * vectors[-1, -k:].abs()
        return bool((residuals <= tol * values[-k:].abs()).all())

    return done


def top_eigenvalues(
    hvp: HVP,
    n: int,
    k: int,
    max_iter: int,
    tol: float,
    generator: torch.Generator,
    *,
    min_steps: int = 0,
    progress: Progress | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> Eigenpairs:
    """The k most positive eigenvalues of the n×n operator ``hvp`` and their vectors, by
    Lanczos (at most ``max_iter`` steps, at least ``min_steps`` where it has them: the Krylov
    space a deflated trace uses) to relative residual ``tol``; warns if not converged."""
    _at_least("top_k", k, 1)
    _at_least("max_iter", max_iter, k)
    converged = _top_ritz_converged(k, tol)

    def done(krylov: _Krylov) -> bool:
        if progress is not None:
            top = krylov.ritz()[0][-1]
            progress(f"Lanczos step {len(krylov.alphas)}/{max_iter}: top eigenvalue {top:.5g}")
        return len(krylov.alphas) >= min_steps and converged(krylov)

    krylov = _lanczos(hvp, _gaussian(n, generator, dtype, device), max_iter, done)
    values, vectors = krylov.ritz()
    reached = converged(krylov)
    if not reached:
        warnings.warn(
            f"Lanczos: top-{k} eigenvalues not converged to tol={tol} in {max_iter} steps",
            RuntimeWarning,
            stacklevel=2,
        )
    top = vectors[:, -k:].flip(1).to(krylov.basis)
    return Eigenpairs(
        values=values[-k:].flip(0).tolist(),
        vectors=top.T @ krylov.basis,
        iterations=len(krylov.alphas),
        converged=reached,
        basis=krylov.basis,
        basis_trace=sum(krylov.alphas),
    )


def probe_trace(hvp: HVP, probes: Iterable[Tensor]) -> TraceEstimate:
    """Hutchinson's ``mean(zᵀHz)`` over the given probes and its standard error.

    Unbiased for tr H whenever E[zzᵀ] = I; exact for the scaled basis √n·e_1..√n·e_n.
    """
    samples = torch.tensor([float(z @ hvp(z)) for z in probes], dtype=torch.float64)
    _at_least("trace_probes", len(samples), 2)
    stderr = samples.std(correction=1) / math.sqrt(len(samples))
    return TraceEstimate(float(samples.mean()), float(stderr), len(samples))


def hutchinson_trace(
    hvp: HVP,
    n: int,
    probes: int,
    generator: torch.Generator,
    *,
    deflate: Eigenpairs | None = None,
    rtol: float = 0.0,
    min_probes: int = 10,
    progress: Progress | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> TraceEstimate:
    """tr H from at most ``probes`` Rademacher probes, stopping once the standard error is at
    most ``rtol``·|estimate| after at least ``min_probes`` (``rtol`` 0: exactly ``probes``).
    With ``deflate`` (a Lanczos run on the same H), the trace on its basis is exact and the
    probes are projected off it (the deflated estimator of the module docstring)."""
    _at_least("trace_probes", probes, 2)
    _at_least("trace_min_probes", min_probes, 2)
    _check_rtol(rtol)
    basis = deflate.basis if deflate is not None else None
    exact = deflate.basis_trace if deflate is not None else 0.0
    samples: list[float] = []
    while len(samples) < probes:
        z = _rademacher(n, generator, dtype, device)
        if basis is not None:
            for _ in range(2):  # twice, as in Lanczos: float32 loses orthogonality in one pass
                z = z - basis.T @ (basis @ z)
        samples.append(float(z @ hvp(z)))
        if len(samples) < 2:
            continue
        values = torch.tensor(samples, dtype=torch.float64)
        mean = exact + float(values.mean())
        stderr = float(values.std(correction=1)) / math.sqrt(len(samples))
        if progress is not None:
            relative = stderr / abs(mean) if mean else math.inf
            progress(f"probe {len(samples)}/{probes}: trace {mean:.5g} ± {relative:.1%}")
        if rtol > 0 and len(samples) >= min_probes and stderr <= rtol * abs(mean):
            return TraceEstimate(mean, stderr, len(samples), True)
    return TraceEstimate(mean, stderr, len(samples), False if rtol > 0 else None)


def exact_trace(
    hvp: HVP, n: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
) -> TraceEstimate:
    """tr H from n HVPs, probing with every scaled basis vector √n·e_i: for small models and for
    checking the estimator (its stderr is then the spread of the diagonal, not an error)."""
    basis = torch.eye(n, dtype=dtype, device=device) * math.sqrt(n)
    return probe_trace(hvp, basis)


def slq_density(
    hvp: HVP,
    n: int,
    steps: int,
    runs: int,
    generator: torch.Generator,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> tuple[list[float], list[float]]:
    """Eigenvalue density of H by stochastic Lanczos quadrature: (nodes, weights) of the
    discrete measure Σ w_i δ(λ - node_i), averaged over ``runs`` Rademacher starts."""
    _at_least("density_iter", steps, 1)
    _at_least("density_runs", runs, 1)
    nodes: list[float] = []
    weights: list[float] = []
    for _ in range(runs):
        values, vectors = _lanczos(hvp, _rademacher(n, generator, dtype, device), steps).ritz()
        nodes += values.tolist()
        weights += (vectors[0] ** 2 / runs).tolist()
    return nodes, weights


class _Counted:
    """An HVP that counts its calls."""

    def __init__(self, hvp: HVP) -> None:
        self.hvp, self.calls = hvp, 0

    def __call__(self, v: Tensor) -> Tensor:
        self.calls += 1
        return self.hvp(v)


@dataclass(frozen=True)
class HessianSettings:
    """What `hessian_metrics` computes and to what accuracy (see the module docstring)."""

    top_k: int = 1
    max_iter: int = 100
    tol: float = 1e-3
    trace: str = "deflated"
    trace_deflation: int = 0
    trace_rtol: float = 0.05
    trace_min_probes: int = 10
    trace_probes: int = 100
    density: bool = False
    density_iter: int = 100
    density_runs: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        _at_least("top_k", self.top_k, 1)
        _at_least("max_iter", self.max_iter, self.top_k)
        choose("trace", self.trace, TRACE_METHODS)
        _at_least("trace_deflation", self.trace_deflation, 0)
        _at_least("trace_probes", self.trace_probes, 2)
        _at_least("trace_min_probes", self.trace_min_probes, 2)
        _check_rtol(self.trace_rtol)
        if self.density:
            _at_least("density_iter", self.density_iter, 1)
            _at_least("density_runs", self.density_runs, 1)


def hessian_metrics(
    model: nn.Module,
    batches: list[tuple[Tensor, Tensor]],
    settings: HessianSettings = HessianSettings(),
    *,
    loss_fn: Loss = cross_entropy,
    max_cache_bytes: float = math.inf,
    progress: Progress | None = None,
) -> HessianResult:
    """Top-k eigenvalues, trace and (optionally) density of the Hessian defined in the module
    docstring. The model's parameters and training flags are left as they were.
    `max_cache_bytes` bounds the memory of the cached gradient graph (see `hvp_fn`);
    `progress` is called with a line on each step (Lanczos step, probe)."""
    s = settings
    hvp = _Counted(hvp_fn(model, batches, loss_fn, max_cache_bytes=max_cache_bytes))
    params = trainable_parameters(model)
    n = sum(p.numel() for p in params)
    like = {"dtype": params[0].dtype, "device": params[0].device}
    generator = torch.Generator().manual_seed(s.seed)
    deflated = s.trace == "deflated"
    eigen = top_eigenvalues(
        hvp,
        n,
        s.top_k,
        s.max_iter,
        s.tol,
        generator,
        min_steps=min(s.trace_deflation, s.max_iter) if deflated else 0,
        progress=progress,
        **like,
    )
    estimate = hutchinson_trace(
        hvp,
        n,
        s.trace_probes,
        generator,
        deflate=eigen if deflated else None,
        rtol=s.trace_rtol,
        min_probes=s.trace_min_probes,
        progress=progress,
        **like,
    )
    spectrum = (
        slq_density(hvp, n, s.density_iter, s.density_runs, generator, **like)
        if s.density
        else None
    )
    return HessianResult(
        eigenvalues=eigen.values,
        eigen_iterations=eigen.iterations,
        eigen_converged=eigen.converged,
        trace=estimate.mean,
        trace_stderr=estimate.stderr,
        trace_probes=estimate.probes,
        trace_method=s.trace,
        trace_deflated=len(eigen.basis) if deflated else 0,
        trace_rtol_met=estimate.rtol_met,
        hvps=hvp.calls,
        density=spectrum,
    )
