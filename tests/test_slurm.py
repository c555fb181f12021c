"""The submitit launchers end to end: a sweep through a real single-node SLURM cluster
(scripts/slurm_cluster.sh: real sbatch, slurmctld and slurmd on localhost) and through parallel
local processes, leaving the same run directories as a local sweep."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ptmz.data import Augment
from ptmz.train import Recipe, RunSpec
from ptmz.zoo import RunDir

from conftest import ROOT, STUDY_FAST, launch, popen_launch

CLUSTER = ROOT / "scripts" / "slurm_cluster.sh"
CANNOT_INSTALL = 3  # the script's exit status when SLURM is missing and cannot be installed

# A CPU-only node has no GRES: drop the launcher's GPU request and ask for what a digits run needs.
CPU_ONLY = [
    "hydra.launcher.gpus_per_task=null",
    "hydra.launcher.cpus_per_gpu=null",
    "hydra.launcher.mem_per_gpu=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    # well above submitit's USR2 delay (120 s) plus SLURM's up-to-60-s early signal
    "hydra.launcher.timeout_min=10",
]
MAX_ARRAY_SIZE = 2  # array indices 0..1: a 3-job sweep needs two arrays
SWEEP = ["zoo=digits_resnet18", "width=2", "batch_size=64", "seed=0,1", "epochs=1"]


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running cluster under a temporary directory; yields that directory."""
    root = tmp_path_factory.mktemp("slurm")
    start = subprocess.run(
        ["bash", str(CLUSTER), "start", str(root)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MAX_ARRAY_SIZE": str(MAX_ARRAY_SIZE)},
    )
    if start.returncode == CANNOT_INSTALL:
        pytest.skip(f"SLURM is not installed and cannot be installed: {start.stderr.strip()}")
    assert start.returncode == 0, start.stdout + start.stderr
    assert f"export SLURM_CONF={root}/slurm.conf" in start.stdout
    try:
        yield root
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(root)], timeout=60, check=True)


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch):
    """The client environment the start command prints: launch() passes os.environ on."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster / "slurm.conf"))
    # the sacct stand-in first: without slurmdbd the real sacct fails
    monkeypatch.setenv("PATH", f"{slurm_cluster / 'bin'}:{os.environ['PATH']}")
    return slurm_cluster


def runs(out: Path) -> list[RunDir]:
    return [RunDir(p) for p in sorted((out / "digits_resnet18").iterdir())]


def assert_done(out: Path, epochs: int = 1) -> list[RunDir]:
    found = runs(out)
    assert [r.path.name.split("-")[0] for r in found] == ["w2_bs64_s0", "w2_bs64_s1"]
    for run in found:
        assert run.state == "done", run.status
        assert run.checkpoint_epochs == list(range(epochs + 1))
    return found


def test_sweep_through_slurm(slurm_env, tmp_path):
    result = launch("launcher=slurm", *SWEEP, *CPU_ONLY, f"out_dir={tmp_path}", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_done(tmp_path)
    # the jobs ran as the two tasks of one SLURM array job: submitit's logs are named after them
    logs = sorted(p.name for p in tmp_path.glob("logs/*/.submitit/*/*_log.out"))
    assert len(logs) == 2 and logs[0].endswith("_0_0_log.out"), logs
    # and SLURM saw both tasks finish (the job outlives its result file by a moment)
    array_id = logs[0].split("_")[0]
    done = {f"{array_id}_0": "COMPLETED", f"{array_id}_1": "COMPLETED"}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lines = subprocess.run(
            ["squeue", "--noheader", "--states=all", f"--jobs={array_id}", "--format=%i %T"],
            capture_output=True,
            text=True,
        ).stdout.splitlines()
        jobs = dict(line.split() for line in lines)
        if jobs == done:
            break
        time.sleep(0.5)
    assert jobs == done


def test_sweep_in_local_processes(tmp_path):
    # long enough (several seconds) that both runs overlap even on a busy machine
    result = launch("launcher=submitit_local", *SWEEP, "epochs=5", f"out_dir={tmp_path}")
    assert result.returncode == 0, result.stdout + result.stderr
    a, b = assert_done(tmp_path, epochs=5)
    # in parallel: each run started (epoch-0 weights) before the other finished (final status)
    start = [(r.path / "checkpoints" / "epoch_0000.safetensors").stat().st_mtime for r in (a, b)]
    end = [(r.path / "status.json").stat().st_mtime for r in (a, b)]
    assert start[0] < end[1] and start[1] < end[0], (start, end)


def test_a_failed_or_killed_job_is_one_failure_of_the_sweep(tmp_path):
    """A job killed from outside (out of memory, scancel) leaves no result, and one whose task
    raised exits non-zero: the sweep waits for the others, lists both, and exits non-zero."""
    grid = ["width=2", "batch_size=9999,64", "seed=0,1", "epochs=15", f"out_dir={tmp_path}"]
    grid.append("hydra.sweeper.preflight=false")  # the bad jobs must fail as jobs
    output = tmp_path / "sweep.log"
    with output.open("w") as log:
        sweep = subprocess.Popen(
            [sys.executable, str(ROOT / "launch.py"), "launcher=submitit_local", *grid],
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline, jobs = time.time() + 240, tmp_path / "logs"

    def ready() -> bool:  # the two bad jobs have failed and the two good ones train
        if len(list(jobs.rglob("*_result.pkl"))) < 2 or not (tmp_path / "digits_resnet18").is_dir():
            return False
        return [r.state for r in runs(tmp_path)] == ["running", "running"]

    while not ready():
        assert sweep.poll() is None and time.time() < deadline, output.read_text()
        time.sleep(0.2)
    trainer = _trainer(runs(tmp_path)[0].path)
    os.kill(trainer, signal.SIGKILL)  # as the out-of-memory killer would
    assert sweep.wait(timeout=300) == 1
    said = output.read_text()
    assert "ConfigError: batch_size=9999 is not allowed" in said
    assert said.count("the job left no result") == 1
    assert "ptmz: 3 of 4 jobs failed" in said
    assert sorted(r.state for r in runs(tmp_path)) == ["done", "running"]  # the other trained on
    outcomes = [pickle.loads(p.read_bytes())[0] for p in tmp_path.rglob("*_result.pkl")]
    assert sorted(outcomes) == ["error", "error", "success"]  # failed tasks exit non-zero


def _trainer(run: Path) -> int:
    """The process that trains `run`: the one holding its lock file."""
    lock = str(run / ".lock")
    (pid,) = {int(fd.parts[2]) for fd in Path("/proc").glob("[0-9]*/fd/*") if _link(fd) == lock}
    return pid


def _reached(pid: int, signals: tuple[int, ...]) -> bool:
    """Whether one of `signals` is pending for the (stopped) process, or it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    if fields.get("State", "").startswith(("Z", "X")):
        return True
    pending = int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)
    return any(pending >> (number - 1) & 1 for number in signals)


