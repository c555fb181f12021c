"""The population tasks end to end: results beside the runs, idempotent, shardable, and the
same on the published format."""

from __future__ import annotations

import json
import shutil

import pytest

from ptmz.tasks import run_task
from ptmz.zoo.population import Population

from conftest import FAST, launch, write_published


@pytest.fixture(params=["ptmz", "published"])
def population(request, digits_population, published_population, tmp_path):
    """A private copy of the digits population, in each of the two formats."""
    source = digits_population if request.param == "ptmz" else published_population
    return shutil.copytree(source, tmp_path / "zoo")


def results(path, name):
    return sorted(path.rglob(f"landscape/**/{name}_epoch_*.json"))


@pytest.mark.parametrize("task", ["hessian", "cka", "curve", "interpolate"])
def test_task_stores_results_beside_the_runs_once(config, population, task):
    args = [f"task={task}", f"population={population}", "progress=false", *FAST[task]]
    assert run_task(config(*args)) == {"computed": 3 if task == "hessian" else 2, "skipped": 0}
    files = results(population, task)
    if task == "hessian":
        assert {f.parent.parent.name for f in files} == {r.name for r in Population(population)}
        assert all(f.parent.parent.parent == population for f in files)
        result = json.loads(files[0].read_text())
        for split in ("train", "test"):
            assert result[split]["eigenvalues"][0] > 0 and result[split]["trace_probes"] == 8
        assert result["inputs"]["epoch"] == 3
    else:
        assert all(f.parent.parent == population / "landscape" for f in files)
        by_size = {len(r["inputs"]["runs"]): r for r in (json.loads(f.read_text()) for f in files)}
        assert by_size[1]["applicable"] is False and "single seed" in by_size[1]["reason"]
        pair = by_size[2]
        assert pair["applicable"] is True and pair["inputs"]["epoch"] == 3
        if task == "cka":
            assert 0 < pair["mean"]["logits"] <= 1 + 1e-9
        else:
            (measured,) = pair["pairs"].values()
            key = "mc_train_error" if task == "curve" else "barrier_train_loss"
            assert key in measured and len(measured["path"]["t"]) == 3
    again = run_task(config(*args))
    assert again["computed"] == 0 and again["skipped"] == (3 if task == "hessian" else 2)
    assert run_task(config(*args, "overwrite=true"))["computed"] == again["skipped"]
    changed = run_task(config(*args, "task.batch_size=32"))  # other settings: not the same result
    assert changed["computed"] == again["skipped"]


def test_two_settings_of_a_task_keep_a_result_each(config, digits_population, tmp_path):
    from ptmz.analysis.table import results_table

    population = shutil.copytree(digits_population, tmp_path / "zoo")
    args = ["task=cka", f"population={population}", *FAST["cka"]]
    run_task(config(*args))
    run_task(config(*args, "task.unbiased=false", "task.result=cka_biased"))
    assert len(results(population, "cka")) == len(results(population, "cka_biased")) == 2
    table = results_table(Population(population)).dropna(subset=["cka.mean.logits"])
    assert len(table) == 2 and (table["cka.mean.logits"] != table["cka_biased.mean.logits"]).all()


@pytest.mark.parametrize("name", ["a/b", "cka_epoch_3", "", 7])
def test_a_result_name_that_is_not_a_file_stem_is_refused(config, digits_population, name):
    from ptmz.errors import ConfigError

    with pytest.raises(ConfigError, match=r"task.result=.* a file-name stem"):
        run_task(config("task=prune", f"population={digits_population}", f"task.result={name}"))


def test_shards_split_the_work_without_overlap(config, population):
    args = ["task=interpolate", f"population={population}", *FAST["interpolate"]]
    shards = [run_task(config(*args, f"shard={i}", "num_shards=3")) for i in range(3)]
    assert sum(s["computed"] for s in shards) == 2  # each grid point in exactly one shard
    assert len(results(population, "interpolate")) == 2
    assert all(
        run_task(config(*args, f"shard={i}", "num_shards=3"))["computed"] == 0 for i in range(3)
    )


