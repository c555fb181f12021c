"""The config surface: zoos compose dataset + model + recipe, parts swap, bad input is named."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import pytest
from hydra.errors import HydraException

from ptmz.data.datasets import normalization
from ptmz.errors import ConfigError
from ptmz.tasks import run_task
from ptmz.tasks.train import spec_from_config
from ptmz.train import RunSpec

from conftest import ROOT, launch

PUBLISHED = [
    f"{d}_{m}"
    for d in ("svhn", "cifar10", "cifar100", "tinyimagenet")
    for m in ("resnet18", "resnet50")
]


def grid_size(cfg) -> int:
    params = cfg.hydra.sweeper.params
    return len(list(itertools.product(*(str(v).split(",") for v in params.values()))))


@pytest.mark.parametrize("zoo", PUBLISHED)
def test_published_zoos_have_recipe_and_192_run_grid(config, zoo):
    """Each zoo as its published training script ran it: SVHN without the flip, TinyImageNet
    for 100 epochs, the dataset's own normalisation."""
    cfg = config(f"zoo={zoo}", hydra=True)
    spec = spec_from_config(cfg)
    dataset = zoo.split("_")[0]
    assert (spec.zoo, spec.dataset, spec.model) == (zoo, dataset, zoo.split("_")[1])
    epochs = 100 if dataset == "tinyimagenet" else 150
    assert (spec.epochs, spec.lr, spec.recipe.optimizer, spec.recipe.schedule) == (
        epochs,
        0.1,
        "sgd",
        "onecycle",
    )
    assert (spec.recipe.momentum, spec.recipe.weight_decay) == (0.9, 5e-4)
    assert (
        spec.recipe.augment.crop_padding,
        spec.recipe.augment.hflip,
        spec.recipe.augment.rotation,
    ) == (4, dataset != "svhn", 20)
    assert spec.normalization == normalization(dataset)
    assert grid_size(cfg) == 192
    assert cfg.hydra.sweeper.params.width == "2,4,8,16,32,64,128,256"
    assert cfg.hydra.sweeper.params.batch_size == "8,16,32,64,128,256,512,1024"


@pytest.mark.parametrize("zoo", PUBLISHED)
def test_runs_normalised_otherwise_than_before_get_new_ids(config, zoo):
    """CIFAR-100, SVHN and TinyImageNet runs trained under ptmz's former constants must not
    resume or mix with runs trained under the published ones: the normalisation is in their
    id. CIFAR-10's constants did not change, nor do its ids."""
    spec = spec_from_config(config(f"zoo={zoo}"))
    before = {k: v for k, v in spec.identity.items() if k != "normalization"}
    digest_before = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:8]
    changed = spec.dataset != "cifar10"
    assert ("normalization" in spec.identity) == changed
    assert (spec.digest != digest_before) == changed


def test_a_normalization_other_than_the_datasets_is_refused(config):
    with pytest.raises(ConfigError, match=r"normalization=.*\(dataset=svhn's\)"):
        RunSpec(dataset="svhn", normalization=((0.5,) * 3, (0.25,) * 3))
    assert RunSpec(dataset="svhn").normalization == normalization("svhn")


def test_default_is_the_offline_digits_zoo(config):
    cfg = config(hydra=True)
    spec = spec_from_config(cfg)
    assert (spec.zoo, spec.dataset, spec.model) == ("digits_resnet18", "digits", "resnet18")
    assert not spec.recipe.augment.hflip
    assert 8 <= grid_size(cfg) <= 24


def test_zoo_parts_swap_on_the_command_line(config):
    spec = spec_from_config(config("zoo=cifar10_resnet18", "model=resnet50"))
    assert (spec.zoo, spec.dataset, spec.model) == ("cifar10_resnet18", "cifar10", "resnet50")
    spec = spec_from_config(config("zoo=cifar10_resnet18", "dataset=svhn", "width=32", "lr=0.05"))
    assert (spec.dataset, spec.model, spec.width, spec.lr) == ("svhn", "resnet18", 32, 0.05)
    spec = spec_from_config(config("recipe.augment.rotation=0", "recipe.schedule=cosine"))
    assert (spec.recipe.augment.rotation, spec.recipe.schedule) == (0, "cosine")


@pytest.mark.parametrize(
    "group, value",
    [("zoo", "imagenet_vgg"), ("task", "fly"), ("model", "vgg16"), ("dataset", "imagenet")],
)
def test_unknown_group_choice_lists_the_options(config, group, value):
    with pytest.raises(HydraException) as error:
        config(f"{group}={value}")
    message = str(error.value)
    assert f"{group}/{value}" in message and f"Available options in '{group}'" in message
    assert {"zoo": "cifar10_resnet18", "task": "train", "model": "resnet50", "dataset": "svhn"}[
        group
    ] in message


