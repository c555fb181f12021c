"""train_run(spec): train one run of a zoo into its run directory, resuming where it stopped;
train_together(specs): the seeds of one grid point as one vectorised model, same directories."""

from __future__ import annotations

import logging
import math
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ptmz.data import DeviceLoader, ImageDataset, load_dataset, stratified_subset
from ptmz.errors import ConfigError, PtmzError
from ptmz.io import finite_or_none
from ptmz.models import build_model
from ptmz.objectives import Classification, objective_for
from ptmz.train.at_once import stop_if_asked
from ptmz.train.gradients import autocast
from ptmz.train.loop import (
    build_optimizer,
    data_generator,
    model_gradients,
    prepare_model,
    resolve_device,
    train_epoch,
)
from ptmz.train.spec import RunSpec
from ptmz.train.together import Together
from ptmz.train.tracking import open_tracker
from ptmz.zoo.rundir import FINISHED, RunDir

log = logging.getLogger(__name__)


def check_writable(out_dir: str) -> None:
    path = Path(out_dir).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        # a probe of its own: jobs and threads checking one folder at once must not share one
        tempfile.TemporaryFile(dir=path).close()
    except OSError as e:
        raise ConfigError("out_dir", out_dir, f"a directory you can write to ({e})") from None


# Runs trained at once (`at_once`) load their data one at a time: a download and its extraction
# into the same files must happen once.
LOADING = threading.Lock()


def data_for(spec: RunSpec, device: torch.device) -> ImageDataset:
    """The run's dataset on `device`, its training split narrowed to the run's (stratified)
    subset; one copy that every run of a job shares."""
    with LOADING:
        data = load_dataset(spec.dataset, spec.data_root, spec.download)
    subset = training_subset(spec, data)
    return replace(data, train=data.train.subset(subset).to(device), test=data.test.to(device))


def training_subset(spec: RunSpec, data: ImageDataset) -> torch.Tensor:
    """The indices of the run's (stratified) training subset, checked to hold a batch."""
    subset = stratified_subset(data.train.labels, spec.data_fraction, spec.subset_seed)
    if spec.batch_size > len(subset):
        raise ConfigError(
            "batch_size",
            spec.batch_size,
            f"at most the training subset size, {len(subset)} samples "
            f"(dataset={spec.dataset}, data_fraction={spec.data_fraction})",
        )
    return subset


# A run's initialisation is drawn from the process's global generator, seeded with the run's
# seed: runs built in threads at once (`at_once`) take turns, or they would draw each other's.
SEEDING = threading.Lock()


