"""A zoo exported by `task=export`, read as a torch Dataset for weight-space learning.

The exported directory:

    README.md                          the dataset card
    index.parquet, index.csv           one row per model and epoch (see below)
    layouts.json                       per architecture: the flattened vector's layout
    weights/shard_00000.safetensors    tensors named "<run>/epoch_0008/<state-dict key>"

An index row holds the model's grid coordinates (`width`, `batch_size`, `lr`, ...), `seed`
and `epoch`; its training records and landscape results as the results table names them
(`test_acc`, `hessian.train.trace`, `curve.mean.mc_train_error`, ...); its `phase`; its config
(`config.*`); and where its weights are: `shard` (a path relative to the export), `key` (the
tensor-name prefix), `layout` (a key of layouts.json), `numel` (the flat vector's length) and
`arch.*` (the `build_model` arguments). `model_id` is the row's position in this export's index.

The flattened vector of a model is every floating-point entry of its state dict (weights,
biases, batch-norm running means and variances), each flattened row-major, concatenated in the
order of the architecture's `state_dict()`, in the entries' common dtype (float32 for ptmz's
checkpoints), so it unflattens exactly. `layouts.json` lists, per layout, each
entry's key, shape, dtype and [start, stop) in the vector. Integer entries (batch norm's
`num_batches_tracked`) are left out of the vector: they count optimizer steps, so they would
hand a predictor the epoch and batch size, and they do not change what the network computes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from torch import nn
from torch.utils.data import Dataset

from ptmz.columns import IDENTITY
from ptmz.errors import ConfigError, PtmzError, choose
from ptmz.models import build_model

INDEX = "index"  # index.parquet and index.csv
LAYOUTS = "layouts.json"
WEIGHTS = "weights"
SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}
SPLIT_UNITS = {"run": ("grid_point", "seed"), "grid_point": ("grid_point",)}
# index columns that say where a model's weights are and how to build it: not items' fields
LOCATION = ("model_id", "shard", "key", "layout", "numel")
# spelt in the plural as ZooDataset's arguments: the singular would name the index column
NAMED_FILTERS = {"epoch": "epochs", "phase": "phases"}


def tensor_name(key: str, entry: str) -> str:
    """The name of state-dict entry `entry` of the model stored under `key` in a shard."""
    return f"{key}/{entry}"


@dataclass(frozen=True)
class Layout:
    """The entries of an architecture's state dict, in order, and where each floating-point
    entry lies in the flattened vector."""

    state_keys: tuple[str, ...]  # every entry, integer ones too
    keys: tuple[str, ...]  # the floating-point entries: the vector's parts
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @classmethod
    def of(cls, state: Mapping[str, torch.Tensor]) -> Layout:
        """The layout of `state`, in its own key order (a model's `state_dict()` order)."""
        floats = [(k, t) for k, t in state.items() if t.is_floating_point()]
        return cls(
            tuple(state),
            tuple(k for k, _ in floats),
            tuple(tuple(t.shape) for _, t in floats),
            tuple(str(t.dtype).removeprefix("torch.") for _, t in floats),
        )

    @property
    def numel(self) -> int:
        return sum(math.prod(shape) for shape in self.shapes)

    def index_map(self) -> list[dict[str, Any]]:
        """Per entry: key, shape, dtype and its [start, stop) in the vector."""
        out, start = [], 0
        for key, shape, dtype in zip(self.keys, self.shapes, self.dtypes, strict=True):
            stop = start + math.prod(shape)
            out.append(
                {"key": key, "shape": list(shape), "dtype": dtype, "start": start, "stop": stop}
            )
            start = stop
        return out

    @property
    def dtype(self) -> torch.dtype:
        """The vector's dtype: one every entry converts to without loss."""
        return functools.reduce(torch.promote_types, (getattr(torch, d) for d in self.dtypes))

    def flatten(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([state[k].reshape(-1).to(self.dtype) for k in self.keys])

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """The floating-point entries of the state dict that `vector` was flattened from."""
        if vector.shape != (self.numel,):
            raise ConfigError("vector", tuple(vector.shape), f"a vector of {self.numel} values")
        return {
            e["key"]: vector[e["start"] : e["stop"]]
            .reshape(e["shape"])
            .to(getattr(torch, e["dtype"]))
            for e in self.index_map()
        }

    def to_json(self) -> dict[str, Any]:
        return {"state_dict": list(self.state_keys), "vector": self.index_map()}

    @classmethod
    def from_json(cls, layout: dict[str, Any]) -> Layout:
        entries = layout["vector"]
        return cls(
            tuple(layout["state_dict"]),
            tuple(e["key"] for e in entries),
            tuple(tuple(e["shape"]) for e in entries),
            tuple(e["dtype"] for e in entries),
        )


def assign_splits(
    index: pd.DataFrame, by: str = "run", fractions: Mapping[str, float] = SPLITS, seed: int = 0
) -> pd.Series:
    """The split of every row of `index`: its unit (a run = grid point and seed, or a whole
    grid point) goes to one split, so no model (and with `by="grid_point"`, no
    hyperparameter setting) is seen in two. Units are ordered by a hash of their name and
    `seed`, then cut into runs of round(fraction * units), in the order of `fractions`; the
    last split takes the rest. The same units always give the same splits."""
    columns = list(choose("split_by", by, SPLIT_UNITS))
    if any(f < 0 for f in fractions.values()) or not math.isclose(sum(fractions.values()), 1):
        raise ConfigError("fractions", dict(fractions), "non-negative fractions summing to 1")
    units = index[columns].astype(str).agg("/".join, axis=1)
    order = sorted(set(units), key=lambda u: hashlib.sha256(f"{seed}:{u}".encode()).hexdigest())
    names, split_of, start = list(fractions), {}, 0
    for i, name in enumerate(names):
        stop = len(order) if i == len(names) - 1 else start + round(fractions[name] * len(order))
        split_of.update({unit: name for unit in order[start:stop]})
        start = stop
    return units.map(split_of).rename("split")


class ZooDataset(Dataset):
    """The models of an exported zoo (`task=export`), one item per model and epoch.

    An item is a dict: `weights` (the state dict, or with `flatten=True` the flattened vector
    of the module docstring), `config` (grid coordinates, seed, epoch, split and the run's
    config; None where not set), `metrics` (every number measured on it: training records and
    landscape results; NaN where not measured), `phase` (I, II, III, IV-A, IV-B, or None) and
    `model_id`. `ZooDataset.collate` batches items for a DataLoader.

    Selection: `split` (train | val | test, by `assign_splits` with `split_by`, `fractions` and
    `split_seed`), `epochs`, `phases`, and any index column by value or list of values
    (`width=8`, `batch_size=[16, 64]`). Splits are assigned over the whole export before any
    filter, so a model's split does not depend on the filters.

    Weights are read on access from memory-mapped shards; nothing is cached but the open
    shards (at most `max_open_shards`), so iterating holds one model at a time.
    """

    def __init__(
        self,
        path: str | Path,
        split: str | None = None,
        epochs: int | Sequence[int] | None = None,
        phases: str | Sequence[str] | None = None,
        flatten: bool = False,
        split_by: str = "run",
        fractions: Mapping[str, float] = SPLITS,
        split_seed: int = 0,
        max_open_shards: int = 2,
        **where: Any,
    ) -> None:
        self.path = Path(path)
        if not (self.path / f"{INDEX}.parquet").is_file():
            raise ConfigError("path", str(path), "a directory written by task=export")
        if max_open_shards < 1:
            raise ConfigError("max_open_shards", max_open_shards, "an integer >= 1")
        if split is not None and split not in fractions:
            raise ConfigError("split", split, f"None or one of {', '.join(fractions)}")
        index = pd.read_parquet(self.path / f"{INDEX}.parquet")
        index["split"] = assign_splits(index, split_by, fractions, split_seed)
        self.layouts = {
            name: Layout.from_json(layout)
            for name, layout in json.loads((self.path / LAYOUTS).read_text()).items()
        }
        for singular, plural in NAMED_FILTERS.items():
            if singular in where:
                raise ConfigError(singular, where[singular], f"spelt {plural}= here")
        selected = {**where, "epoch": epochs, "phase": phases, "split": split}
        for column, wanted in selected.items():
            if wanted is None:
                continue
            if column not in index.columns:
                raise ConfigError(
                    column, wanted, f"a column of the index: {', '.join(index.columns)}"
                )
            values = list(wanted) if pd.api.types.is_list_like(wanted) else [wanted]
            index = index[index[column].isin(values)]
        if index.empty:
            chosen = {k: v for k, v in selected.items() if v is not None}
            raise PtmzError(f"no model of {self.path} matches {chosen}")
        self.index = index.reset_index(drop=True)
        self.config_columns = [c for c in index if c in IDENTITY or c.startswith("config.")]
        located = {*self.config_columns, *LOCATION, "phase", "split"}
        self.metric_columns = [
            c
            for c in index
            if c not in located
            and not c.startswith("arch.")
            and pd.api.types.is_numeric_dtype(index[c])
            and not pd.api.types.is_bool_dtype(index[c])
        ]
        self._rows = self.index.to_dict("records")  # one lookup per item, not a pandas row
        self.flatten = flatten
        self.max_open_shards = max_open_shards
        self._shards: OrderedDict[str, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self._rows[i]
        state = self.state_dict(i)
        return {
            "model_id": int(row["model_id"]),
            "weights": self.layout(i).flatten(state) if self.flatten else state,
            "config": {k: _plain(row[k]) for k in [*self.config_columns, "split"]},
            "metrics": {k: float(row[k]) for k in self.metric_columns},
            "phase": row["phase"] if isinstance(row.get("phase"), str) else None,
        }

    @staticmethod
    def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """A batch of items, for `DataLoader(collate_fn=ZooDataset.collate)`: flat vectors
        stacked (one layout per batch: filter by width), state dicts as a list; metrics as
        float64 tensors; configs, phases (None where not labelled) and ids as lists."""
        weights = [item["weights"] for item in items]
        if isinstance(weights[0], torch.Tensor):
            lengths = sorted({len(w) for w in weights})
            if len(lengths) > 1:
                raise ConfigError("weights", lengths, "one layout per batch: filter by width")
            weights = torch.stack(weights)
        metrics = items[0]["metrics"]
        return {
            "model_id": [item["model_id"] for item in items],
            "weights": weights,
            "config": [item["config"] for item in items],
            "metrics": {
                k: torch.tensor([item["metrics"][k] for item in items], dtype=torch.float64)
                for k in metrics
            },
            "phase": [item["phase"] for item in items],
        }

    def __getstate__(self) -> dict[str, Any]:
        """Open shards stay behind: each DataLoader worker opens its own."""
        return {**self.__dict__, "_shards": OrderedDict()}

    def layout(self, i: int) -> Layout:
        return self.layouts[self._rows[i]["layout"]]

    def state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Model i's full state dict, in its architecture's key order."""
        row = self._rows[i]
        shard = self._open(row["shard"])
        return {k: shard.get_tensor(tensor_name(row["key"], k)) for k in self.layout(i).state_keys}

    def architecture(self, i: int) -> dict[str, Any]:
        """Model i's `build_model` arguments."""
        row = self._rows[i]
        return {k.removeprefix("arch."): _plain(v) for k, v in row.items() if k.startswith("arch.")}

    def load_model(self, i: int) -> nn.Module:
        """Model i as a working module (eval mode), built by ptmz and loaded strictly."""
        model = build_model(**self.architecture(i))
        model.load_state_dict(self.state_dict(i), strict=True)
        return model.eval()

    def _open(self, shard: str) -> Any:
        if shard in self._shards:
            self._shards.move_to_end(shard)
        else:
            self._shards[shard] = safe_open(str(self.path / shard), framework="pt")
            while len(self._shards) > self.max_open_shards:
                self._shards.popitem(last=False)
        return self._shards[shard]


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones and a missing value (NaN in a numeric column) as None, so
    configs compare and serialise as they were written."""
    if value is pd.NA or isinstance(value, float | np.floating) and math.isnan(value):
        return None
    return value.item() if isinstance(value, np.generic) else value
