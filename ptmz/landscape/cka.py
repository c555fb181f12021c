"""Linear CKA between the representations that two models give the same inputs.

Definition (Kornblith et al. 2019). For features X (n x p) and Y (n x q) of the same n inputs,
with linear-kernel Gram matrices K = X X^T and L = Y Y^T (n x n),

    CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) * HSIC(L, L)).

It is 1 for identical representations and is invariant to orthogonal transforms and isotropic
scaling of either side, but not to other invertible linear maps. Features with more than two
dimensions (conv maps) are flattened per input.

Two estimators of HSIC:

- biased: tr(K H L H) / (n-1)^2 with the centering matrix H = I - 11^T/n. For the linear
  kernel the resulting CKA equals ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred
  features. Its bias depends on n, so its value drifts with the batch size.
- unbiased (Song et al. 2012): with K~, L~ the Gram matrices with zeroed diagonals,
  [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3)).
  It needs n > 3 and can be slightly negative when the true HSIC is near 0.

Minibatch CKA (Nguyen et al. 2021, `CKAAccumulator`): HSIC(X,Y), HSIC(X,X) and HSIC(Y,Y) are
averaged over minibatches before the ratio is taken. With the unbiased estimator each average
is an unbiased estimate of the population HSIC, so the result approaches the population CKA as
batches are added, whatever the batch size; this is why the accumulator defaults to it.

Why centred float64 features: both estimators are invariant to shifting either side's
features by a constant vector, so each batch's features are centred (column means removed) in
float64 before the Gram matrices are formed. Uncentred, the Gram entries are dominated by the
features' mean (logits of a trained net are far from centred) and the estimators remove it by
subtracting sums of n^2 such entries from each other, which cancels digits: with an offset of
1e3 on N(0, 1) features the unbiased CKA was off by 5e-4 even in float64, and at 1e4 it was
inf. Centred first, offsets up to 1e6 agree with a float64 reference to 1e-9.

The published zoo measured the logits of the seeds of one grid point on the first 10 batches of
128 test images with the *biased* estimator, one CKA per batch averaged over the batches and
over all seed pairs: ``mean_pairwise_cka(seed_models, batches, unbiased=False,
per_batch=True)["mean"]["logits"]`` (task=cka_published). ptmz's default (task=cka) is the
unbiased minibatch CKA, which does not depend on the batch size. The two are not comparable
where the logits are wide: the biased estimator's floor for unrelated features grows with
their dimension relative to the batch (about 0.44 for 100 and 0.61 for 200 logits at n = 128).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ptmz.errors import ConfigError
from ptmz.models.mode import eval_mode

LOGITS = "logits"


def hsic(k: Tensor, l: Tensor, unbiased: bool) -> Tensor:  # noqa: E741 (K, L as in the papers)
    """HSIC of two n x n Gram matrices: Song et al.'s unbiased estimator or tr(KHLH)/(n-1)^2."""
    _check_grams(k, l, unbiased)
    return _unbiased_hsic(k, l) if unbiased else _biased_hsic(k, l)


def linear_cka(x: Tensor, y: Tensor, unbiased: bool = False) -> float:
    """CKA of features x (n, p) and y (n, q) of the same n inputs, from this one batch."""
    kx, ky = _grams(x, y)
    return _ratio(hsic(kx, ky, unbiased), hsic(kx, kx, unbiased), hsic(ky, ky, unbiased))


class CKAAccumulator:
    """Minibatch CKA: mean HSIC(X,Y) / sqrt(mean HSIC(X,X) * mean HSIC(Y,Y)) over batches."""

    def __init__(self, unbiased: bool = True) -> None:
        self.unbiased = unbiased
        self.batches = 0
        # Running sums of HSIC(X,Y), HSIC(X,X), HSIC(Y,Y).
        self._sums = torch.zeros(3, dtype=torch.float64)

    def update(self, x: Tensor, y: Tensor) -> None:
        """Add one batch of features x (n, ...) and y (n, ...) of the same n inputs."""
        self.update_grams(*_grams(x, y))

    def update_grams(self, kx: Tensor, ky: Tensor) -> None:
        """Add one batch given as float64 Gram matrices X X^T and Y Y^T."""
        ky, u = ky.to(kx.device), self.unbiased
        terms = torch.stack([hsic(kx, ky, u), hsic(kx, kx, u), hsic(ky, ky, u)])
        self._sums = self._sums.to(terms.device) + terms
        self.batches += 1

    def compute(self) -> float:
        if self.batches == 0:
            raise ConfigError("batches", 0, "at least one batch of features before compute()")
        return _ratio(*(self._sums / self.batches))


