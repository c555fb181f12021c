"""task=export and ZooDataset: every exported tensor is its checkpoint's, splits never share a
model, flat vectors unflatten exactly, loaded modules compute what the runs computed."""

from __future__ import annotations

import gc
import itertools
import shutil
import weakref

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from ptmz.data import ZooDataset
from ptmz.data.zoo_dataset import assign_splits
from ptmz.errors import ConfigError, PtmzError
from ptmz.tasks import run_task
from ptmz.zoo import Population


def export(config, population, out, *overrides):
    return run_task(
        config("task=export", f"population={population}", f"task.out={out}", *overrides)
    )


def assert_export_equals_source(out, population: Population) -> pd.DataFrame:
    """Every indexed tensor, read straight from its shard, equals the source checkpoint's."""
    index = pd.read_parquet(out / "index.parquet")
    runs = {run.name: run for run in population}
    for row in index.itertuples():
        shard = load_file(out / row.shard)
        source = runs[row.run].state_dict(row.epoch)
        stored = {
            k.removeprefix(row.key + "/"): t
            for k, t in shard.items()
            if k.startswith(row.key + "/")
        }
        assert stored.keys() == source.keys()
        for key, tensor in source.items():
            assert torch.equal(stored[key], tensor), (row.run, row.epoch, key)
    return index


def test_export_writes_shards_index_and_card(config, digits_population, tmp_path):
    out = tmp_path / "export"
    summary = export(
        config, digits_population, out, "epoch=all", "task.shard_mb=0.05", "task.license=CC-BY-4.0"
    )
    population = Population(digits_population)
    index = assert_export_equals_source(out, population)
    assert summary["models"] == len(index) == 3 * 4  # 3 runs x epochs 0..3
    assert summary["shards"] > 1 and index["shard"].nunique() == summary["shards"]
    assert (out / "index.csv").is_file() and len(pd.read_csv(out / "index.csv")) == len(index)
    assert set(index["epoch"]) == {0, 1, 2, 3} and set(index["seed"]) == {0, 1}
    assert {"test_acc", "train_loss", "phase", "arch.width", "config.recipe.optimizer"} <= set(
        index
    )
    card = (out / "README.md").read_text()
    for fact in (
        "3 trained resnet18 networks on digits",
        "12 checkpoints",
        "| batch_size | 32, 64 |",
        "license: CC-BY-4.0",
        "`test_acc`",
        "`generalization_gap`: train_acc - test_acc; positive",
        "## Phase labels",
        "None.",
    ):
        assert fact in card, fact

    # the default: each run's last checkpoint
    last = export(config, digits_population, tmp_path / "last")
    assert last["models"] == 3
    assert set(pd.read_parquet(tmp_path / "last" / "index.parquet")["epoch"]) == {3}


def test_export_of_a_published_population(config, published_population, tmp_path):
    out = tmp_path / "export"
    export(config, published_population, out, "epoch=[1,3]")
    index = assert_export_equals_source(out, Population(published_population))
    assert len(index) == 6 and set(index["format"]) == {"published"}
    assert set(index["arch.name"]) == {"resnet18"} and set(index["arch.in_channels"]) == {1}
    assert "published format" in (out / "README.md").read_text()


def test_non_finite_checkpoints_are_left_out_and_listed(config, digits_population, tmp_path):
    population = tmp_path / "zoo"
    shutil.copytree(digits_population, population)
    run = Population(population).runs[0]
    path = run.path / "checkpoints" / "epoch_0002.safetensors"
    state = load_file(path)
    state["fc.weight"][0, 0] = float("nan")
    save_file(state, path)
    out = tmp_path / "export"
    summary = export(config, population, out, "epoch=all")
    assert summary["models"] == 11
    assert summary["excluded"] == [
        {"run": run.name, "epoch": 2, "reason": "non-finite values in fc.weight"}
    ]
    index = pd.read_parquet(out / "index.parquet")
    assert not ((index["run"] == run.name) & (index["epoch"] == 2)).any()
    assert (
        f"`{run.name}` epoch 2: non-finite values in fc.weight" in (out / "README.md").read_text()
    )


def test_bad_export_targets_and_epochs_are_named(config, digits_population, tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="task.out.*holds other files"):
        export(config, digits_population, other, "overwrite=true")
    assert (other / "mine.txt").read_text() == "keep me"
    out = tmp_path / "export"
    export(config, digits_population, out)
    with pytest.raises(ConfigError, match="overwrite=true"):
        export(config, digits_population, out)
    assert export(config, digits_population, out, "overwrite=true", "epoch=1")["models"] == 3
    assert set(pd.read_parquet(out / "index.parquet")["epoch"]) == {1}
    with pytest.raises(ConfigError, match=r"epoch.*7.*\[0, 1, 2, 3\]"):
        export(config, digits_population, tmp_path / "e", "epoch=7")
    assert not (tmp_path / "e").exists() and not list(tmp_path.glob(".e.*"))