def _link(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:  # gone, or another user's
        return None


def test_memory_asked_for_twice_is_refused_before_submitting(tmp_path):
    result = launch("launcher=slurm", "hydra.launcher.mem_gb=32", *SWEEP, f"out_dir={tmp_path}")
    assert result.returncode == 1
    assert "hydra.launcher.mem_per_gpu=32G is not allowed: null with" in result.stderr
    assert not list(tmp_path.rglob(".submitit"))  # nothing was queued


@pytest.mark.parametrize("preempt", ["usr2", "requeue"])
def test_preempted_job_resumes_to_the_same_weights(slurm_env, tmp_path, preempt):
    """A job is preempted mid-run: by USR2, which submitit answers by requeueing the job, or by
    SLURM requeueing it (SIGTERM, then SIGKILL). The restarted job must resume the run from its
    checkpoint and end with the weights of an uninterrupted run."""
    args = ["width=2", "batch_size=16", "seed=3", "epochs=6"]
    reference = launch(*args, f"out_dir={tmp_path}/straight")
    assert reference.returncode == 0, reference.stderr
    sweep = popen_launch("launcher=slurm", *args, *CPU_ONLY, f"out_dir={tmp_path}/requeued")
    zoo = tmp_path / "requeued" / "digits_resnet18"
    deadline = time.monotonic() + 240
    while not list(zoo.glob("*/checkpoints/state_0001.pt")):  # mid-run: epoch 1 of 6 saved
        assert sweep.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    # Hold the trainer until the preemption has reached it: a fast machine would otherwise
    # finish the other five epochs first, and nothing would resume.
    trainer = _trainer(next(zoo.iterdir()))
    os.kill(trainer, signal.SIGSTOP)
    job = subprocess.run(
        ["squeue", "--noheader", "--format=%i"], capture_output=True, text=True, check=True
    ).stdout.split()
    deadline = time.monotonic() + 120
    try:
        if preempt == "usr2":  # submitit's handler requeues the job and exits: let it run
            subprocess.run(["scancel", "--signal=USR2", *job], check=True)
            while not _reached(trainer, (signal.SIGUSR2,)):
                assert time.monotonic() < deadline, "USR2 never reached the trainer"
                time.sleep(0.05)
        else:  # SLURM continues the job, sends SIGTERM (which submitit ignores) and kills it
            # KillWait (2 s) later: keep it stopped until it is gone
            subprocess.run(["scontrol", "requeue", *job], check=True)
            while not _reached(trainer, ()):
                assert time.monotonic() < deadline, "the requeued job was never killed"
                with contextlib.suppress(ProcessLookupError):
                    os.kill(trainer, signal.SIGSTOP)
                time.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(trainer, signal.SIGCONT)
    assert sweep.wait(timeout=300) == 0
    (resumed,) = runs(tmp_path / "requeued")
    (straight,) = runs(tmp_path / "straight")
    assert resumed.state == "done"
    logs = "".join(p.read_text() for p in (tmp_path / "requeued" / "logs").rglob("*.log"))
    assert "resuming after epoch" in logs  # killed, restarted by SLURM, resumed
    for key, value in straight.load_weights(6).items():
        assert torch.equal(resumed.load_weights(6)[key], value), key


def test_population_task_and_failures_through_slurm(slurm_env, digits_population, tmp_path):
    population = shutil.copytree(digits_population, tmp_path / "zoo")
    shards = ["num_shards=2", "shard=0,1"]  # two jobs, each its share of the grid points
    result = launch("launcher=slurm", "task=cka", f"population={population}", *shards, *CPU_ONLY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 jobs launched, none failed" in result.stdout + result.stderr
    assert len(list(population.glob("landscape/*/cka_epoch_0003.json"))) == 2

    # a run whose resume checkpoint is corrupt fails inside training, after its directory exists
    digits = Recipe(augment=Augment(crop_padding=1, hflip=False, rotation=10))
    corrupt = RunDir(
        RunSpec(width=2, batch_size=128, epochs=1, recipe=digits, out_dir=str(tmp_path)).run_dir
    )
    corrupt.checkpoints.mkdir(parents=True)
    (corrupt.checkpoints / "epoch_0001.safetensors").write_bytes(b"torn")
    (corrupt.checkpoints / "state_0001.pt").write_bytes(b"torn")

    # 3 jobs on a cluster whose arrays hold 2: in batches of MaxArraySize, one array each
    sweep = ["width=2", "batch_size=9999,64,128", "seed=0", "epochs=1", f"out_dir={tmp_path}"]
    sweep.append("hydra.sweeper.preflight=false")  # the bad job must fail as a job
    batches = f"hydra.sweeper.max_batch_size={MAX_ARRAY_SIZE}"
    failed = launch("launcher=slurm", *sweep, *CPU_ONLY, batches)
    assert failed.returncode == 1
    log = failed.stdout + failed.stderr
    assert log.count("Submitit 'slurm' sweep output dir") == 2
    assert "ConfigError: batch_size=9999 is not allowed" in log  # rejected before any run dir
    assert "ptmz: 2 of 3 jobs failed" in log
    assert RunDir(tmp_path / "digits_resnet18" / corrupt.path.name).state == "failed"
    assert "PtmzError: " in corrupt.status["error"] and "is unreadable" in corrupt.status["error"]
    (done,) = [r for r in runs(tmp_path) if r.path != corrupt.path]
    assert done.state == "done"


def _study_record(zoo: Path) -> dict:
    path = zoo / "study.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def test_a_study_finishes_on_the_cluster_alone_and_a_killed_driver_resumes(slurm_env, tmp_path):
    study = [
        "launcher=slurm",
        "task=study",
        "width=[2]",
        "batch_size=[64,128]",
        "epochs=1",
        "task.shards=2",
        f"out_dir={tmp_path}",
        *STUDY_FAST,
        *CPU_ONLY,
    ]
    submitted = launch(*study, timeout=120)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    driver = re.search(r"the study runs as job (\d+)", submitted.stdout + submitted.stderr).group(1)
    zoo = tmp_path / "digits_resnet18"
    # the submitting process has returned; the study is the cluster's now
    assert _study_record(zoo).get("state") != "done"
    twice = launch(*study, timeout=120)  # a second driver for the same zoo is refused
    assert twice.returncode == 1
    assert f"this zoo's study is running as SLURM job {driver}" in twice.stderr

    # kill the driver once it is measuring, with its hessian jobs queued or running
    _wait_for(
        lambda: _study_record(zoo).get("stage") in ("hessian", "curve", "cka"), 400, "hessian"
    )
    subprocess.run(["scancel", driver], check=True)
    _wait_for(lambda: not _squeue(driver), 60, f"job {driver} to end")
    assert _study_record(zoo)["state"] == "running"  # the driver died before saying otherwise

    again = launch(*study, timeout=120)  # the same command resumes it
    assert again.returncode == 0, again.stdout + again.stderr
    resumed = re.search(r"the study runs as job (\d+)", again.stdout + again.stderr).group(1)
    _wait_for(lambda: _study_record(zoo).get("state") == "done", 600, "the resumed study")
    record = _study_record(zoo)
    assert record["driver"] == f"SLURM job {resumed}"
    stages = {s["name"]: (s["done"], s["total"]) for s in record["stages"]}
    assert stages["train"] == (4, 4) and stages["hessian"] == (4, 4)
    assert stages["curve"] == (2, 2) and stages["cka"] == (2, 2)
    assert (zoo / "study_map.png").exists() and (zoo / "results.csv").exists()
    # every unit was computed once, by one job of the two drivers: each result file and each
    # run's last epoch is written in exactly one job log
    logs = "".join(p.read_text() for p in (tmp_path / "logs").rglob("*_log.err"))
    written = re.findall(r"wrote (\S+_epoch_\d+\.json)", logs)
    assert len(written) == 4 + 2 + 2 and len(set(written)) == len(written), written
    trained = re.findall(r"(w2_bs\d+_s\d)-\w+ epoch 1/1", logs)
    assert sorted(trained) == ["w2_bs128_s0", "w2_bs128_s1", "w2_bs64_s0", "w2_bs64_s1"]


def _squeue(job: str) -> str:
    return subprocess.run(
        ["squeue", "--noheader", f"--jobs={job}", "--format=%T"], capture_output=True, text=True
    ).stdout.strip()


def test_nothing_is_queued_when_pre_flight_fails(slurm_env, tmp_path):
    def jobs() -> set[str]:  # every job the cluster knows, ended ones included, by job id
        queue = ["squeue", "--noheader", "--states=all", "--format=%i"]
        listed = subprocess.run(queue, capture_output=True, text=True, check=True).stdout.split()
        return {job.split("_")[0] for job in listed}  # an array's tasks count as its job

    before = jobs()
    sweep = ["zoo=cifar10_resnet18", "width=8", "batch_size=64,128", "seed=0", "epochs=1"]
    refused = ["dataset.download=false", f"data_root={tmp_path / 'data'}", f"out_dir={tmp_path}"]
    result = launch("launcher=slurm", *sweep, *refused, *CPU_ONLY)
    assert result.returncode == 1
    assert "pre-flight: dataset=cifar10: not found" in result.stdout + result.stderr
    assert jobs() <= before  # squeue keeps ended jobs for MinJobAge (300 s): none was added
