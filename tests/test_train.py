"""Training runs: records, checkpoints, skip/resume, divergence and failure, run ids."""

from __future__ import annotations

import copy
import errno
import fcntl
import json
import re
import signal
import time

import pytest
import torch

import ptmz.objectives
import ptmz.train.run
from ptmz.data import Augment, DeviceLoader, Split
from ptmz.data.datasets import CIFAR10_MEAN, CIFAR10_STD
from ptmz.data.loader import batch_bounds
from ptmz.errors import PtmzError
from ptmz.objectives import cross_entropy
from ptmz.train import RunSpec, train_run
from ptmz.train.loop import model_gradients, prepare_model
from ptmz.train.spec import PRECISIONS
from ptmz.zoo import RunDir

from conftest import launch, popen_launch, training_gap

TINY = dict(width=2, batch_size=256, epochs=3, progress=False)


def test_run_writes_records_checkpoints_and_status(tmp_path):
    spec = RunSpec(out_dir=str(tmp_path), checkpoints=2, **TINY)
    assert train_run(spec) == "done"
    run = RunDir(spec.run_dir)
    assert run.path == tmp_path / "digits_resnet18" / spec.run_id
    assert spec.run_id.startswith("w2_bs256_s0-")
    assert run.state == "done" and run.status["epoch"] == 3
    records = run.records
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    for r in records:
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["test_acc"] <= 1 and r["test_loss"] > 0
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert run.checkpoint_epochs == [0, 2, 3]  # every 2, plus the last
    assert run.resume_epoch is None  # a finished run keeps no optimizer state
    assert RunSpec.from_dict(run.config) == spec
    model = ptmz.train.run.build_model("resnet18", 2, 1, 10)
    model.load_state_dict(run.load_weights(3), strict=True)


def test_finished_run_is_skipped(tmp_path):
    spec = RunSpec(out_dir=str(tmp_path), **TINY)
    train_run(spec)
    weights = RunDir(spec.run_dir).weights_path(3)
    before = weights.stat().st_mtime_ns
    assert train_run(spec) == "done"
    assert weights.stat().st_mtime_ns == before


def test_checkpoint_list_keeps_first_and_last(tmp_path):
    spec = RunSpec(out_dir=str(tmp_path), checkpoints=(1,), **TINY)
    train_run(spec)
    assert RunDir(spec.run_dir).checkpoint_epochs == [0, 1, 3]


def test_non_finite_loss_marks_run_diverged(tmp_path):
    spec = RunSpec(out_dir=str(tmp_path), **{**TINY, "lr": 1e12})
    assert train_run(spec) == "diverged"
    run = RunDir(spec.run_dir)
    assert run.state == "diverged"
    assert run.records[-1]["train_loss"] is None or run.records[-1]["batch_loss"] is None
    assert train_run(spec) == "diverged"  # a diverged run is finished: not retried


def test_exception_marks_run_failed_with_the_error(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    spec = RunSpec(out_dir=str(tmp_path), **TINY)
    monkeypatch.setattr(ptmz.objectives, "evaluate", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        train_run(spec)
    status = RunDir(spec.run_dir).status
    assert status["state"] == "failed" and status["error"] == "RuntimeError: disk on fire"


def test_run_killed_before_its_last_records_keeps_them(tmp_path, monkeypatch):
    """A kill between the last checkpoint's state and its metrics.jsonl: the relaunch finishes
    the run with every epoch's record (the state file, their only other copy, is dropped)."""
    spec = RunSpec(out_dir=str(tmp_path), **TINY)
    write_records = RunDir.write_records

    def killed_at_the_end(run, records):
        if records[-1]["epoch"] == spec.epochs:
            raise KeyboardInterrupt
        write_records(run, records)

    monkeypatch.setattr(RunDir, "write_records", killed_at_the_end)
    with pytest.raises(KeyboardInterrupt):
        train_run(spec)
    monkeypatch.setattr(RunDir, "write_records", write_records)
    run = RunDir(spec.run_dir)
    assert [r["epoch"] for r in run.records] == [0, 1, 2]
    assert train_run(spec) == "done"
    assert [r["epoch"] for r in run.records] == [0, 1, 2, 3]


@pytest.mark.parametrize(("n", "sizes"), [(17, [8, 9]), (18, [8, 8, 2]), (16, [8, 8]), (1, [1])])
def test_a_lone_last_sample_joins_the_batch_before_it(n, sizes):
    split = Split(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n))
    loader = DeviceLoader(
        split, 8, (0.5,), (0.5,), torch.device("cpu"), Augment(), torch.Generator()
    )
    batches = list(loader)
    assert [len(y) for _, y in batches] == [len(x) for x, _ in batches] == sizes
    assert len(loader) == len(sizes)
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(n))
    assert batch_bounds(3, 1) == [slice(0, 1), slice(1, 2), slice(2, 3)]  # none to join