class Trainee:
    """One run in training: its model, data stream, optimizer, schedule and records, and the
    run directory they are checkpointed to. `data` is `data_for(spec, device)`. Constructing
    it resumes the run from its resume point at `epoch` (one of `run.resume_epochs`), or
    measures and saves epoch 0 where `epoch` is None."""

    def __init__(
        self,
        spec: RunSpec,
        run: RunDir,
        data: ImageDataset,
        device: torch.device,
        epoch: int | None,
    ) -> None:
        with SEEDING:
            torch.manual_seed(spec.seed)
            model = build_model(
                spec.model, spec.width, data.in_channels, data.num_classes, data.image_size
            )
        self.spec, self.run = spec, run
        self.objective = objective_for(spec.dataset, spec.to_dict())
        self.model = prepare_model(model, device, channels_last=not spec.compile)
        self.generator = data_generator(spec.seed)
        train, mean, std = data.train, data.mean, data.std
        self.loader = DeviceLoader(
            train, spec.batch_size, mean, std, device, spec.recipe.augment, self.generator
        )
        self.eval_train = DeviceLoader(train, 1024, mean, std, device)
        self.eval_test = DeviceLoader(data.test, 1024, mean, std, device)
        self.optimizer, self.schedule = build_optimizer(
            self.model.parameters(), spec.recipe, spec.lr, spec.epochs, len(self.loader)
        )
        self.gradients = model_gradients(
            self.model, self.objective.loss, spec.precision, spec.compile, spec.cuda_graph
        )
        self.info = dict(epochs=spec.epochs, host=socket.gethostname())
        self.state: str | None = None  # done or diverged once finished
        self.diverged = False
        self.tracker = open_tracker(
            spec.logger, spec.out_dir, spec.zoo, run.path.name, spec.to_dict()
        )
        self._start(epoch)
        if self.tracker and epoch is None:
            self.tracker.log(self.records[0])

    def _start(self, epoch: int | None) -> None:
        if epoch is None:
            self.epoch, self.records = 0, [self.measure(0)]
            self.checkpoint()
        else:
            self.epoch = epoch
            state = self.run.load_state(self.epoch)
            device = self.loader.labels.device
            self.model.load_state_dict(self.run.load_weights(self.epoch, device))
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            self.generator.set_state(state["generator"])
            self.records = state["records"]
            self.run.write_records(self.records)  # a kill may have come between state and records
            if self.epoch < self.run.resume_epoch:
                log.info("%s: back to epoch %d to rejoin its seeds", self.run.path, self.epoch)
            log.info("%s: resuming after epoch %d", self.run.path, self.epoch)
        self._commit()  # at the last epoch: killed between its checkpoint and `done`

    def measure(self, epoch: int, **extra: Any) -> dict[str, Any]:
        values = {}
        for split, loader in (("train", self.eval_train), ("test", self.eval_test)):
            with autocast(loader.labels.device, self.spec.eval_precision):
                scores = self.objective.evaluate(self.model, loader)
            values.update({f"{split}_{k}": v for k, v in scores.items() if v is not None})
        values.update(extra)
        return {"epoch": epoch, **{k: finite_or_none(v) for k, v in values.items()}}

    def checkpoint(self) -> None:
        state = {
            "epoch": self.epoch,
            "records": self.records,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "generator": self.generator.get_state(),
        }
        self.run.save_checkpoint(self.epoch, self.model.state_dict(), state)
        self.run.write_records(self.records)

    def train_epoch(self, on_step: Callable[[], Any]) -> float:
        return train_epoch(
            self.model, self.loader, self.optimizer, self.schedule, on_step, self.gradients
        )

    def end_epoch(self, batch_loss: float, seconds: float) -> None:
        """Record, check and checkpoint the epoch just trained; finish the run after its last."""
        self.save_epoch(batch_loss, seconds)
        self.commit_epoch()

    def save_epoch(self, batch_loss: float, seconds: float) -> None:
        """Record, check and checkpoint the epoch just trained. Until `commit_epoch`, the
        previous resume point stays: seeds trained together commit only once all have saved."""
        self.epoch += 1
        lr = self.schedule.get_last_lr()[0]
        record = self.measure(self.epoch, batch_loss=batch_loss, lr=lr, seconds=seconds)
        self.records.append(record)
        self.diverged = not math.isfinite(batch_loss) or record["train_loss"] is None
        if self.diverged:
            self.run.write_records(self.records)
        else:
            self.checkpoint()

    def commit_epoch(self) -> None:
        """Drop the previous resume point, or mark the run diverged or done."""
        if self.tracker:
            self.tracker.log(self.records[-1])
        if self.diverged:
            log.warning(
                "%s: non-finite loss in epoch %d, marked diverged", self.run.path, self.epoch
            )
            self._finish("diverged")
            return
        log.info(
            "%s epoch %d/%d: %s",
            self.run.path.name,
            self.epoch,
            self.spec.epochs,
            epoch_line(self.records[-1]),
        )
        self._commit()

    def _commit(self) -> None:
        self.run.keep_resume_point(self.epoch, self.spec.is_checkpoint)
        if self.epoch == self.spec.epochs:
            self._finish("done")
        else:
            self.run.write_status("running", epoch=self.epoch, **self.info)

    def _finish(self, state: str) -> None:
        self.state = state
        if self.tracker:
            self.tracker.close()
        self.gradients = None  # it steps no more: free its CUDA graphs' memory for the next run
        self.run.write_status(state, epoch=self.epoch, **self.info)
        if state == "done":
            self.run.drop_resume_state()


def train_run(spec: RunSpec, stop: threading.Event | None = None) -> str:
    """Train `spec` into its run directory and return its state: done, diverged, or running
    (when another process holds the run's lock and is training it). Setting `stop` interrupts
    it within a step (see `at_once`).

    A finished run returns at once; an interrupted one resumes from its latest checkpoint with
    optimizer, schedule and RNG state, ending with the same weights as an uninterrupted run.
    An exception marks the run `failed` (with the error) and propagates.
    """
    return _train_locked([spec], False, stop)[0]


