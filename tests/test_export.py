"""task=export and ZooDataset: every exported tensor is its checkpoint's, splits never share a
model, flat vectors unflatten exactly, loaded modules compute what the runs computed."""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import re
import shutil
import socket
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from ptmz.data import ZooDataset
from ptmz.data.zoo_dataset import assign_splits
from ptmz.errors import ConfigError, PtmzError
from ptmz.tasks import run_task
from ptmz.zoo import Population, RunDir


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
    card = (out / "README.md").read_text()
    assert "published format" in card and "result.json's, as the published code" in card
    assert "running means over the epoch's augmented batches in train mode" in card
    # the recipe shows what the runs share and names what differs, not the first run's grid
    assert "- `model::width`: 4" in card and "differing between runs: `training::batchsize`" in card


def test_non_finite_checkpoints_are_left_out_and_listed(config, digits_population, tmp_path):
    population = tmp_path / "zoo"
    shutil.copytree(digits_population, population)
    run = Population(population).runs[0]
    state = RunDir(run.path).load_weights(2)
    state["fc.weight"][0, 0] = float("nan")  # as a diverging step would have written it
    RunDir(run.path).save_weights(2, state)
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
    (out / "notes.txt").write_text("mine")  # an export with a user's file is not ours to delete
    with pytest.raises(ConfigError, match="holds other files"):
        export(config, digits_population, out, "overwrite=true")
    assert (out / "notes.txt").read_text() == "mine" and (out / "index.parquet").is_file()
    for epoch in ("7", "last"):
        with pytest.raises(ConfigError, match=rf"epoch=.*{epoch}.* \[0, 1, 2, 3\]"):
            export(config, digits_population, tmp_path / "e", f"epoch={epoch}")
    assert not (tmp_path / "e").exists() and not list(tmp_path.glob(".e.*"))


def test_what_an_export_leaves_out_is_listed(config, published_population, tmp_path):
    """Runs that are not done, checkpoints that do not load, and an epoch named twice."""
    population = shutil.copytree(published_population, tmp_path / "zoo")
    torn, bare, *_ = Population(population).runs
    path = torn.path / "checkpoint_000003" / "checkpoints"
    path.write_bytes(path.read_bytes()[:1000])  # as if ray were still writing it
    for checkpoint in bare.path.glob("checkpoint_*"):
        shutil.rmtree(checkpoint)
    summary = export(config, population, tmp_path / "out", "epoch=[3,3]")
    assert summary["models"] == 1  # the third run's epoch 3, once
    reasons = {(e["run"], e["epoch"]): e["reason"] for e in summary["excluded"]}
    assert reasons[(bare.name, None)] == "no checkpoints"
    assert f"{path} does not load" in reasons[(torn.name, 3)]
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"`{bare.name}`: no checkpoints" in card and f"`{torn.name}` epoch 3" in card


def test_a_run_that_is_not_done_is_listed(config, digits_population, tmp_path):
    population = shutil.copytree(digits_population, tmp_path / "zoo")
    run = Population(population).runs[0].path
    (run / "status.json").write_text('{"state": "diverged", "epoch": 2, "error": null}')
    summary = export(config, population, tmp_path / "out")
    assert summary["models"] == 2
    assert summary["excluded"] == [{"run": run.name, "epoch": None, "reason": "diverged"}]


def test_integers_a_run_lacks_stay_integers(config, digits_population, tmp_path):
    population = shutil.copytree(digits_population, tmp_path / "zoo")
    run = Population(population).runs[0].path
    written = json.loads((run / "config.json").read_text())
    del written["checkpoints"]  # a key added after this run was trained, say
    (run / "config.json").write_text(json.dumps(written))
    export(config, population, tmp_path / "out")
    index = pd.read_parquet(tmp_path / "out" / "index.parquet")
    assert str(index["config.checkpoints"].dtype) == "Int64"
    values = sorted(
        (item["config"]["config.checkpoints"] for item in ZooDataset(tmp_path / "out")),
        key=lambda v: v is not None,
    )
    assert values == [None, 1, 1] and all(type(v) is int for v in values[1:])


def test_a_target_filled_while_exporting_is_not_replaced(
    config, digits_population, tmp_path, monkeypatch
):
    import ptmz.zoo.export as export_module

    out = tmp_path / "out"
    card = export_module.dataset_card

    def card_while_the_user_writes(*args, **kwargs):
        out.mkdir()
        (out / "thesis.txt").write_text("mine")
        return card(*args, **kwargs)

    monkeypatch.setattr(export_module, "dataset_card", card_while_the_user_writes)
    with pytest.raises(ConfigError, match="task.out.*holds other files"):
        export(config, digits_population, out)
    assert [p.name for p in out.iterdir()] == ["thesis.txt"]
    assert not list(tmp_path.glob(".out.*"))  # the staging directory is gone


