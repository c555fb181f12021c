"""Several trainings at the same time in one process: a thread each and, on CUDA, a stream
each, so that one's kernels run while another's wait on the host or on latency (a small model
at a small batch size leaves most of a GPU idle)."""

from __future__ import annotations

import logging
import queue
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from functools import partial
from typing import TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")
Task = Callable[[threading.Event], T]  # a training, told through the event to stop
MAX_CUDA_WORKERS = 32  # torch hands out 32 streams per priority, round robin


class Stopped(KeyboardInterrupt):
    """Raised inside a training told to stop because the job was interrupted (Ctrl-C, a
    signal's exception) while it ran beside others."""


def stop_if_asked(stop: threading.Event | None) -> None:
    """Called once a step (and before each run is built): raise Stopped if `stop` is set."""
    if stop is not None and stop.is_set():
        raise Stopped("the job was interrupted while this run trained beside others")


def share_cores(workers: int, threads: int) -> None:
    """Give the calling thread its share of `threads` torch CPU threads among `workers` threads
    computing at once: more threads than cores slow every one of them down."""
    torch.set_num_threads(max(1, threads // workers))


def at_once(tasks: Sequence[Task], workers: int, device: torch.device) -> list[T | Exception]:
    """Run `tasks`, `workers` at a time in threads, and return each one's result or the
    exception it raised: one failing does not stop the others. Each worker thread keeps one
    CUDA stream for its life (on CUDA; the workers' streams are distinct, so a CUDA graph a
    task records on its stream captures nothing of the others', and the caching allocator
    keeps a worker's memory for its next task) and, on the CPU, its share of the cores.

    Ctrl-C sets the event every task checks once a step, rather than raising in this thread
    (where an exception at any instruction could leave held a lock that a worker waits on):
    the running tasks raise Stopped (and mark their runs as their own interruption would),
    those not yet started do not start, and KeyboardInterrupt is raised here once all have
    stopped. A second Ctrl-C gives Ctrl-C back its usual handler. An exception a signal
    handler raises here (SystemExit) stops the tasks the same way. With one worker the tasks
    run in this thread, where Ctrl-C reaches them directly."""
    stop = threading.Event()
    if workers == 1:
        return [_outcome(partial(task, stop)) for task in tasks]
    if device.type == "cuda" and workers > MAX_CUDA_WORKERS:
        raise ValueError(f"at most {MAX_CUDA_WORKERS} workers on CUDA, not {workers}")
    streams: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(workers):  # drawn one after another: distinct streams
        streams.put(torch.cuda.Stream(device) if device.type == "cuda" else None)
    threads = torch.get_num_threads()

    def enter_worker() -> None:
        share_cores(workers, threads)
        stream = streams.get()
        if stream is not None:
            torch.cuda.set_stream(stream)

    def start(task: Task) -> T:
        stop_if_asked(stop)
        return task(stop)

    ctrl_c = _CtrlC()
    pool = ThreadPoolExecutor(workers, "ptmz-run", initializer=enter_worker)
    with ctrl_c.caught(), pool:
        futures = [pool.submit(start, task) for task in tasks]
        try:
            while wait(futures, timeout=0.2).not_done:
                if ctrl_c.pressed:
                    stop.set()
        except BaseException:
            stop.set()
            raise
        finally:
            torch.set_num_threads(threads)  # what threads started later begin with
    outcomes = [_result(future) for future in futures]
    if stop.is_set():
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                log.error("failed before the interruption: %s: %s", type(outcome).__name__, outcome)
        raise KeyboardInterrupt("the runs training at once were stopped")
    return outcomes


class _CtrlC:
    """While `caught`: Ctrl-C (SIGINT) only counts as `pressed`, which the waiting loop turns
    into the stop event (setting it from the handler could deadlock on the event's lock); a
    second one puts the usual handler back. Nothing is caught where SIGINT is ignored, or off
    the main thread (where Python runs no signal handlers)."""

    def __init__(self) -> None:
        self.pressed = False

    @contextmanager
    def caught(self) -> Iterator[None]:
        on_main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGINT) if on_main else signal.SIG_IGN
        if previous is signal.SIG_IGN:
            yield
            return
        previous = signal.SIG_DFL if previous is None else previous  # a handler set from C

        def handle(signum: int, frame: object) -> None:
            if self.pressed:
                log.warning("Ctrl-C again: the usual handler is back")
                signal.signal(signal.SIGINT, previous)
                return
            self.pressed = True
            log.warning("stopping the runs training at once (each at its next step)")

        signal.signal(signal.SIGINT, handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def _outcome(run: Callable[[], T]) -> T | Exception:
    try:
        return run()
    except Exception as error:
        return error


def _result(future: Future) -> T | Exception:
    error = future.exception()
    return future.result() if error is None else error