def test_digits_subset_leaving_one_sample_trains(tmp_path):
    """Half the digits leave one sample after the batches of 16: on its own it would stop
    batch norm at the 1x1 last stage ("Expected more than 1 value per channel")."""
    half = {**TINY, "batch_size": 16, "epochs": 1, "data_fraction": 0.5}
    spec = RunSpec(out_dir=str(tmp_path), **half)
    assert len(ptmz.train.run.data_for(spec, torch.device("cpu")).train) % 16 == 1
    assert train_run(spec) == "done"


def test_run_id_is_content_keyed():
    base = RunSpec(**TINY)
    assert base.run_id == RunSpec(**TINY).run_id
    assert base.run_id == RunSpec.from_dict({**TINY, "lr": 0.1}).run_id
    assert RunSpec.from_dict({**TINY, "data_fraction": 1}).run_id == base.run_id
    integral = RunSpec.from_dict({**TINY, "recipe": {"augment": {"rotation": 20}}})
    assert integral.run_id == base.run_id  # YAML's `rotation: 20` is the default 20.0
    same_training = RunSpec(**{**TINY, "out_dir": "/elsewhere", "device": "cpu", "progress": True})
    assert same_training.run_id == base.run_id
    for change in (
        {"lr": 0.05},
        {"seed": 1},
        {"epochs": 4},
        {"model": "resnet34"},
        {"data_fraction": 0.5},
        {"precision": "bf16"},
        {"eval_precision": "bf16"},
    ):
        assert RunSpec(**{**TINY, **change}).run_id != base.run_id


def test_onecycle_cycles_the_momentum_unless_told_to_hold_it():
    from ptmz.train import Recipe
    from ptmz.train.loop import build_optimizer

    def momenta(recipe: Recipe) -> list[float]:
        weight = torch.zeros(1, requires_grad=True)
        optimizer, schedule = build_optimizer([weight], recipe, 0.1, 2, 10)
        seen = []
        for _ in range(20):
            seen.append(optimizer.param_groups[0]["momentum"])
            weight.grad = torch.ones(1)
            optimizer.step()
            schedule.step()
        return seen

    cycled = momenta(Recipe())  # torch's default, the published runs': 0.95 -> 0.85 -> 0.95
    assert cycled[0] == pytest.approx(0.95) and min(cycled) == pytest.approx(0.85, abs=1e-3)
    assert momenta(Recipe(momentum=0.5, cycle_momentum=False)) == [0.5] * 20


def test_relaunched_sweep_trains_nothing(tmp_path):
    grid = ("-m", f"out_dir={tmp_path}", "width=2", "batch_size=128,256", "epochs=1")
    first = launch(*grid)
    assert first.returncode == 0, first.stderr
    runs = sorted(p.name for p in (tmp_path / "digits_resnet18").iterdir())
    assert len(runs) == 4 and all(r.startswith("w2_bs") for r in runs)  # 2 batch sizes x 2 seeds
    assert all(RunDir(tmp_path / "digits_resnet18" / r).state == "done" for r in runs)
    second = launch(*grid, "batch_size=128,256,512")  # one new grid point
    assert second.returncode == 0
    log = second.stdout + second.stderr
    # finished runs are filtered out before launch: only the new ones become jobs
    assert "4 of 6 jobs already finished: not launched" in log
    assert "Launching 2 jobs" in log and log.count("epoch 1/1") == 2
    # Hydra's own output holds logs only, under out_dir/logs
    assert {p.name for p in tmp_path.iterdir()} == {"digits_resnet18", "logs"}


def test_packed_runs_share_a_job(tmp_path):
    grid = ("-m", f"out_dir={tmp_path}", "width=2", "batch_size=128,256", "seed=[0,1]")
    first = launch(*grid, "epochs=1")
    assert first.returncode == 0, first.stderr
    assert "Launching 2 jobs" in first.stdout + first.stderr  # one per batch size
    runs = [RunDir(p) for p in (tmp_path / "digits_resnet18").iterdir()]
    assert sorted(r.path.name.split("-")[0] for r in runs) == [
        "w2_bs128_s0",
        "w2_bs128_s1",
        "w2_bs256_s0",
        "w2_bs256_s1",
    ]
    assert all(r.state == "done" for r in runs)
    again = launch(*grid, "epochs=1")
    assert "2 of 2 jobs already finished: not launched" in again.stdout + again.stderr