def test_a_file_written_into_a_replaced_export_is_kept(
    config, digits_population, tmp_path, monkeypatch
):
    import ptmz.zoo.export as export_module

    out = tmp_path / "out"
    export(config, digits_population, out)
    check = export_module._check_target

    calls = []

    def check_then_the_user_writes(target, overwrite):
        check(target, overwrite)
        calls.append(target)
        if len(calls) == 2:  # the check just before the export moves into place
            (target / "thesis.txt").write_text("mine")

    monkeypatch.setattr(export_module, "_check_target", check_then_the_user_writes)
    export(config, digits_population, out, "overwrite=true")
    (kept,) = tmp_path.glob(".out.old-*")  # the earlier export, moved aside with the file
    assert (kept / "thesis.txt").read_text() == "mine"
    assert_export_equals_source(out, Population(digits_population))


def test_the_next_export_undoes_what_a_killed_one_left(config, digits_population, tmp_path):
    """An export killed (here: its leftovers made by hand, named as an export names them)
    between moving the earlier export aside and moving its own into place: the next export to
    the same directory puts the earlier one back and removes the half-written one, and leaves
    alone what a running export or another host's owns."""
    host, out = socket.gethostname(), tmp_path / "export"
    export(config, digits_population, out)
    exited = [sys.executable, "-c", "import os; print(os.getpid())"]
    dead = int(subprocess.run(exited, capture_output=True, text=True, check=True).stdout)
    out.rename(tmp_path / f".export.old-{dead}@{host}")
    out.mkdir()  # an empty directory in its place (a `mkdir -p` since) is no export
    (tmp_path / f".export.staging-{dead}@{host}+k1ll3d").mkdir()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    theirs = [f".export.staging-{running.pid}@{host}+run", f".export.old-{dead}@elsewhere"]
    for name in theirs:
        (tmp_path / name).mkdir()
    try:
        with pytest.raises(ConfigError, match="overwrite=true"):  # the earlier one is back
            export(config, digits_population, out)
        assert_export_equals_source(out, Population(digits_population))
        assert sorted(p.name for p in tmp_path.glob(".export.*")) == sorted(theirs)

        # killed after its export took the earlier one's place: the earlier one goes
        (tmp_path / f".export.old-{dead}@{host}").mkdir()
        assert export(config, digits_population, out, "overwrite=true", "epoch=1")["models"] == 3
        assert sorted(p.name for p in tmp_path.glob(".export.*")) == sorted(theirs)

        # a directory of the user's where the export was: it and the earlier export both stay
        out.rename(tmp_path / f".export.old-{dead}@{host}")
        out.mkdir()
        (out / "mine.txt").write_text("mine")
        with pytest.raises(ConfigError, match="holds other files"):
            export(config, digits_population, out, "overwrite=true")
        assert (out / "mine.txt").read_text() == "mine"
        assert (tmp_path / f".export.old-{dead}@{host}" / "index.parquet").is_file()
    finally:
        running.kill()
        running.wait()


@pytest.fixture(scope="module")
def two_widths(digits_population, tmp_path_factory):
    """The digits zoo (width 4: 3 runs x epochs 0..3) and one width-2 run (epochs 0..1)."""
    from ptmz.data import Augment
    from ptmz.train import Recipe, RunSpec, train_run

    root = tmp_path_factory.mktemp("two_widths")
    shutil.copytree(digits_population, root / digits_population.name)
    recipe = Recipe(augment=Augment(crop_padding=1, hflip=False, rotation=10))
    spec = RunSpec(
        width=2, batch_size=32, epochs=1, recipe=recipe, out_dir=str(root), progress=False
    )
    assert train_run(spec) == "done"
    return root / digits_population.name


@pytest.fixture(scope="module")
def exported(two_widths, tmp_path_factory):
    from ptmz.zoo.export import export_population

    out = tmp_path_factory.mktemp("exported") / "zoo"
    export_population(Population(two_widths), out, "all", shard_mb=0.05)
    return out


