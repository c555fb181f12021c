"""Class-stratified subsets for the data-fraction (load) axis."""

from __future__ import annotations

import torch


def stratified_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of round(fraction * n_c) samples of every class c (at least one), sorted.

    Deterministic given `seed`: the same seed always selects the same samples, and the
    subset for a smaller fraction is not necessarily contained in a larger one.
    """
    if fraction == 1.0:
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in labels.unique(sorted=True):
        members = (labels == c).nonzero().flatten()
        keep = max(1, round(fraction * len(members)))
        chosen.append(members[torch.randperm(len(members), generator=generator)[:keep]])
    return torch.cat(chosen).sort().values


def fixed_subset(n: int, samples: int | None, seed: int = 0) -> torch.Tensor:
    """Indices of `samples` of n items (all when None or larger), the same for every run:
    the fixed evaluation data of the landscape metrics."""
    if samples is None or samples >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:samples].sort().values
