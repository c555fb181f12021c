"""Predict a network's test accuracy from its weights: a ridge regression on statistics of the
flattened weights of an exported zoo, fitted on some runs and scored on runs it never saw.

Raw weight vectors of different seeds are not comparable coordinate by coordinate (hidden
units can be permuted freely), so each model is described by permutation-invariant statistics
of every tensor, cut out of its flat vector with the export's layout (the index map): mean,
standard deviation, and the 10/50/90% quantiles. Every width has the same tensors, so one
predictor serves the whole zoo.

    python launch.py -m                                            # the digits quickstart zoo
    python launch.py task=export population=zoos/digits_resnet18 epoch=all
    python examples/predict_accuracy.py zoos/digits_resnet18/export
"""

from __future__ import annotations

import argparse

import torch

from ptmz.data import ZooDataset

SPLITS = {"train": 0.6, "val": 0.2, "test": 0.2}  # by run: a run's epochs stay in one split
PENALTIES = (0.1, 1.0, 10.0, 100.0, 1000.0)  # ridge strengths, chosen on the val split
QUANTILES = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)


def features(vector: torch.Tensor, layout) -> torch.Tensor:
    """Mean, std and quantiles of each tensor in the flat `vector`."""
    parts = []
    for entry in layout.index_map():
        w = vector[entry["start"] : entry["stop"]].double()
        parts += [w.mean(), w.std(unbiased=False), *torch.quantile(w, QUANTILES)]
    return torch.stack(parts)


def load(path: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, test accuracy) of every checkpoint of the split's runs."""
    models = ZooDataset(path, split=split, fractions=SPLITS, flatten=True)
    x, y = [], []
    for i, item in enumerate(models):  # one checkpoint in memory at a time
        x.append(features(item["weights"], models.layout(i)))
        y.append(item["metrics"]["test_acc"])
    return torch.stack(x), torch.tensor(y, dtype=torch.float64)


def fit(x: torch.Tensor, y: torch.Tensor, penalty: float):
    """Ridge regression on standardised features: a predictor of y."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-12)
    z = (x - mean) / std
    eye = torch.eye(z.shape[1], dtype=z.dtype)
    coef = torch.linalg.solve(z.T @ z + penalty * eye, z.T @ (y - y.mean()))
    return lambda x_new: (((x_new - mean) / std) @ coef + y.mean()).clamp(0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", help="a directory written by task=export")
    args = parser.parse_args()

    (x, y), (x_val, y_val), (x_test, y_test) = (load(args.export, s) for s in SPLITS)
    val_error = {p: (fit(x, y, p)(x_val) - y_val).abs().mean().item() for p in PENALTIES}
    penalty = min(val_error, key=val_error.get)
    predicted = fit(torch.cat([x, x_val]), torch.cat([y, y_val]), penalty)(x_test)

    error = (predicted - y_test).abs().mean().item()
    baseline = (torch.cat([y, y_val]).mean() - y_test).abs().mean().item()
    r2 = 1 - ((predicted - y_test) ** 2).sum() / ((y_test - y_test.mean()) ** 2).sum()
    print(
        f"checkpoints: {len(y)} train, {len(y_val)} val, {len(y_test)} test; {x.shape[1]} features"
    )
    print(f"ridge penalty {penalty:g} (chosen on val)")
    print(f"test accuracy, mean absolute error: {error:.3f} (predicting the mean: {baseline:.3f})")
    print(f"R^2 on the held-out runs: {r2.item():.2f}")


if __name__ == "__main__":
    main()