def test_splits_never_share_a_model_and_are_deterministic(exported):
    quarters = {"train": 0.5, "val": 0.25, "test": 0.25}
    splits = {s: ZooDataset(exported, split=s, fractions=quarters).index for s in quarters}
    runs = {s: set(index["run"]) for s, index in splits.items()}
    assert [len(r) for r in runs.values()] == [2, 1, 1]
    assert len(set.union(*runs.values())) == 4  # 4 runs, each in exactly one split
    everything = ZooDataset(exported).index
    for index in splits.values():  # every checkpoint of a run goes with it
        sizes = index.groupby("run").size()
        assert sizes.equals(everything.groupby("run").size()[sizes.index])

    # the documented rule, stated independently: units ordered by sha256("<split seed>:<grid
    # point>/<seed>"), then cut 2 / 1 / 1
    everything = everything.drop_duplicates("run")
    unit = {f"{r.grid_point}/{r.seed}": r.run for r in everything.itertuples()}
    ordered = sorted(unit, key=lambda u: hashlib.sha256(f"0:{u}".encode()).hexdigest())
    expected = [{unit[u] for u in ordered[:2]}, {unit[ordered[2]]}, {unit[ordered[3]]}]
    assert list(runs.values()) == expected

    # splits are drawn before filters: a filtered split is a part of the split
    narrow = ZooDataset(exported, split="train", fractions=quarters, epochs=1)
    assert set(narrow.index["run"]) <= runs["train"]

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
    with pytest.raises(ConfigError, match="split='training' .*one of train, val, test"):
        ZooDataset(exported, split="training")


def test_flat_vectors_unflatten_and_modules_reproduce_the_runs(exported, two_widths):
    flat = ZooDataset(exported, flatten=True)
    full = ZooDataset(exported)
    runs = {run.name: run for run in Population(two_widths)}
    assert set(flat.index["layout"]) == {"resnet18-w2-c1-k10-s8", "resnet18-w4-c1-k10-s8"}
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
    metrics, config = flat[0]["metrics"], flat[0]["config"]
    assert "test_acc" in metrics and "width" not in metrics and "model_id" not in metrics
    assert type(config["batch_size"]) is int and type(config["lr"]) is float
    assert config["beta"] is None  # missing, not NaN
    # the documented layout: entries one after another, in order, covering the vector
    entries = flat.layout(0).index_map()
    assert entries[0]["start"] == 0 and entries[-1]["stop"] == flat.layout(0).numel
    assert all(a["stop"] == b["start"] for a, b in itertools.pairwise(entries))


def test_iterating_holds_a_bounded_number_of_models(exported, monkeypatch):
    import safetensors.torch

    def read_whole_shard(*args, **kwargs):
        raise AssertionError("a whole shard was read")

    monkeypatch.setattr(safetensors.torch, "load_file", read_whole_shard)
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


def test_batches_from_a_data_loader_in_worker_processes(exported):
    dataset = ZooDataset(exported, flatten=True, width=4)
    dataset[0]  # opens a shard: the dataset must still pickle into the workers
    loader = DataLoader(
        dataset,
        batch_size=5,
        num_workers=1,
        multiprocessing_context="spawn",
        collate_fn=ZooDataset.collate,
    )
    batches = list(loader)
    assert [len(b["model_id"]) for b in batches] == [5, 5, 2]
    first = batches[0]
    assert torch.equal(first["weights"][1], dataset[1]["weights"])
    assert first["metrics"]["test_acc"].shape == (5,)
    assert first["config"][0] == dataset[0]["config"] and len(first["phase"]) == 5
    with pytest.raises(ConfigError, match="one layout per batch"):
        ZooDataset.collate([ZooDataset(exported, flatten=True)[i] for i in (0, -1)])


def test_keyword_spellings_of_named_filters_are_refused(exported):
    with pytest.raises(ConfigError, match="epoch.*epochs="):
        ZooDataset(exported, epoch=3)
    assert len(ZooDataset(exported, width=np.int64(2))) == 2  # numpy scalars are values too


def test_the_accuracy_predictor_example_runs_on_an_export(exported):
    """examples/predict_accuracy.py, as the README runs it (4 runs: 2 train, 1 val, 1 test)."""
    example = Path(__file__).resolve().parents[1] / "examples" / "predict_accuracy.py"
    done = subprocess.run(
        [sys.executable, str(example), str(exported)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"checkpoints: 8 train, \d+ val, \d+ test; 510 features", done.stdout)
    assert re.search(
        r"mean absolute error: \d\.\d{3} \(predicting the mean: \d\.\d{3}\)", done.stdout
    )


def test_the_card_defines_the_columns_ptmz_computes():
    from ptmz.zoo.card import _definitions

    ours = ["hessian.train.trace_stderr", "hessian_published.test.eigen_iterations"]
    ours += ["hessian.train.trace_probes", "cka.mean.logits", "cka.mean.layer1"]
    lines = _definitions(pd.DataFrame({c: [1.0] for c in ours}))
    assert not any("not defined by ptmz" in line for line in lines), lines
    (line,) = _definitions(pd.DataFrame({"ggap": [0.1]}))  # a published zoo's own column
    assert line == "- `ggap`: as stored by the source zoo; not defined by ptmz."