def test_sweep_runs_every_job_and_reports_the_failed_ones(tmp_path):
    grid = ("-m", f"out_dir={tmp_path}", "width=2", "seed=0", "epochs=1")
    # pre-flight would stop the sweep before launching: this is about failures at run time
    unchecked = "hydra.sweeper.preflight=false"
    result = launch(*grid, "batch_size=9999,16", "hydra.sweeper.max_batch_size=1", unchecked)
    assert result.returncode == 1
    log = result.stdout + result.stderr
    assert log.count("Launching 1 jobs") == 2  # batches of at most max_batch_size jobs
    assert re.search(r"failed: .*batch_size=9999.*: ConfigError: batch_size=9999 is not", log)
    assert "ptmz: 1 of 2 jobs failed" in log
    (run,) = (tmp_path / "digits_resnet18").iterdir()  # the failure did not stop the sweep
    assert RunDir(run).state == "done"


def test_a_run_another_process_holds_and_leaves_unfinished_fails_the_sweep(tmp_path):
    """A second sweep skips a run that another process trains; if that process stops without
    finishing it (killed), the second sweep must not report success."""
    from ptmz.data import Augment
    from ptmz.train import Recipe, RunSpec

    digits = Recipe(augment=Augment(crop_padding=1, hflip=False, rotation=10))
    held = RunDir(
        RunSpec(
            width=2, batch_size=64, seed=0, epochs=1, recipe=digits, out_dir=str(tmp_path)
        ).run_dir
    )
    with held.lock():  # "another process", which never finishes the run
        result = launch(
            "-m", f"out_dir={tmp_path}", "width=2", "seed=0", "epochs=1", "batch_size=64,128"
        )
    log = result.stdout + result.stderr
    assert result.returncode == 1, log
    assert "another process is training this run, skipped" in log
    assert re.search(rf"not finished: .*batch_size=64.*: {held.path} \(not started\)", log)
    assert "ptmz: 1 of 2 jobs left runs unfinished" in log


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    args = ("width=2", "batch_size=16", "epochs=5", "seed=3")
    reference = launch(f"out_dir={tmp_path}/straight", *args)
    assert reference.returncode == 0, reference.stderr

    killed = popen_launch(f"out_dir={tmp_path}/killed", *args)
    zoo = tmp_path / "killed" / "digits_resnet18"
    deadline = time.time() + 240
    while not list(zoo.glob("*/checkpoints/state_0002.pt")):
        assert killed.poll() is None and time.time() < deadline
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (run_path,) = zoo.iterdir()
    interrupted = RunDir(run_path)
    assert interrupted.state == "running" and interrupted.resume_epoch in (2, 3)

    resumed = launch(f"out_dir={tmp_path}/killed", *args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stdout + resumed.stderr
    straight = RunDir(tmp_path / "straight" / "digits_resnet18" / run_path.name)
    assert interrupted.state == "done"
    for epoch in range(6):
        a, b = straight.load_weights(epoch), interrupted.load_weights(epoch)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"epoch {epoch} differs"
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in straight.records]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in interrupted.records]
    assert json.loads((straight.path / "config.json").read_text())["seed"] == 3


def test_run_held_by_another_process_is_not_trained_twice(tmp_path):
    spec = RunSpec(out_dir=str(tmp_path), **{**TINY, "batch_size": 16, "checkpoints": 2})
    holder = popen_launch(  # the spec's published recipe: the same run id
        f"out_dir={tmp_path}", "width=2", "batch_size=16", "epochs=3", "recipe=published"
    )
    run = RunDir(spec.run_dir)
    deadline = time.time() + 120
    while run.state != "running":
        assert holder.poll() is None and time.time() < deadline
        time.sleep(0.02)
    assert train_run(spec) == "running"  # skipped: the other process holds the lock
    assert run.config["checkpoints"] == 1  # the holder's config, not this launch's
    assert holder.wait(timeout=240) == 0
    assert run.state == "done" and train_run(spec) == "done"


def test_files_a_killed_writer_left_half_written_are_removed_on_resume(tmp_path):
    spec = RunSpec(out_dir=str(tmp_path), **{**TINY, "epochs": 1})
    run = RunDir(spec.run_dir)
    run.checkpoints.mkdir(parents=True)
    torn = [
        run.checkpoints / ".epoch_0001.safetensors.k1ll3d.tmp",
        run.checkpoints / ".state_0001.pt.k1ll3d.tmp",
        run.path / ".metrics.jsonl.k1ll3d.tmp",
    ]
    for path in torn:
        path.write_bytes(b"half a checkpoint")
    (run.path / ".notes.txt").write_text("not ours to delete")
    assert train_run(spec) == "done"
    assert not any(path.exists() for path in torn)
    assert (run.path / ".notes.txt").exists()


def test_a_file_system_without_locks_is_named(tmp_path, monkeypatch):
    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    spec = RunSpec(out_dir=str(tmp_path), **TINY)
    with pytest.raises(PtmzError, match=r"cannot lock the run .*No locks available.*flock"):
        train_run(spec)