def train_together(specs: Sequence[RunSpec], stop: threading.Event | None = None) -> list[str]:
    """Train runs that differ only in their seed as one vectorised model (see `together`);
    each run's directory, records and checkpoints are those `train_run` writes, so a run can
    be started together and resumed alone, or the other way round. Returns their states.

    Runs at different epochs (some resumed further than others) are stepped in groups of the
    same epoch until they meet. An exception marks every unfinished run `failed`."""
    seeds = {s.seed for s in specs}
    grid_points = {s.grid_point for s in specs}
    if len(grid_points) > 1 or len(seeds) < len(specs):
        raise ConfigError(
            "seeds_together",
            True,
            "runs that differ in their seed only, each seed once "
            f"(got {len(specs)} runs, {len(seeds)} seeds, {len(grid_points)} grid points)",
        )
    if any(s.compile for s in specs):
        raise ConfigError(
            "compile", True, "false with seeds_together (cuda_graph=true graphs their step)"
        )
    if not isinstance(objective_for(specs[0].dataset, specs[0].to_dict()), Classification):
        raise ConfigError(
            "seeds_together",
            True,
            f"false for dataset={specs[0].dataset}: seeds train together for classifiers only",
        )
    return _train_locked(specs, True, stop)


def _train_locked(
    specs: Sequence[RunSpec], together: bool, stop: threading.Event | None = None
) -> list[str]:
    """Lock the unfinished runs of `specs` (all sharing one dataset and subset), build their
    trainees and train them one by one or `together`. Returns each run's state, `running` for
    one that another process holds. A run that cannot start (an unreadable checkpoint, say) is
    marked failed and the others go on; an exception while fitting marks every unfinished one
    failed. The first error is raised at the end."""
    runs = [RunDir(spec.run_dir) for spec in specs]
    # a run whose config or status is damaged is neither resumed nor retrained over: named
    errors: list[Exception] = [PtmzError(run.damage) for run in runs if run.damage]
    todo = [
        (spec, run)
        for spec, run in zip(specs, runs, strict=True)
        if run.state not in (*FINISHED, "damaged")
    ]
    for run in runs:
        if run.state in FINISHED:
            log.info("%s: already %s, skipped", run.path, run.state)
            if run.state == "done":  # killed between writing `done` and dropping its state
                run.drop_resume_state()
    held_elsewhere = set()
    if todo:
        check_writable(specs[0].out_dir)
        device = resolve_device(specs[0].device)
        for key in ("compile", "cuda_graph"):
            if getattr(specs[0], key) and device.type != "cuda":
                raise ConfigError(key, True, f"false on device {device}: it is for CUDA")
            if getattr(specs[0], key) and specs[0].dataset == "convection":
                reason = "its loss differentiates the inputs and picks points by kind"
                raise ConfigError(key, True, f"false for dataset=convection ({reason})")
        data = data_for(specs[0], device)
        with ExitStack() as locks:
            mine = []
            for spec, run in todo:
                if not locks.enter_context(run.lock()):
                    log.warning("%s: another process is training this run, skipped", run.path)
                    held_elsewhere.add(run.path)
                elif run.state not in FINISHED:  # it may have finished while we loaded data
                    run.create(spec.to_dict())  # under the lock: never over a running one's
                    mine.append((spec, run))
            try:
                trainees = []
                resume = _group_epochs if together else _latest_epochs
                for (spec, run), epoch in zip(mine, resume([run for _, run in mine]), strict=True):
                    stop_if_asked(stop)
                    try:
                        trainees.append(Trainee(spec, run, data, device, epoch))
                    except Exception as error:
                        _mark_failed(spec, run, error)
                        errors.append(error)
                (_vectorised if together else _one_by_one)(trainees, stop)
            except BaseException as error:  # KeyboardInterrupt too: no run may look `running`
                for spec, run in mine:
                    if run.state not in FINISHED:
                        _mark_failed(spec, run, error)
                raise
    if errors:
        raise errors[0]
    return ["running" if run.path in held_elsewhere else run.state for run in runs]


def _latest_epochs(runs: Sequence[RunDir]) -> list[int | None]:
    return [run.resume_epoch for run in runs]