@pytest.fixture(scope="module")
def exported(digits_population, tmp_path_factory):
    from ptmz.zoo.export import export_population

    out = tmp_path_factory.mktemp("exported") / "zoo"
    export_population(Population(digits_population), out, "all", shard_mb=0.05)
    return out


def test_splits_never_share_a_model_and_are_deterministic(exported):
    thirds = {"train": 1 / 3, "val": 1 / 3, "test": 1 / 3}
    splits = {s: ZooDataset(exported, split=s, fractions=thirds).index for s in thirds}
    runs = [set(index["run"]) for index in splits.values()]
    assert [len(r) for r in runs] == [1, 1, 1] and len(set.union(*runs)) == 3  # 3 runs, disjoint
    assert all(len(index) == 4 for index in splits.values())  # every epoch goes with its run
    again = {s: ZooDataset(exported, split=s, fractions=thirds).index for s in thirds}
    assert all(splits[s]["model_id"].tolist() == again[s]["model_id"].tolist() for s in thirds)

    index = ZooDataset(exported).index
    by_point = assign_splits(index, "grid_point", {"train": 0.5, "test": 0.5})
    assert set(by_point) == {"train", "test"}
    assert (by_point.groupby(index["grid_point"]).nunique() == 1).all()  # seeds stay together


def test_filters_select_and_bad_ones_are_named(exported):
    assert set(ZooDataset(exported, epochs=[0, 3]).index["epoch"]) == {0, 3}
    only = ZooDataset(exported, batch_size=64, epochs=2)
    assert (
        len(only) == 1 and only[0]["config"]["batch_size"] == 64 and only[0]["config"]["epoch"] == 2
    )
    with pytest.raises(ConfigError, match="colour.*a column of the index"):
        ZooDataset(exported, colour="red")
    with pytest.raises(PtmzError, match="no model .* matches"):
        ZooDataset(exported, width=512)
    with pytest.raises(ConfigError, match="split_by"):
        ZooDataset(exported, split="train", split_by="epoch")


def test_flat_vectors_unflatten_and_modules_reproduce_the_runs(exported, digits_population):
    flat = ZooDataset(exported, flatten=True)
    full = ZooDataset(exported)
    runs = {run.name: run for run in Population(digits_population)}
    x = torch.randn(16, 1, 8, 8)
    for i in range(len(flat)):
        item, row = flat[i], flat.index.iloc[i]
        source = runs[row["run"]].state_dict(int(row["epoch"]))
        layout = flat.layout(i)
        assert item["weights"].shape == (layout.numel,) == (int(row["numel"]),)
        restored = layout.unflatten(item["weights"])
        floats = {k: t for k, t in source.items() if t.is_floating_point()}
        assert restored.keys() == floats.keys()
        assert all(torch.equal(restored[k], t) for k, t in floats.items())
        # what the vector leaves out is only batch norm's step counters
        assert all(k.endswith("num_batches_tracked") for k in source.keys() - floats.keys())
        model = runs[row["run"]].load_model(int(row["epoch"])).eval()
        assert list(full[i]["weights"]) == list(model.state_dict())  # the architecture's order
        with torch.no_grad():
            assert torch.equal(flat.load_model(i)(x), model(x))
    metrics = flat[0]["metrics"]
    assert "test_acc" in metrics and "width" not in metrics and "model_id" not in metrics
    # the documented layout: entries one after another, in order, covering the vector
    entries = flat.layout(0).index_map()
    assert entries[0]["start"] == 0 and entries[-1]["stop"] == flat.layout(0).numel
    assert all(a["stop"] == b["start"] for a, b in itertools.pairwise(entries))


def test_iterating_holds_a_bounded_number_of_models(exported):
    dataset = ZooDataset(exported, max_open_shards=1)
    assert dataset.index["shard"].nunique() > 2  # several shards to open and close
    alive = []
    for item in dataset:
        alive.append(weakref.ref(item["weights"]["fc.weight"]))
        assert len(dataset._shards) <= 1
        del item
        gc.collect()
        assert sum(ref() is not None for ref in alive) == 0  # nothing kept beyond the item
    assert len(alive) == len(dataset)
