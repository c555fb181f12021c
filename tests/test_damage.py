"""Damaged files of a trained zoo (cut short, garbled): each is named with what to do, its run
(or result) is left out and listed, and the tasks carry on with the other runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ptmz.errors import DamagedFile, PtmzError
from ptmz.tasks import run_task
from ptmz.zoo.population import Population

from conftest import FAST, launch


@pytest.fixture
def zoo(digits_population, tmp_path) -> Path:
    return shutil.copytree(digits_population, tmp_path / "digits_resnet18")


def runs_of(zoo: Path) -> dict[str, Path]:
    """Run directories by their axes and seed: w4_bs32_s0, w4_bs32_s1, w4_bs64_s0."""
    return {p.name.split("-")[0]: p for p in zoo.iterdir() if (p / "config.json").exists()}


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


@pytest.mark.parametrize("name", ["status.json", "config.json"])
def test_a_damaged_config_or_status_leaves_its_run_out_named(config, zoo, tmp_path, name):
    damaged = runs_of(zoo)["w4_bs64_s0"]
    cut_short(damaged / name)
    population = Population(zoo)
    assert len(population) == 2 and damaged not in [r.path for r in population]
    ((path, state),) = population.unfinished
    assert path == damaged and f"{damaged / name}: not valid JSON" in state
    assert f"delete {damaged} to train this run again" in state
    # the others are measured, then the task fails naming the run it left out
    args = ["task=cka", f"population={zoo}", *FAST["cka"]]
    with pytest.raises(PtmzError, match=r"1 damaged runs left out: .*not valid JSON") as error:
        run_task(config(*args))
    assert f"{damaged / name}" in str(error.value)
    assert len(list(zoo.rglob("cka_epoch_0003.json"))) == 1  # the intact grid point, measured

    status = launch(
        "task=status",
        f"out_dir={tmp_path}",
        "width=4",
        "batch_size=[32,64]",
        "seed=[0,1]",
        "epochs=3",
    )
    assert status.returncode == 0, status.stderr
    assert "1 damaged" in status.stdout and f"damaged: {damaged / name}" in status.stdout
    # a relaunch neither resumes nor retrains over it: the job names the file and fails
    train = launch(
        "width=4", "batch_size=64", "seed=0", "epochs=3", f"out_dir={tmp_path}", "recipe=digits"
    )
    assert train.returncode == 2 and f"{damaged / name}: not valid JSON" in train.stderr


def test_an_unknown_state_is_damage_not_a_retrain(zoo):
    damaged = runs_of(zoo)["w4_bs32_s1"]
    (damaged / "status.json").write_text(json.dumps({"state": "finished", "epoch": 3}))
    ((path, state),) = Population(zoo).unfinished
    assert path == damaged and "state 'finished' is none of running, done" in state


def test_a_garbled_record_or_result_is_named_and_the_table_still_written(config, zoo):
    records = runs_of(zoo)["w4_bs32_s0"] / "metrics.jsonl"
    lines = records.read_text().splitlines()
    records.write_text("\n".join([lines[0], lines[1][:10], *lines[2:]]) + "\n")
    run_task(config("task=cka", f"population={zoo}", *FAST["cka"]))
    (result,) = [
        p for p in zoo.rglob("cka_epoch_0003.json") if json.loads(p.read_text())["applicable"]
    ]
    cut_short(result)
    with pytest.raises(PtmzError, match=r"2 damaged files left out of the table") as error:
        run_task(config("task=collect", f"population={zoo}"))
    assert f"{records}: line 2 is not valid JSON" in str(error.value)
    assert f"{result}: not valid JSON" in str(error.value) and "rerun its task" in str(error.value)
    table = pd.read_parquet(zoo / "results.parquet")
    assert set(table["run"]) == {p.name for n, p in runs_of(zoo).items() if n != "w4_bs32_s0"}
    assert "cka.mean.logits" not in table.columns
    # the population task's skip check recomputes a damaged result instead of stopping
    assert run_task(config("task=cka", f"population={zoo}", *FAST["cka"]))["computed"] == 1
    json.loads(result.read_text())


def test_an_unloadable_checkpoint_costs_its_run_only(config, zoo):
    damaged = runs_of(zoo)["w4_bs32_s1"] / "checkpoints" / "epoch_0003.safetensors"
    cut_short(damaged)
    (damaged.parent / "digests.json").unlink()  # a run from before digests: the load fails
    args = ["task=hessian", f"population={zoo}", "progress=false", *FAST["hessian"]]
    with pytest.raises(DamagedFile, match=rf"{damaged}: does not load .*restore it, or delete"):
        run_task(config(*args))
    measured = sorted(p.parent.parent.name for p in zoo.rglob("hessian_epoch_0003.json"))
    assert measured == sorted(
        p.name for n, p in runs_of(zoo).items() if n != "w4_bs32_s1"
    )  # the two intact runs


@pytest.mark.parametrize("missing", ["checkpoints/epoch_0003.safetensors", "metrics.jsonl"])
def test_a_done_run_without_its_final_weights_or_records_is_damaged(zoo, missing):
    """Not measured at the epoch before, nor tabulated without rows: named and left out."""
    damaged = runs_of(zoo)["w4_bs32_s0"]
    (damaged / missing).unlink()
    population = Population(zoo)
    assert damaged not in [r.path for r in population]
    ((path, state),) = population.unfinished
    assert path == damaged and f"{damaged / missing}: is missing from a done run" in state


@pytest.mark.parametrize("line", [2, 4])  # a middle epoch's, and the final one's
def test_a_deleted_record_line_is_named_not_dropped(config, zoo, tmp_path, line):
    records = runs_of(zoo)["w4_bs32_s0"] / "metrics.jsonl"
    lines = records.read_text().splitlines(keepends=True)
    records.write_text("".join(lines[: line - 1] + lines[line:]))
    with pytest.raises(
        PtmzError, match=rf"{records}: has no record of epoch {line - 1} \(of 0 to 3\)"
    ):
        run_task(config("task=collect", f"population={zoo}"))
    grid = ["width=4", "batch_size=[32,64]", "seed=[0,1]", "epochs=3"]
    checked = launch("task=status", f"out_dir={tmp_path}", "task.verify=true", *grid)
    assert f"damaged: {records}: has no record of epoch {line - 1}" in checked.stdout


@pytest.mark.parametrize("task", ["hessian", "collect", "plot", "export"])
def test_every_task_does_the_other_runs_then_fails_naming_a_damaged_one(config, zoo, task):
    damaged = runs_of(zoo)["w4_bs32_s1"]
    (damaged / "metrics.jsonl").unlink()
    args = [f"task={task}", f"population={zoo}", *FAST.get(task, [])]
    if task == "hessian":
        args.append("progress=false")
    with pytest.raises(PtmzError, match=r"1 damaged runs left out: .*is missing from a done run"):
        run_task(config(*args))
    done = {
        "hessian": lambda: len(list(zoo.rglob("hessian_epoch_0003.json"))) == 2,
        "collect": lambda: (
            set(pd.read_parquet(zoo / "results.parquet")["run"])
            == {p.name for p in runs_of(zoo).values() if p != damaged}
        ),
        "plot": lambda: (zoo / "phase_diagram_epoch_0003.png").exists(),
        "export": lambda: (zoo / "export").is_dir(),
    }
    assert done[task]()


def test_an_out_dir_that_cannot_be_written_is_named_before_hydra_writes(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = launch(f"out_dir={blocker}", "task=status")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"ptmz: error: out_dir='{blocker}' is not allowed: a directory you can write" in (
        result.stderr
    )


def test_a_failure_to_mark_a_run_failed_keeps_the_first_error(tmp_path, monkeypatch):
    """A full disk fails the training and then the write of `failed`: the first is raised."""
    from ptmz.train import RunSpec, run
    from ptmz.zoo import RunDir

    def broken(*args, **kwargs):
        raise RuntimeError("the first error")

    write_status = RunDir.write_status

    def full_disk(self, state, **info):
        if state == "failed":
            raise OSError(28, "No space left on device")
        write_status(self, state, **info)

    monkeypatch.setattr(run, "Trainee", broken)
    monkeypatch.setattr(RunDir, "write_status", full_disk)
    spec = RunSpec(width=2, batch_size=64, epochs=1, out_dir=str(tmp_path), progress=False)
    with pytest.raises(RuntimeError, match="the first error"):
        run.train_run(spec)


def test_flipped_bytes_in_a_checkpoint_are_caught_by_its_digest(config, zoo, tmp_path):
    damaged = runs_of(zoo)["w4_bs64_s0"] / "checkpoints" / "epoch_0003.safetensors"
    data = bytearray(damaged.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor: the file still parses
    damaged.write_bytes(bytes(data))
    from safetensors.torch import load_file

    load_file(damaged)  # safetensors alone would not notice
    args = ["task=hessian", f"population={zoo}", "progress=false", *FAST["hessian"]]
    with pytest.raises(DamagedFile, match=rf"{damaged}: its bytes differ from those written"):
        run_task(config(*args))
    assert len(list(zoo.rglob("hessian_epoch_0003.json"))) == 2  # the others are measured

    grid = ["width=4", "batch_size=[32,64]", "seed=[0,1]", "epochs=3"]
    plain = launch("task=status", f"out_dir={tmp_path}", *grid)
    assert "damaged:" not in plain.stdout  # the cheap view reads no checkpoint
    checked = launch("task=status", f"out_dir={tmp_path}", "task.verify=true", *grid)
    assert checked.returncode == 0, checked.stderr
    assert f"damaged: {damaged}: its bytes differ from those written" in checked.stdout


def test_a_deleted_middle_checkpoint_is_named_where_it_is_needed(config, zoo, tmp_path):
    """The run's final weights are there, so it stays in the population; what asks for the lost
    epoch (a task at that epoch, a verifying status) names the file instead of 'no such epoch'."""
    lost = runs_of(zoo)["w4_bs32_s1"] / "checkpoints" / "epoch_0001.safetensors"
    lost.unlink()
    assert len(Population(zoo)) == 3
    args = ["task=hessian", f"population={zoo}", "epoch=1", "progress=false", *FAST["hessian"]]
    with pytest.raises(DamagedFile, match=rf"{lost}: is gone: it was written .*restore it"):
        run_task(config(*args))
    assert len(list(zoo.rglob("hessian_epoch_0001.json"))) == 2  # the others are measured

    grid = ["width=4", "batch_size=[32,64]", "seed=[0,1]", "epochs=3"]
    checked = launch("task=status", f"out_dir={tmp_path}", "task.verify=true", *grid)
    assert checked.returncode == 0, checked.stderr
    assert f"damaged: {lost}: is gone" in checked.stdout
    assert checked.stdout.count("damaged:") == 1  # dropped resume points are not 'gone'