class PerBatchCKA(CKAAccumulator):
    """CKA per batch, averaged over batches (the published zoo's setting, with the biased
    estimator): unlike minibatch CKA its value depends on the batch size through each
    batch's bias."""

    def update_grams(self, kx: Tensor, ky: Tensor) -> None:
        ky, u = ky.to(kx.device), self.unbiased
        cka = hsic(kx, ky, u) / torch.sqrt(hsic(kx, kx, u) * hsic(ky, ky, u))
        self._sums = self._sums.to(cka.device) + cka
        self.batches += 1

    def compute(self) -> float:
        if self.batches == 0:
            raise ConfigError("batches", 0, "at least one batch of features before compute()")
        return (self._sums[0] / self.batches).item()


def model_cka(
    model_a: nn.Module,
    model_b: nn.Module,
    batches: Iterable[Tensor | tuple],
    *,
    layers: Sequence[str] | None = None,
    unbiased: bool = True,
    per_batch: bool = False,
) -> dict[str, float]:
    """Minibatch CKA of two models' representations of the same inputs (`per_batch`: the
    mean over batches of each batch's CKA, `PerBatchCKA`).

    Keys: "logits" (the models' outputs) and each name in `layers`, a module name as listed by
    `model.named_modules()` whose output is captured with a forward hook (the last call, if
    the module runs more than once per forward). Batches are input tensors or (x, y) tuples
    whose y is ignored. Both models run in eval mode under no_grad; each module's train/eval
    flag is restored afterwards.
    """
    return _pairwise_cka([model_a, model_b], batches, layers, unbiased, per_batch)[(0, 1)]


def mean_pairwise_cka(
    models: Sequence[nn.Module],
    batches: Iterable[Tensor | tuple],
    *,
    layers: Sequence[str] | None = None,
    unbiased: bool = True,
    per_batch: bool = False,
) -> dict[str, Any]:
    """`model_cka` for every pair i < j of models (seeds) and its mean over pairs.

    Returns {"pairs": {"0-1": {key: cka}, ...}, "mean": {key: mean cka}}. The batches are
    iterated once, so a one-shot iterator such as a data loader's is fine.
    """
    if len(models) < 2:
        raise ConfigError("models", len(models), "at least 2 models (seeds) to compare")
    by_pair = _pairwise_cka(models, batches, layers, unbiased, per_batch)
    pairs = {f"{i}-{j}": cka for (i, j), cka in by_pair.items()}
    keys = next(iter(pairs.values()))
    mean = {key: sum(cka[key] for cka in pairs.values()) / len(pairs) for key in keys}
    return {"pairs": pairs, "mean": mean}


def _pairwise_cka(
    models: Sequence[nn.Module],
    batches: Iterable[Tensor | tuple],
    layers: Sequence[str] | None,
    unbiased: bool,
    per_batch: bool,
) -> dict[tuple[int, int], dict[str, float]]:
    """CKA per key for every model pair, from one pass over the batches."""
    layers = list(layers or [])
    keys = [LOGITS, *layers]
    pairs = list(itertools.combinations(range(len(models)), 2))
    accumulator = PerBatchCKA if per_batch else CKAAccumulator
    accumulators = {pair: {key: accumulator(unbiased) for key in keys} for pair in pairs}
    with eval_mode(*models), torch.no_grad():
        for batch in batches:
            x = batch[0] if isinstance(batch, tuple | list) else batch
            grams = [_model_grams(model, x, layers) for model in models]
            for (i, j), by_key in accumulators.items():
                for key, accumulator in by_key.items():
                    accumulator.update_grams(grams[i][key], grams[j][key])
    return {
        pair: {key: a.compute() for key, a in by_key.items()}
        for pair, by_key in accumulators.items()
    }


