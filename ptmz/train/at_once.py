"""Several trainings at the same time in one process: a thread each and, on CUDA, a stream
each, so that one's kernels run while another's wait on the host or on latency (a small model
at a small batch size leaves most of a GPU idle)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")
Task = Callable[[threading.Event], T]  # a training, told through the event to stop


class Stopped(KeyboardInterrupt):
    """Raised inside a training told to stop because the job was interrupted (Ctrl-C, a
    signal's exception) while it ran beside others."""


def stop_if_asked(stop: threading.Event | None) -> None:
    """Called once a step: raise Stopped if `stop` is set."""
    if stop is not None and stop.is_set():
        raise Stopped("the job was interrupted while this run trained beside others")


def in_stream(run: Callable[[], T], stream: torch.cuda.Stream | None) -> T:
    """`run()` with `stream` as the thread's current CUDA stream (None: as it is)."""
    with torch.cuda.stream(stream) if stream is not None else nullcontext():
        return run()


def at_once(tasks: Sequence[Task], workers: int, device: torch.device) -> list[T | Exception]:
    """Run `tasks`, `workers` at a time (threads; on CUDA each task in a stream of its own for
    its whole life, where the caching allocator keeps its memory), and return each one's
    result or the exception it raised: one failing does not stop the others.

    Ctrl-C sets the event every task checks once a step, rather than raising in this thread:
    the running tasks raise Stopped (and mark their runs as their own interruption would),
    those not yet started do not start, and KeyboardInterrupt is raised here once all have
    stopped. An exception a signal handler raises here (SystemExit) stops them the same way,
    without waiting. With one worker the tasks run in this thread, where Ctrl-C reaches them
    directly."""
    stop = threading.Event()
    if workers == 1:
        return [_outcome(partial(task, stop)) for task in tasks]

    threads = torch.get_num_threads()

    def start(task: Task) -> T:
        stop_if_asked(stop)
        if device.type == "cpu":  # the cores shared out: more threads than cores slow all down
            torch.set_num_threads(max(1, threads // workers))
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        return in_stream(partial(task, stop), stream)

    with _ctrl_c_sets(stop), ThreadPoolExecutor(workers, thread_name_prefix="ptmz-run") as pool:
        futures = [pool.submit(start, task) for task in tasks]
        try:
            # A timeout so that a signal's exception is raised within a second, whichever
            # thread the signal reached.
            while wait(futures, timeout=1.0).not_done:
                pass
        except BaseException:
            stop.set()
            raise
        finally:
            torch.set_num_threads(threads)  # what threads started later begin with
    if stop.is_set():
        raise KeyboardInterrupt("the runs training at once were stopped")
    return [_result(future) for future in futures]


@contextmanager
def _ctrl_c_sets(stop: threading.Event) -> Iterator[None]:
    """Within: SIGINT sets `stop` instead of raising KeyboardInterrupt in the main thread, where
    an exception raised at any instruction could leave a lock that a worker waits on held."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives Python's signal handlers
        return

    def handle(signum: int, frame: object) -> None:
        log.warning("stopping the runs training at once (each within a step)")
        stop.set()

    previous = signal.signal(signal.SIGINT, handle)
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