def _group_epochs(runs: Sequence[RunDir]) -> list[int | None]:
    """Where each of the seeds trained together resumes: at its latest resume point, except
    that a run ahead of the others goes back to their epoch where it still has that resume
    point (a kill came between the seeds' checkpoints of one epoch), so the group steps on as
    one network, exactly as it would have uninterrupted."""
    points = [run.resume_epochs for run in runs]
    common = min((p[-1] if p else 0) for p in points) if points else 0
    return [common if common in p else (p[-1] if p else None) for p in points]


def _mark_failed(spec: RunSpec, run: RunDir, error: BaseException) -> None:
    """Mark `run` failed with `error`. Where that write fails too (a full disk, a read-only
    folder: often the cause of `error` itself) it is logged, so `error` stays the one raised."""
    try:
        run.write_status(
            "failed",
            epoch=run.resume_epoch,
            epochs=spec.epochs,
            error=f"{type(error).__name__}: {error}",
            host=socket.gethostname(),
        )
    except OSError as unwritten:
        log.error("%s: could not be marked failed (%s); it still says running", run.path, unwritten)


def epoch_line(record: dict[str, Any]) -> str:
    """An epoch's record as a log line: `train_loss 0.1234  test_acc 0.9512 ... (1.2 s)`."""
    values = [
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in record.items()
        if k not in ("epoch", "seconds") and v is not None
    ]
    seconds = record.get("seconds")
    return "  ".join(values) + (f"  ({seconds:.1f} s)" if seconds is not None else "")


def _progress(trainees: Sequence[Trainee], label: str) -> tqdm:
    """A bar over the training steps of all `trainees` (same steps per epoch)."""
    steps = len(trainees[0].loader) if trainees else 0
    return tqdm(
        total=sum(t.spec.epochs for t in trainees) * steps,
        initial=sum(t.epoch for t in trainees) * steps,
        desc=label,
        # a bar in a terminal; in a log file the epoch lines say as much in far fewer bytes
        disable=not (trainees and trainees[0].spec.progress and sys.stderr.isatty()),
        leave=False,
    )


def _stepped(bar: tqdm, runs: int, stop: threading.Event | None) -> None:
    """After each training step: stop if asked, count the step on the bar."""
    stop_if_asked(stop)
    bar.update(runs)


def _one_by_one(trainees: list[Trainee], stop: threading.Event | None) -> None:
    for trainee in trainees:
        bar = _progress([trainee], trainee.run.path.name)
        on_step = partial(_stepped, bar, 1, stop)
        while trainee.state is None:
            bar.set_description(f"{trainee.run.path.name} epoch {trainee.epoch + 1}")
            began = time.perf_counter()
            batch_loss = trainee.train_epoch(on_step)
            trainee.end_epoch(batch_loss, time.perf_counter() - began)
            metric = f"test_{trainee.objective.metric}"
            bar.set_postfix({metric: trainee.records[-1].get(metric)})
        bar.close()


def _vectorised(trainees: list[Trainee], stop: threading.Event | None) -> None:
    active = [t for t in trainees if t.state is None]
    if active:
        names = ", ".join(t.run.path.name for t in active)
        log.info("training %d runs together as one vectorised model: %s", len(active), names)
    bar = _progress(trainees, f"{len(trainees)} seeds together")
    together, members = None, []
    while active:
        epoch = min(t.epoch for t in active)
        group = [t for t in active if t.epoch == epoch]
        if group != members:  # the first epoch, or a run caught up, diverged or finished
            together, members = _together(group), group
        began = time.perf_counter()
        losses = together.train_epoch(partial(_stepped, bar, len(group), stop))
        seconds = (time.perf_counter() - began) / len(group)  # each run's share
        # every seed saves the epoch before any commits it: a kill between their writes
        # leaves each a resume point at the group's epoch (see `_group_epochs`)
        for trainee, batch_loss in zip(group, losses, strict=True):
            trainee.save_epoch(batch_loss, seconds)
        for trainee in group:
            trainee.commit_epoch()
        active = [t for t in active if t.state is None]
    bar.close()


def _together(group: list[Trainee]) -> Together:
    spec = group[0].spec
    return Together(
        [t.model for t in group],
        [t.loader for t in group],
        [t.optimizer for t in group],
        [t.schedule for t in group],
        spec.precision,
        spec.cuda_graph,
    )