def _model_grams(model: nn.Module, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
    """Gram matrices of the model's logits and of the named modules' outputs on inputs x."""
    modules = dict(model.named_modules())
    grams: dict[str, Tensor] = {}

    def capture(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            # Form the Gram matrix now, before a later in-place op (ResNet's ReLU(inplace=True)
            # after bn1) can overwrite the captured output.
            grams[name] = _output_gram(name, output)

        return hook

    handles = [_module(modules, name).register_forward_hook(capture(name)) for name in layers]
    try:
        param = next(model.parameters(), None)
        logits = model(x if param is None else x.to(param.device))
    finally:
        for handle in handles:
            handle.remove()
    grams[LOGITS] = _output_gram("the model", logits)
    return grams


def _module(modules: dict[str, nn.Module], name: str) -> nn.Module:
    if name not in modules:
        examples = ", ".join(list(modules)[1:6])
        raise ConfigError("layers", name, f"a name from model.named_modules(), e.g. {examples}")
    return modules[name]


def _output_gram(source: str, output: Any) -> Tensor:
    if not isinstance(output, Tensor):
        raise ConfigError(f"output of {source}", type(output).__name__, "a tensor (n, ...)")
    return _gram(output)


def _gram(x: Tensor) -> Tensor:
    """Linear-kernel Gram matrix X X^T of the column-centred features in float64, one row per
    input, trailing dims flattened."""
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    x = x - x.mean(0, keepdim=True)
    return x @ x.T


def _grams(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if x.shape[0] != y.shape[0]:
        raise ConfigError("y.shape[0]", y.shape[0], f"{x.shape[0]}, one row per input as in x")
    return _gram(x), _gram(y)


def _check_grams(kx: Tensor, ky: Tensor, unbiased: bool) -> None:
    n = kx.shape[0]
    if kx.shape != (n, n) or ky.shape != kx.shape:
        allowed = "two n x n Gram matrices of the same shape"
        raise ConfigError("gram shapes", (tuple(kx.shape), tuple(ky.shape)), allowed)
    if n < min_inputs(unbiased):
        estimator = "unbiased" if unbiased else "biased"
        raise ConfigError(
            "batch size", n, f"at least {min_inputs(unbiased)} inputs for the {estimator} HSIC"
        )


def min_inputs(unbiased: bool) -> int:
    """The fewest inputs in a batch the (un)biased HSIC is defined on."""
    return 4 if unbiased else 2


def _biased_hsic(kx: Tensor, ky: Tensor) -> Tensor:
    n = kx.shape[0]
    # H is idempotent, so tr(KHLH) = tr((HKH)(HLH)); and tr(AB) = sum(A * B^T).
    return (_center(kx) * _center(ky).T).sum() / (n - 1) ** 2


def _center(k: Tensor) -> Tensor:
    """H K H: subtract row and column means, add back the grand mean."""
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def _unbiased_hsic(kx: Tensor, ky: Tensor) -> Tensor:
    n = kx.shape[0]
    kx, ky = _zero_diagonal(kx), _zero_diagonal(ky)
    trace = (kx * ky.T).sum()
    sums = kx.sum() * ky.sum() / ((n - 1) * (n - 2))
    cross = 2 * (kx.sum(0) @ ky.sum(1)) / (n - 2)
    return (trace + sums - cross) / (n * (n - 3))


def _zero_diagonal(k: Tensor) -> Tensor:
    return k - torch.diag(k.diagonal())


def _ratio(xy: Tensor, xx: Tensor, yy: Tensor) -> float:
    """CKA from the three HSICs; nan when a representation is constant (zero HSIC with itself)."""
    return (xy / torch.sqrt(xx * yy)).item()
