"""The `*_published` task settings measure what the published zoo's scripts measured: the
Hessian on 10 augmented training batches of 64 shared by the seeds and the first 640 test
images, CKA as the biased per-batch mean on the first test batches, curves over every pair."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from test_cka import reference_cka

from ptmz.landscape.cka import mean_pairwise_cka
from ptmz.tasks import run_task
from ptmz.tasks.population import Workspace


@pytest.fixture
def workspace(digits_population) -> Workspace:
    cfg = OmegaConf.create(
        {
            "population": str(digits_population),
            "device": "cpu",
            "data_root": "data",
            "dataset": {"download": False},
        }
    )
    return Workspace(cfg)


def seed_pair(ws: Workspace):
    return next(runs for runs in ws.population.grid_points().values() if len(runs) == 2)


def normalised(ws: Workspace, images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(ws.data.mean).view(1, -1, 1, 1) * 255
    std = torch.tensor(ws.data.std).view(1, -1, 1, 1) * 255
    return (images.float() - mean) / std


def test_published_training_batches_are_augmented_shuffled_and_shared_by_the_seeds(workspace):
    a, b = seed_pair(workspace)
    batches = workspace.batches(a, "train", 64, 640, "published", seed=0)
    assert [len(y) for _, y in batches] == [64] * 10
    again = workspace.batches(b, "train", 64, 640, "published", seed=0)
    for (xa, ya), (xb, yb) in zip(batches, again, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)  # the same batches for both seeds

    train = workspace.train_split(a)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:640]
    labels = torch.cat([y for _, y in batches])
    assert torch.equal(labels, train.labels[order])  # a shuffled pass, in the generator's order
    images = torch.cat([x for x, _ in batches])
    plain = normalised(workspace, train.images[order])
    changed = (images - plain).abs().flatten(1).amax(1) > 1e-4
    assert changed.float().mean() > 0.9  # augmented (crop, rotation), not the stored images
    other = workspace.batches(a, "train", 64, 640, "published", seed=1)
    assert not torch.equal(torch.cat([y for _, y in other]), labels)


def test_published_test_batches_are_the_first_images_in_order(workspace):
    (a, _) = seed_pair(workspace)
    batches = workspace.batches(a, "test", 64, 320, "published", seed=0)
    assert [len(y) for _, y in batches] == [64] * 5
    test = workspace.data.test
    assert torch.equal(torch.cat([y for _, y in batches]), test.labels[:320])
    expected = normalised(workspace, test.images[:320])
    assert torch.allclose(torch.cat([x for x, _ in batches]), expected)


@pytest.mark.parametrize("samples, sizes", [(100, [64, 36]), (None, [64] * 21 + [3])])
def test_published_training_batches_hold_the_samples_asked_for(workspace, samples, sizes):
    """A last batch is cut to `samples` in all; with every sample (1347 digits), the pass's own
    short last batch (3 samples) is kept whole."""
    (a, _) = seed_pair(workspace)
    batches = workspace.batches(a, "train", 64, samples, "published", seed=0)
    assert [len(y) for _, y in batches] == sizes
    assert sum(sizes) == (samples or len(workspace.train_split(a)))


def test_unknown_sampling_is_named(workspace, config, digits_population):
    from ptmz.errors import ConfigError

    (a, _) = seed_pair(workspace)
    with pytest.raises(ConfigError, match=r"task.sampling='random' .*fixed, published"):
        workspace.batches(a, "train", 64, 640, "random", seed=0)
    args = ("task=hessian", f"population={digits_population}", "+task.sampling=random")
    with pytest.raises(ConfigError, match=r"task.sampling='random'"):
        run_task(config(*args))


def test_published_settings_compose_as_published(config):
    hessian = config("task=hessian_published").task
    assert (hessian.name, hessian.result, list(hessian.splits)) == (
        "hessian",
        "hessian_published",
        ["train", "test"],
    )
    assert (hessian.samples, hessian.batch_size, hessian.sampling) == (640, 64, "published")
    cka = config("task=cka_published").task
    assert (cka.name, cka.samples, cka.batch_size) == ("cka", 1280, 128)
    assert (cka.unbiased, cka.per_batch, cka.sampling) == (False, True, "published")
    curve = config("task=curve_published").task
    assert (curve.name, curve.result, curve.pairs) == ("curve", "curve_published", "all")
    assert config("task=curve").task.pairs == "first"  # ptmz's cheaper default, not published


def test_per_batch_cka_is_the_mean_of_each_batchs_biased_cka():
    g = torch.Generator().manual_seed(3)
    models = [torch.nn.Linear(6, 10).double() for _ in range(3)]
    for model in models:
        torch.nn.init.normal_(model.weight, generator=g)
    batches = [torch.randn(16, 6, generator=g, dtype=torch.float64) for _ in range(4)]
    got = mean_pairwise_cka(models, batches, unbiased=False, per_batch=True)
    with torch.no_grad():
        outputs = [[m(x).numpy() for x in batches] for m in models]
    for (i, j), key in (((0, 1), "0-1"), ((0, 2), "0-2"), ((1, 2), "1-2")):
        expected = np.mean(
            [reference_cka(a, b, False) for a, b in zip(outputs[i], outputs[j], strict=True)]
        )
        assert got["pairs"][key]["logits"] == pytest.approx(expected, abs=1e-12)
    minibatch = mean_pairwise_cka(models, batches, unbiased=False)
    assert minibatch["mean"]["logits"] != pytest.approx(got["mean"]["logits"], abs=1e-6)


def test_published_tasks_run_on_a_population(config, digits_population, tmp_path):
    zoo = shutil.copytree(digits_population, tmp_path / "zoo")
    fast = ["task.max_iter=10", "task.trace_probes=4", "task.samples=128"]
    assert run_task(config("task=hessian_published", f"population={zoo}", *fast))["computed"] == 3
    stored = [json.loads(p.read_text()) for p in zoo.rglob("hessian_published_epoch_0003.json")]
    assert len(stored) == 3
    for result in stored:
        assert result["inputs"]["settings"]["sampling"] == "published"
        assert result["train"]["eigenvalues"][0] > 0 and result["test"]["eigenvalues"][0] > 0

    cka = run_task(config("task=cka_published", f"population={zoo}", "task.samples=256"))
    assert cka["computed"] == 2  # the pair, and the single seed as not applicable
    (pair,) = [
        r
        for r in (json.loads(p.read_text()) for p in zoo.rglob("cka_published_epoch_0003.json"))
        if r["applicable"]
    ]
    assert 0 < pair["mean"]["logits"] <= 1 + 1e-9