def test_a_new_checkpoint_schedule_on_resume_keeps_earlier_checkpoints(tmp_path):
    run = RunDir(tmp_path / "run")
    run.create({})
    weights = {"w": torch.zeros(2)}
    for epoch in range(4):  # first launch: keep every epoch
        run.save_checkpoint(epoch, weights, {"epoch": epoch})
        run.keep_resume_point(epoch, keep=lambda e: True)
    run.save_checkpoint(4, weights, {"epoch": 4})
    assert run.resume_epochs == [3, 4]  # until 4 is committed, 3 is still a resume point
    run.keep_resume_point(4, keep=lambda e: e == 0)  # resumed: keep 0 only
    assert run.checkpoint_epochs == [0, 1, 2, 4]  # 3 was only the superseded resume point
    assert run.resume_epoch == 4


def test_bf16_run_moves_the_weights_like_the_fp32_one(tmp_path):
    """bf16 autocast changes a run's rounding, not its training: after one epoch it has moved
    the weights as the fp32 run did to a few per cent, where another seed is all different."""
    tiny = dict(width=4, batch_size=64, epochs=1, lr=0.002, progress=False)
    fp32, bf16, seed1 = (
        RunSpec(out_dir=str(tmp_path / name), **tiny, **change)
        for name, change in [("fp32", {}), ("bf16", dict(precision="bf16")), ("s1", dict(seed=1))]
    )
    assert [train_run(s) for s in (fp32, bf16, seed1)] == ["done"] * 3
    assert training_gap(bf16.run_dir, fp32.run_dir) < 0.25
    assert training_gap(seed1.run_dir, fp32.run_dir) > 0.5


def test_bf16_evaluation_rounds_the_metrics_and_changes_nothing_else(tmp_path):
    """eval_precision=bf16 trains exactly as fp32 does (the same weights, bit for bit) and
    records the same metrics up to bf16's rounding of the logits: a few near-ties flip."""
    fp32, bf16 = (
        RunSpec(out_dir=str(tmp_path / name), **TINY, eval_precision=name) for name in PRECISIONS
    )
    assert train_run(fp32) == train_run(bf16) == "done"
    a, b = RunDir(fp32.run_dir), RunDir(bf16.run_dir)
    wa, wb = a.load_weights(fp32.epochs), b.load_weights(bf16.epochs)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    records = list(zip(a.records, b.records, strict=True))
    for ra, rb in records:
        assert rb.get("batch_loss") == ra.get("batch_loss")  # training is not evaluated
        for split, n in (("train", 1347), ("test", 450)):
            assert rb[f"{split}_loss"] == pytest.approx(ra[f"{split}_loss"], rel=1e-2)
            assert rb[f"{split}_acc"] == pytest.approx(ra[f"{split}_acc"], abs=5 / n)
    assert any(ra["test_loss"] != rb["test_loss"] for ra, rb in records)


@pytest.mark.parametrize("width", [2, 8])
@pytest.mark.parametrize("layout", ["channels_last split", "contiguous split, cropped"])
def test_cpu_gradients_equal_float64_ones_from_channels_last_batches(layout, width):
    """From channels_last input torch 2.14's oneDNN gets weight gradients wrong: at width 2 the
    1x1 stride-2 convolutions of 2 and 4 channels, at width 8 (seen in the last stage, on 4x4
    and 2x2 feature maps) too. A split stored so, or a crop (without the rotation that happens
    to copy it), makes such batches. A float64 copy of the model (no oneDNN) is the oracle,
    from a seeded initialisation: batch norm amplifies the fp32 rounding of some (errors up to
    6% of the largest gradient were seen without oneDNN too), seed 0's stays within 1e-5, and
    the bug's errors are 1e-2 and more."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 32, 32, 3), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 10, (16,), generator=generator)
    cpu = torch.device("cpu")
    if layout == "channels_last split":
        split, augment = Split(images.permute(0, 3, 1, 2), labels), None
    else:
        split = Split(images.permute(0, 3, 1, 2).contiguous(), labels)
        augment = Augment(crop_padding=4, hflip=True, rotation=0)
    loader = DeviceLoader(split, 16, CIFAR10_MEAN, CIFAR10_STD, cpu, augment, generator)
    x, y = next(iter(loader))
    torch.manual_seed(0)
    model = prepare_model(ptmz.train.run.build_model("resnet18", width, 3, 10), cpu)
    oracle = copy.deepcopy(model).double()
    model_gradients(model)(x, y)
    cross_entropy(oracle, x.double(), y).backward()
    for (name, p), q in zip(model.named_parameters(), oracle.parameters(), strict=True):
        assert (p.grad.double() - q.grad).abs().max() <= 1e-3 * q.grad.abs().max(), name
