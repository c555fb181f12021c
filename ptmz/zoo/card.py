"""The dataset card of an exported zoo: its README.md, generated from the index."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pandas as pd

from ptmz.columns import IDENTITY
from ptmz.data.zoo_dataset import LOCATION
from ptmz.zoo.population import COORDINATES, NOT_GRID, Population

# (column pattern, definition with its sign convention): the card explains the columns present
DEFINITIONS = (
    (
        r"(train|test)_loss",
        "the objective's mean loss over the whole split (cross-entropy in "
        "nats for classifiers), unaugmented, model in eval mode; epoch 0 is before training",
    ),
    (r"(train|test)_acc", "fraction of the split classified correctly, in [0, 1]"),
    (
        r"(train|test)_rel_l2",
        "relative L2 error of the PINN's field against the exact "
        "solution (0 = exact, 1 = as far off as predicting zero)",
    ),
    (r"(train|test)_ppl", "perplexity, exp(loss) per token"),
    (
        r"train_error",
        "1 - train_acc: the fraction of its training data the model misclassifies (the phase "
        "classification's default measure of fit)",
    ),
    (
        r"generalization_gap",
        "train_acc - test_acc; positive = the model fits its training data better than unseen data",
    ),
    (r"batch_loss", "mean training loss over the epoch's augmented batches, as trained"),
    (
        r"hessian(_published)?\.\w+\.top_eigenvalue",
        "largest eigenvalue of the Hessian of the loss (no "
        "weight decay; eval mode; hessian: fixed unaugmented samples of the split; "
        "hessian_published: the published batches, 10 batches of 64 augmented training samples "
        "shared by the seeds, the first 640 test images): larger = sharper",
    ),
    (
        r"hessian(_published)?\.\w+\.trace",
        "Hutchinson estimate of the Hessian's trace, same loss and data "
        "(with trace_stderr, its standard error, and trace_probes)",
    ),
    (
        r"hessian(_published)?\.\w+\.(trace_stderr|trace_probes|eigen_iterations)",
        "the trace's standard error over its probes, their count, and the Lanczos steps "
        "spent on the eigenvalues",
    ),
    (
        r"cka(_published)?\.mean\.logits",
        "linear CKA between the logits of two seeds of the grid point on "
        "the same test inputs, mean over seed pairs: 1 = the same function up to scale (cka: "
        "unbiased minibatch CKA; cka_published: the published biased CKA per batch of 128, "
        "averaged over batches, not comparable where the logits are wide)",
    ),
    (r"cka\.mean\.(?!logits$)\S+", "the same CKA between the named layers' outputs"),
    (
        r"curve(_published)?\.mean\.mc_\w+",
        "mode connectivity of a trained quadratic Bezier curve between two "
        "seeds: mc = m - E(t*), m = (E(0) + E(1)) / 2, t* maximising |E(t) - m| (E: loss, or "
        "error = 1 - accuracy). Negative = a barrier, positive = the curve is better than its "
        "ends, ~0 = connected; mc_interior looks between the ends only (curve: seeds 0 and "
        "1 by default; curve_published: every seed pair)",
    ),
    (
        r"interpolate\.mean\.barrier_\w+",
        "straight-line barrier between two seeds: "
        "max_t [E(t) - ((1 - t) E(0) + t E(1))], the largest rise above the chord between the "
        "ends (Frankle et al. 2020); positive = a barrier, 0 = none",
    ),
    (
        r"(average_epochs|average_seeds)\.\S+",
        "the model averaged over its last epochs, or over "
        "the seeds of its grid point (aligned or not); delta_X = X(averaged) - X(reference)",
    ),
    (
        r"ensemble\.\S+",
        "output ensemble of the grid point's seeds; ensemble_gain_X = "
        "X(ensemble) - mean X(members)",
    ),
    (r"finetune\.\S+", "fine-tuning on the target dataset and WiSE-FT interpolation"),
    (r"prune\.\S+", "the metrics after global magnitude pruning at each sparsity"),
    (
        r"phase",
        "the grid point's phase at this epoch (I, II, III, IV-A, IV-B; empty: not "
        "determined), from the thresholds below",
    ),
)


def dataset_card(
    population: Population,
    index: pd.DataFrame,
    excluded: Sequence[Any],
    threshold_lines: Sequence[str],
    license: str | None,
) -> str:
    """The README.md of the export of `population` whose index is `index`."""
    runs = index.drop_duplicates("run")
    name = population.path.name
    lines = [
        "---",
        f"license: {license or 'unknown'}",
        f"pretty_name: {name}",
        "tags: [model-zoo, weight-space-learning, loss-landscape, phase-transitions]",
        "---",
        "",
        f"# {name}",
        "",
        f"A model zoo of {len(runs)} trained {_values(runs['model'])} networks on "
        f"{_values(runs['dataset'])}, {len(index)} checkpoints in all "
        f"({_values(runs['format'])} format), exported by ptmz.",
        "",
        "## Grid",
        "",
        "| axis | values |",
        "| --- | --- |",
        *(
            f"| {axis} | {_values(runs[axis])} |"
            for axis in (*COORDINATES, "seed")
            if axis in runs and runs[axis].notna().any()
        ),
        f"| epoch | {_values(index['epoch'])} |",
        "",
        f"{index['grid_point'].nunique()} grid points; "
        f"{_values(runs.groupby('grid_point')['seed'].nunique())} seeds each.",
        "",
        "## Recipe",
        "",
        *_recipe(runs),
        "",
        "## Files",
        "",
        "```",
        "README.md                         this card",
        "index.parquet, index.csv          one row per model and epoch",
        "layouts.json                      per architecture: state-dict keys and the flat layout",
        "weights/shard_NNNNN.safetensors   tensors named <run>/epoch_NNNN/<state-dict key>",
        "```",
        "",
        "An index row names where its weights are (`shard`, `key`), how to build the network "
        "(`arch.*`: ptmz's `build_model` arguments; `layout`), its grid coordinates, its "
        "config (`config.*`) and every number measured on it.",
        "",
        "## Metrics",
        "",
        *(
            [
                "Training records of published-format runs are their result.json's, as the "
                "published code computed them: after epoch 0 their `train_loss` and "
                "`train_acc` are running means over the epoch's augmented batches in train "
                "mode, not the definitions below, so their `generalization_gap` compares a "
                "training-time average with an eval-mode test accuracy.",
                "",
            ]
            if "published" in set(runs["format"])
            else []
        ),
        *_definitions(index),
        "",
        "## Phase labels",
        "",
        *(f"- {line}" for line in threshold_lines),
        "",
        _phase_counts(index),
        "",
        "## Excluded checkpoints",
        "",
        *(
            [
                f"- `{e.run}`{'' if e.epoch is None else f' epoch {e.epoch}'}: {e.reason}"
                for e in excluded
            ]
            if excluded
            else ["None."]
        ),
        "",
        "## Licence",
        "",
        f"{license}."
        if license
        else "Not stated: the export was made without `task.license`. Ask the zoo's authors "
        "before redistributing it.",
        "",
        "## Loading",
        "",
        "```python",
        "from ptmz.data import ZooDataset",
        "",
        f'train = ZooDataset(".", split="train", flatten=True, width={index["width"].iloc[0]})',
        "item = train[0]  # weights (a flat vector), config, metrics, phase, model_id",
        "model = train.load_model(0)  # a working nn.Module",
        "# batches: DataLoader(train, collate_fn=ZooDataset.collate); one width, one vector length",
        "```",
        "",
        "Without ptmz: `pandas.read_parquet('index.parquet')` and "
        "`safetensors.torch.load_file(row.shard)`; keep the tensors whose names start with "
        "`row.key + '/'`. Splits (`split=`) are drawn by run, so no model is in two.",
        "",
    ]
    return "\n".join(lines)


def _values(column: pd.Series) -> str:
    values = sorted(column.dropna().unique().tolist())
    return ", ".join(str(v) for v in values) if values else "-"


def _recipe(runs: pd.DataFrame) -> list[str]:
    """The runs' config (`config.*` index columns, one row per run): the settings they share,
    then the names of those that differ between them. Where and how a run executed is left
    out."""
    shared, differing = [], []
    for column in (c for c in runs if c.startswith("config.")):
        key = column.removeprefix("config.").removeprefix("params.")
        if key.split(".")[0] in NOT_GRID:
            continue
        values = runs[column].dropna().unique()
        if len(values) == 1:
            shared.append(f"- `{key}`: {values[0]}")
        elif len(values) > 1:
            differing.append(f"`{key}`")
    if differing:
        shared.append(f"- differing between runs: {', '.join(differing)}")
    return shared or ["- not recorded"]


def _definitions(index: pd.DataFrame) -> list[str]:
    """The definition of each metric column present; numeric columns ptmz did not compute
    (a published zoo's own) are named as such."""
    lines, explained = [], set()
    for pattern, text in DEFINITIONS:
        matched = [c for c in index if re.fullmatch(pattern, c)]
        explained.update(matched)
        if matched:
            names = ", ".join(f"`{c}`" for c in matched[:4]) + (", ..." if len(matched) > 4 else "")
            lines.append(f"- {names}: {text}.")
    known = {*IDENTITY, *LOCATION, "record.lr", "seconds"}
    others = [
        f"`{c}`"
        for c in index
        if c not in explained | known
        and not c.startswith(("config.", "arch."))
        and pd.api.types.is_numeric_dtype(index[c])
    ]
    if others:
        lines.append(f"- {', '.join(others)}: as stored by the source zoo; not defined by ptmz.")
    return lines


def _phase_counts(index: pd.DataFrame) -> str:
    if "phase" not in index:
        return "No phase labels."
    counts = index["phase"].fillna("none").value_counts().sort_index()
    return "Checkpoints per phase: " + ", ".join(f"{p} {n}" for p, n in counts.items()) + "."
