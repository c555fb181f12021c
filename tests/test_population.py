"""Populations of ptmz runs and of the published format: the same networks either way."""

from __future__ import annotations

import pytest
import torch

from ptmz.errors import ConfigError
from ptmz.zoo.population import Population

from conftest import write_published


def test_ptmz_population_groups_seeds_into_grid_points(digits_population):
    population = Population(digits_population)
    assert len(population) == 3 and population.dataset == "digits"
    points = population.grid_points()
    sizes = sorted(len(runs) for runs in points.values())
    assert sizes == [1, 2]
    pair = next(runs for runs in points.values() if len(runs) == 2)
    assert [r.grid["seed"] for r in pair] == [0, 1]
    assert {r.grid["batch_size"] for r in pair} == {32}
    run = pair[0]
    assert run.path.parent == digits_population
    assert run.checkpoint_epochs == [0, 1, 2, 3]
    assert [r["epoch"] for r in run.records] == [0, 1, 2, 3]
    grid = {"width": 4, "batch_size": 32, "lr": 0.1, "data_fraction": 1.0, "beta": None}
    assert run.grid == {**grid, "seed": 0}


def test_published_population_loads_the_same_networks(digits_population, published_population):
    ours, theirs = Population(digits_population), Population(published_population)
    assert theirs.dataset == "digits"  # from the dataset::dump file name, never unpickled
    assert len(theirs) == 3 and sorted(map(len, theirs.grid_points().values())) == [1, 2]
    x = torch.randn(5, 1, 8, 8)
    for a, b in zip(ours, theirs, strict=True):
        assert (a.grid["width"], a.grid["batch_size"], a.grid["seed"]) == (
            b.grid["width"],
            b.grid["batch_size"],
            b.grid["seed"],
        )
        assert b.checkpoint_epochs == [0, 1, 2, 3]
        assert [r["test_acc"] for r in b.records] == [r["test_acc"] for r in a.records]
        ma, mb = a.load_model(1).eval(), b.load_model(1).eval()
        assert torch.equal(ma(x), mb(x))


def test_published_population_without_dataset_hint_needs_the_user(digits_population, tmp_path):
    path = write_published(digits_population, tmp_path / "bare", dataset_hint=False)
    with pytest.raises(ConfigError, match=r"dataset=None.*name the dataset.*cifar10"):
        Population(path)
    assert Population(path, dataset="digits").dataset == "digits"


def test_bad_population_and_epoch_are_named(digits_population, tmp_path):
    with pytest.raises(
        ConfigError, match=r"population=.*a directory holding finished run directories"
    ):
        Population(tmp_path)
    with pytest.raises(ConfigError, match=r"population=.*an existing directory"):
        Population(tmp_path / "missing")
    run = Population(digits_population).runs[0]
    with pytest.raises(ConfigError, match=r"epoch=7 .*checkpointed epoch.*\[0, 1, 2, 3\]"):
        run.load_model(7)


def test_unfinished_runs_are_left_out_and_listed(digits_population, tmp_path):
    import shutil

    from ptmz.zoo import RunDir

    path = shutil.copytree(digits_population, tmp_path / "zoo")
    failed = sorted(path.iterdir())[0]
    RunDir(failed).write_status("failed", epoch=3, error="RuntimeError: boom")
    population = Population(path)
    assert len(population) == 2 and failed not in [r.path for r in population]
    assert population.unfinished == [(failed, "failed")]


def test_two_copies_of_a_zoo_are_refused(digits_population, published_population, tmp_path):
    import shutil

    from ptmz.errors import PtmzError

    for copy in ("a", "b"):
        shutil.copytree(digits_population, tmp_path / "ptmz" / copy)
    with pytest.raises(PtmzError, match=r"two runs are named .*/a/.* and .*/b/.*copy of a zoo"):
        Population(tmp_path / "ptmz")
    trials = shutil.copytree(published_population, tmp_path / "published")
    trial = sorted(trials.iterdir())[0]
    shutil.copytree(trial, trial.with_name(trial.name + "_again"))  # a trial run twice
    with pytest.raises(PtmzError, match=r"holds seeds \[0, 0, 1\].*the same run twice"):
        Population(trials).grid_points()


def test_a_published_experiments_own_config_is_not_a_run(published_population, tmp_path):
    import json
    import shutil

    path = shutil.copytree(published_population, tmp_path / "published")
    (path / "config.json").write_text(json.dumps({"name": "tune_zoo_digits", "num_samples": 1}))
    population = Population(path)
    assert len(population) == 3 and population.unfinished == []


def test_published_runs_are_measured_at_the_published_landscape_epoch(
    config, digits_population, published_population, monkeypatch, tmp_path
):
    """Population tasks default to the epoch the published zoo measured (115 for CIFAR-10
    ResNet-18 ...); here the digits fixture is given epoch 2 of its 0..3."""
    from ptmz.errors import MissingCheckpoint
    from ptmz.tasks import run_task
    from ptmz.tasks.averaging import averaged_epochs
    from ptmz.zoo import population as module

    assert module.PUBLISHED_LANDSCAPE_EPOCH[("cifar10", "Resnet18_width")] == 115
    assert module.PUBLISHED_LANDSCAPE_EPOCH[("tinyimagenet", "Resnet50_width")] == 100
    monkeypatch.setitem(module.PUBLISHED_LANDSCAPE_EPOCH, ("digits", "Resnet18_width"), 2)
    published, ours = Population(published_population).runs[0], Population(digits_population)
    assert published.resolve_epoch(None) == 2 and published.resolve_epoch(3) == 3
    assert ours.runs[0].resolve_epoch(None) == 3  # ptmz runs: their last checkpoint
    assert averaged_epochs(published, None, last=2) == [1, 2]  # the published 111-115 rule

    import shutil

    copy = shutil.copytree(published_population, tmp_path / "published")
    assert run_task(config("task=cka", f"population={copy}"))["computed"] == 2  # 2 grid points
    assert {p.name for p in (copy / "landscape").rglob("*.json")} == {"cka_epoch_0002.json"}

    monkeypatch.setitem(module.PUBLISHED_LANDSCAPE_EPOCH, ("digits", "Resnet18_width"), 9)
    with pytest.raises(MissingCheckpoint, match=r"the default, epoch 9, is where the published"):
        published.resolve_epoch(None)


def test_runs_under_a_superseded_normalisation_are_left_out_and_listed(
    digits_population, tmp_path, monkeypatch
):
    """A run trained before its dataset took the published constants (no `normalization` in
    its config) is another experiment: left out of the population with the reason, while the
    runs trained since are measured; results of such datasets record the normalisation."""
    import json
    import shutil

    from omegaconf import OmegaConf

    from ptmz.data import datasets
    from ptmz.tasks.population import Workspace
    from ptmz.zoo.population import SUPERSEDED

    path = shutil.copytree(digits_population, tmp_path / "zoo")
    old = sorted(p for p in path.iterdir() if p.is_dir())[0]
    config = json.loads((old / "config.json").read_text())
    del config["normalization"]
    (old / "config.json").write_text(json.dumps(config))
    assert len(Population(path)) == 3  # digits' constants never changed: the same experiment

    monkeypatch.setitem(datasets.SUPERSEDED_NORMALIZATION, "digits", ((0.5,), (0.25,)))
    population = Population(path)
    assert len(population) == 2 and old not in [r.path for r in population]
    assert population.unfinished == [(old, SUPERSEDED)]
    cfg = OmegaConf.create({"population": str(path)})
    assert Workspace(cfg).data_inputs == {"normalization": ((0.3053,), (0.3759,))}