@pytest.mark.parametrize(
    "override, match",
    [
        ("width=0", r"width=0 is not allowed: an integer >= 1"),
        ("width=-4", r"width=-4 is not allowed: an integer >= 1"),
        ("batch_size=0", r"batch_size=0 is not allowed: an integer >= 1"),
        ("epochs=0", r"epochs=0 is not allowed: an integer >= 1"),
        ("data_fraction=0", r"data_fraction=0.0 is not allowed: a number in \(0, 1\]"),
        ("data_fraction=1.5", r"data_fraction=1.5 is not allowed: a number in \(0, 1\]"),
        ("lr=-0.1", r"lr=-0.1 is not allowed: a positive number"),
        ("data_fraction=abc", r"data_fraction='abc' is not allowed: a number in \(0, 1\]"),
        ("recipe.momentum=-0.5", r"recipe.momentum=-0.5 is not allowed: a number in \[0, 1\)"),
        ("recipe.weight_decay=-1", r"recipe.weight_decay=-1.0 is not allowed: a number >= 0"),
        ("recipe.augment.rotation=x", r"recipe.augment.rotation='x' is not allowed: degrees in"),
        ("recipe.augment.hflip=2", r"recipe.augment.hflip=2 is not allowed: true or false"),
        ("model=mlp", r"model='mlp' is not allowed: one of resnet101, .*, vit for dataset=digits"),
        ("device=tpu", r"device='tpu' is not allowed: choose one of auto, cpu, cuda"),
        ("eval_precision=fp16", r"eval_precision='fp16' is not allowed: choose one of bf16, fp32"),
        ("recipe.optimizer=lbfgs", r"recipe.optimizer='lbfgs'.*adam, adamw, sgd"),
        ("+recipe.nesterov=true", r"recipe.nesterov=True.*not a known key"),
        ("batch_size=1", r"batch_size=1 .*at least 2 for model=resnet18 on dataset=digits"),
        ("seed=[]", r"seed=\[\] is not allowed: a value, or a non-empty list"),
        (
            "batch_size=2000",
            r"batch_size=2000 is not allowed: at most the training subset size, "
            r"1347 samples \(dataset=digits, data_fraction=1.0\)",
        ),
        (
            "data_fraction=0.01",
            r"batch_size=32 is not allowed: at most the training subset "
            r"size, 10 samples \(dataset=digits, data_fraction=0.01\)",
        ),
    ],
)
def test_bad_values_are_named(config, tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        run_task(config(f"out_dir={tmp_path}", "progress=false", override))
    assert not list(tmp_path.glob("*/*"))  # nothing was written for the bad run


def test_only_images_are_augmented(config, tmp_path):
    with pytest.raises(ConfigError, match=r"recipe.augment=.* for dataset=text, whose inputs are"):
        run_task(config(f"out_dir={tmp_path}", "zoo=gpt_text", "recipe=published"))
    assert not list(tmp_path.glob("*/*"))


def test_unwritable_out_dir_is_named(config, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"out_dir='.*a_file/zoos'.*a directory you can write"):
        run_task(config(f"out_dir={blocker}/zoos"))


def test_cli_reports_bad_input_without_traceback(tmp_path):
    result = launch(f"out_dir={tmp_path}", "width=0")
    assert result.returncode == 2
    assert "ptmz: error: width=0 is not allowed: an integer >= 1" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    result = launch(f"out_dir={tmp_path}", "zoo=nope")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "Could not find 'zoo/nope'" in result.stderr and "digits_resnet18" in result.stderr


def test_config_files_exist_for_every_registry_name():
    from ptmz.data import DATASETS
    from ptmz.models import MODELS
    from ptmz.tasks import TASKS

    for group, names in (("dataset", DATASETS), ("model", MODELS)):
        assert {p.stem for p in Path(ROOT / "conf" / group).glob("*.yaml")} == set(names)
    tasks = Path(ROOT / "conf" / "task").glob("*.yaml")
    assert set(TASKS) <= {p.stem for p in tasks}  # presets such as hessian_published may add


def test_errors_survive_pickling_back_from_a_cluster_job():
    """submitit pickles a job's exception to hand it to the launcher."""
    import pickle
    from pathlib import Path

    from ptmz.data import DatasetNotFound
    from ptmz.errors import ConfigError

    for error in (
        ConfigError("batch_size", 9999, "at most 1347"),
        DatasetNotFound("cifar10", Path("data"), "Download it.", "no batches"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)


def test_the_quickstart_runs_keep_their_ids(config):
    """Keys added since zoos were trained (precision, corpus, recipe.cycle_momentum ...) at
    their old meaning stay out of the hash: the README's example run keeps its directory."""
    spec = spec_from_config(config("width=8", "batch_size=16", "seed=0"))
    assert spec.recipe.cycle_momentum is True
    assert spec.run_id == "w8_bs16_s0-7f92d090"
    held = spec_from_config(config("width=8", "batch_size=16", "recipe.cycle_momentum=false"))
    assert held.run_id != spec.run_id


def test_momentum_that_onecycle_would_override_is_refused(config):
    with pytest.raises(ConfigError, match=r"recipe.momentum=0.5 .*recipe.cycle_momentum=false"):
        spec_from_config(config("recipe.momentum=0.5"))
    for held in (["recipe.cycle_momentum=false"], ["recipe.schedule=cosine"]):
        assert spec_from_config(config("recipe.momentum=0.5", *held)).recipe.momentum == 0.5
    with pytest.raises(ConfigError, match=r"recipe.cycle_momentum=False .*schedule=onecycle"):
        spec_from_config(config("recipe.schedule=cosine", "recipe.cycle_momentum=false"))


def test_runs_trained_with_an_unused_momentum_stay_reachable(config, tmp_path):
    """Before cycling was explicit, recipe.momentum=0.95 under onecycle trained (as 0.95-0.85)
    into w8_bs32_s0-ee41d945 (the id the earlier code gave): that run is still found and
    resumed, while a new run with an unused momentum is refused."""
    overrides = (f"out_dir={tmp_path}", "recipe.momentum=0.95")
    with pytest.raises(ConfigError, match="recipe.momentum=0.95"):
        spec_from_config(config(*overrides))
    trained = tmp_path / "digits_resnet18" / "w8_bs32_s0-ee41d945"
    trained.mkdir(parents=True)
    assert spec_from_config(config(*overrides)).run_dir == trained