def test_an_epoch_that_was_not_checkpointed_is_named(config, population):
    from ptmz.errors import ConfigError

    with pytest.raises(ConfigError, match=r"epoch=5 .*\[0, 1, 2, 3\]"):
        run_task(config("task=cka", f"population={population}", "epoch=5"))
    with pytest.raises(ConfigError, match=r"population=None"):
        run_task(config("task=hessian"))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["task=curve", "task.points=2"], r"task.points=2 .*an integer >= 3"),
        (["task=interpolate", "task.points=1"], r"task.points=1 .*an integer >= 3"),
        (["task=hessian", "task.splits=[val]"], r"task.splits=\['val'\] .*a list of train, test"),
        (["task=average_epochs", "epoch=3"], r"epoch=3 .*null for task=average_epochs"),
        (
            ["task=cka", "task.samples=130", "task.batch_size=128"],
            r"task.batch_size=128 .*at least 4 of the 130 test inputs.*the last one holds 2",
        ),
    ],
)
def test_bad_task_settings_are_named_before_any_work(
    config, digits_population, tmp_path, args, match
):
    from ptmz.errors import ConfigError

    population = shutil.copytree(digits_population, tmp_path / "zoo")
    with pytest.raises(ConfigError, match=match):
        run_task(config(*args, f"population={population}"))
    written = [json.loads(f.read_text()) for f in population.rglob("landscape/**/*.json")]
    assert not [r for r in written if r.get("applicable", True)]  # nothing measured


def test_a_run_that_cannot_be_measured_costs_its_own_result_only(config, population):
    """One run without the epoch asked for: the others are measured, then its error raised
    (ptmz's own runs recorded the file as written, so it is named as gone)."""
    from ptmz.errors import PtmzError

    runs = Population(population).runs
    for file in runs[0].path.rglob("*"):  # epoch 2's weights, in either format
        if file.is_file() and ("0002" in file.name or "checkpoint_000002" in str(file)):
            file.unlink()
    assert 2 not in runs[0].checkpoint_epochs and 2 in runs[1].checkpoint_epochs
    named = (
        rf"{runs[0].path}.*epoch_0002.safetensors: is gone"
        if runs[0].format == "ptmz"
        else (rf"epoch=2 .*{runs[0].path}")
    )
    with pytest.raises(PtmzError, match=named):
        run_task(config("task=hessian", f"population={population}", "epoch=2", *FAST["hessian"]))
    assert len(results(population, "hessian")) == len(runs) - 1


def test_published_trials_without_checkpoints_are_left_out(published_population, tmp_path):
    population = shutil.copytree(published_population, tmp_path / "zoo")
    trial = Population(population).runs[0].path
    for checkpoint in trial.glob("checkpoint_*"):
        shutil.rmtree(checkpoint)
    opened = Population(population)
    assert trial not in [r.path for r in opened.runs]
    assert (trial, "no checkpoints") in opened.unfinished


def test_named_epochs_are_averaged_in_order(config, population):
    args = ["task=average_epochs", f"population={population}", "task.epochs=[3,1]"]
    assert run_task(config(*args))["computed"] == len(Population(population).runs)
    (file, *_) = results(population, "average_epochs")
    assert file.name.endswith("_0003.json")  # the latest named epoch is the final model
    assert json.loads(file.read_text())["inputs"]["epochs"] == [1, 3]


def test_tasks_on_the_published_format_from_the_command_line(digits_population, tmp_path):
    path = write_published(digits_population, tmp_path / "published", dataset_hint=False)
    sweep = (
        "-m",
        "task=interpolate",
        f"population={path}",
        "dataset=digits",
        "epoch=1",
        "num_shards=2",
        "shard=0,1",
        *FAST["interpolate"],
    )
    result = launch(*sweep)
    assert result.returncode == 0, result.stderr
    assert "Launching 2 jobs" in result.stdout  # the shards only: no zoo grid is swept
    files = results(path, "interpolate")
    assert len(files) == 2
    (file,) = [f for f in files if json.loads(f.read_text())["applicable"]]
    assert json.loads(file.read_text())["inputs"]["epoch"] == 1
    assert file.name.endswith("_0001.json")
    missing = launch("task=cka", f"population={path}")
    assert missing.returncode == 2 and "name the dataset" in missing.stderr
