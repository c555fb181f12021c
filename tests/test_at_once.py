"""A job's runs trained at the same time (`concurrent`) against one after another."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import torch

from ptmz.errors import ConfigError
from ptmz.tasks import run_task, usable_cpus
from ptmz.train.at_once import at_once, stop_if_asked
from ptmz.train.run import Trainee
from ptmz.zoo import RunDir

from conftest import training_gap

GRID = ("width=2", "batch_size=[64,256]", "epochs=2", "seed=[0,1]", "progress=false")


def trained(config, out, *overrides: str) -> list[RunDir]:
    assert run_task(config(f"out_dir={out}", *GRID, *overrides)) == ["done"] * 4
    return sorted((RunDir(p) for p in (out / "digits_resnet18").iterdir()), key=lambda r: r.path)


def one_at_a_time(config, out, *overrides: str) -> list[RunDir]:
    """`trained` one run after another, with the torch threads each of two runs at once gets
    on the CPU (another thread count sums in another order)."""
    threads = torch.get_num_threads()
    try:
        return trained(config, out, f"threads={max(1, usable_cpus() // 2)}", *overrides)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("seeds_together", [False, True], ids=["alone", "seeds_together"])
def test_concurrent_runs_train_exactly_what_one_at_a_time_trains(config, tmp_path, seeds_together):
    """Two grid points of two seeds, trained two runs (or with seeds together two points) at a
    time, end with the records and weights of the same runs trained one after another with as
    many threads: every run keeps its own generator, data and optimizer."""
    together = f"seeds_together={str(seeds_together).lower()}"
    one = one_at_a_time(config, tmp_path / "one", together)
    two = trained(config, tmp_path / "two", together, "concurrent=2")
    assert [r.path.name for r in one] == [r.path.name for r in two]
    for a, b in zip(one, two, strict=True):
        assert [r["train_loss"] for r in a.records] == [r["train_loss"] for r in b.records]
        wa, wb = a.load_weights(2), b.load_weights(2)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), a.path.name
    assert not torch.equal(one[0].load_weights(2)["fc.weight"], one[1].load_weights(2)["fc.weight"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("seeds_together", [False, True], ids=["alone", "seeds_together"])
def test_concurrent_runs_on_cuda_graphs_train_what_one_at_a_time_trains(
    config, tmp_path, seeds_together
):
    """On CUDA, each run in a stream of its own, its graphs recorded while the other trains:
    every run moves its weights as the same run trained alone does (cuDNN picks its algorithms
    by timing, so not bitwise), and the runs stay distinct."""
    cuda = ("device=cuda", "cuda_graph=true", f"seeds_together={str(seeds_together).lower()}")
    one = trained(config, tmp_path / "one", *cuda)
    two = trained(config, tmp_path / "two", *cuda, "concurrent=2")
    for a, b in zip(one, two, strict=True):
        assert a.path.name == b.path.name
        assert training_gap(str(b.path), str(a.path)) < 0.25, a.path.name
    assert training_gap(str(two[0].path), str(two[1].path)) > 0.5  # seeds 0 and 1 differ


@pytest.fixture
def ctrl_c_reaches_python():
    """Python's own Ctrl-C handler for the test, whatever the runner inherited: a shell starts
    a background job with SIGINT ignored, and an ignored Ctrl-C rightly stops nothing."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


def interrupt_main_thread_after_epoch(monkeypatch, epoch: int) -> None:
    """Deliver SIGINT (a Ctrl-C) to the main thread once any run has recorded `epoch`, as
    the terminal would, while the runs train in worker threads."""
    end_epoch = Trainee.end_epoch

    def end_then_signal(self, *args):
        end_epoch(self, *args)
        if self.epoch == epoch:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    monkeypatch.setattr(Trainee, "end_epoch", end_then_signal)


def test_ctrl_c_stops_every_point_and_leaves_none_running(
    config, tmp_path, monkeypatch, ctrl_c_reaches_python
):
    """Ctrl-C while two runs train at once (each run signals after its first epoch: two
    Ctrl-Cs): both stop at their next step and are marked failed (none is left looking
    `running`), the runs not started stay so, and the relaunched job resumes them to the end
    that uninterrupted training reaches."""
    grid = (f"out_dir={tmp_path / 'cut'}", *GRID, "concurrent=2")
    with monkeypatch.context() as patch:
        interrupt_main_thread_after_epoch(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            run_task(config(*grid))
    runs = sorted((tmp_path / "cut" / "digits_resnet18").iterdir())
    states = [RunDir(r).status for r in runs]
    assert {s["state"] for s in states} == {"failed"}, states
    assert all("Stopped" in s["error"] for s in states)
    assert len(runs) == 2  # the other two never started
    resumed = trained(config, tmp_path / "cut", "concurrent=2")
    for a, b in zip(one_at_a_time(config, tmp_path / "one"), resumed, strict=True):
        assert a.path.name == b.path.name
        wa, wb = a.load_weights(2), b.load_weights(2)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), b.path.name


def test_at_once_returns_each_outcome_and_a_failure_stops_no_other():
    def fails(stop):
        raise ValueError("this one")

    outcomes = at_once([fails, lambda stop: 7, fails], 2, torch.device("cpu"))
    assert isinstance(outcomes[0], ValueError) and outcomes[1:] == [7, outcomes[2]]
    assert isinstance(outcomes[2], ValueError)


def test_a_failing_run_stops_no_concurrent_one(config, tmp_path):
    """A packed value the data cannot serve fails its run inside its worker; the other run
    trains to the end, and the job raises the failure after."""
    grid = ("width=2", "batch_size=[64,99999]", "epochs=1", "seed=0", "progress=false")
    with pytest.raises(ConfigError, match="batch_size=99999 .*at most the training subset"):
        run_task(config(f"out_dir={tmp_path}", *grid, "concurrent=2"))
    (run,) = (tmp_path / "digits_resnet18").iterdir()
    assert run.name.startswith("w2_bs64_s0") and RunDir(run).state == "done"


def test_ctrl_c_twice_still_waits_for_every_running_task_to_stop(ctrl_c_reaches_python):
    """The second Ctrl-C arrives while the first is stopping the tasks; at_once still returns
    only once every task that started has ended (Python 3.11's join, interrupted, would let it
    return early), and the tasks not started never start."""
    started, ended = [], []
    main = threading.main_thread().ident

    def trains(stop):
        started.append(1)
        try:
            if len(started) == 1:
                signal.pthread_kill(main, signal.SIGINT)
                assert stop.wait(5)  # the first Ctrl-C reached the tasks
                signal.pthread_kill(main, signal.SIGINT)
                time.sleep(0.5)  # what is left of a step
            for _ in range(1000):  # at most 10 s
                stop_if_asked(stop)
                time.sleep(0.01)
        finally:
            ended.append(1)

    with pytest.raises(KeyboardInterrupt):
        at_once([trains] * 5, 2, torch.device("cpu"))
    assert len(ended) == len(started) == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("value", [0, -1, "two", True, 1.5])
def test_concurrent_must_be_a_positive_whole_number(config, tmp_path, value):
    cfg = config(f"out_dir={tmp_path}", *GRID, f"concurrent={str(value).lower()}")
    with pytest.raises(ConfigError, match=f"concurrent={value!r}.*1 or more"):
        run_task(cfg)
    assert not (tmp_path / "digits_resnet18").exists()


def test_concurrent_runs_refuse_compile(config, tmp_path):
    cfg = config(f"out_dir={tmp_path}", *GRID, "concurrent=2", "compile=true")
    with pytest.raises(ConfigError, match="compile=True.*concurrent > 1"):
        run_task(cfg)
