"""train_run(spec): train one run of a zoo into its run directory, resuming where it stopped."""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ptmz.data import DeviceLoader, ImageDataset, load_dataset, stratified_subset
from ptmz.errors import ConfigError
from ptmz.io import finite_or_none
from ptmz.models import build_model
from ptmz.train.spec import Recipe, RunSpec
from ptmz.zoo.rundir import FINISHED, RunDir

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", name, "auto or cpu: no CUDA device is visible here")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def check_writable(out_dir: str) -> None:
    path = Path(out_dir).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".ptmz-write-probe"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ConfigError("out_dir", out_dir, f"a directory you can write to ({e})") from None


def data_for(spec: RunSpec) -> tuple[ImageDataset, torch.Tensor]:
    """The run's dataset and the indices of its (stratified) training subset."""
    data = load_dataset(spec.dataset, spec.data_root, spec.download)
    subset = stratified_subset(data.train.labels, spec.data_fraction, spec.subset_seed)
    if spec.batch_size > len(subset):
        raise ConfigError(
            "batch_size",
            spec.batch_size,
            f"at most the training subset size, {len(subset)} samples "
            f"(dataset={spec.dataset}, data_fraction={spec.data_fraction})",
        )
    return data, subset


def data_generator(seed: int) -> torch.Generator:
    """The generator of a run's data order and augmentation, independent of its init stream."""
    return torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
    )


def build_optimizer(model: nn.Module, r: Recipe, lr: float, epochs: int, steps_per_epoch: int):
    """The recipe's optimizer and its per-step learning-rate schedule."""
    if r.optimizer == "sgd":
        opt = torch.optim.SGD(
            model.parameters(), lr, momentum=r.momentum, weight_decay=r.weight_decay
        )
    else:
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[r.optimizer]
        opt = cls(model.parameters(), lr, weight_decay=r.weight_decay)
    total = epochs * steps_per_epoch
    if r.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch
        )
    elif r.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    else:
        sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    return opt, sched


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in eval mode over a whole (unaugmented) split."""
    model.eval()
    loss_sum = torch.zeros((), device=loader.labels.device)
    correct = torch.zeros((), device=loader.labels.device, dtype=torch.long)
    for x, y in loader:
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = len(loader.labels)
    return loss_sum.item() / n, correct.item() / n


def train_epoch(
    model: nn.Module,
    loader: DeviceLoader,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    on_step: Callable[[], Any] = lambda: None,
) -> float:
    """One pass of cross-entropy SGD over `loader`; the mean training loss of its batches
    (read from the device once, at the end)."""
    model.train()
    loss_sum = torch.zeros((), device=loader.labels.device)
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_sum += loss.detach() * len(y)
        on_step()
    return loss_sum.item() / len(loader.labels)


def train_run(spec: RunSpec) -> str:
    """Train `spec` into its run directory and return its state: done, diverged, or running
    (when another process holds the run's lock and is training it).

    A finished run returns at once; an interrupted one resumes from its latest checkpoint with
    optimizer, schedule and RNG state, ending with the same weights as an uninterrupted run.
    An exception marks the run `failed` (with the error) and propagates.
    """
    run = RunDir(spec.run_dir)
    if run.state in FINISHED:
        log.info("%s: already %s, skipped", run.path, run.state)
        return run.state
    check_writable(spec.out_dir)
    device = resolve_device(spec.device)
    data, subset = data_for(spec)
    run.create(spec.to_dict())
    with run.lock() as mine:
        if not mine:
            log.warning("%s: another process is training this run, skipped", run.path)
            return "running"
        if run.state in FINISHED:  # finished while we were loading data
            return run.state
        try:
            return _train(spec, run, data, subset, device)
        except BaseException as error:  # KeyboardInterrupt too: the run must not look `running`
            run.write_status(
                "failed",
                epoch=run.resume_epoch,
                epochs=spec.epochs,
                error=f"{type(error).__name__}: {error}",
                host=socket.gethostname(),
            )
            raise


def _train(
    spec: RunSpec, run: RunDir, data: ImageDataset, subset: torch.Tensor, device: torch.device
) -> str:
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, spec.width, data.in_channels, data.num_classes).to(device)
    generator = data_generator(spec.seed)
    train_split = data.train.subset(subset)
    loader = DeviceLoader(
        train_split, spec.batch_size, data.mean, data.std, device, spec.recipe.augment, generator
    )
    eval_train = DeviceLoader(train_split, 1024, data.mean, data.std, device)
    eval_test = DeviceLoader(data.test, 1024, data.mean, data.std, device)
    optimizer, schedule = build_optimizer(model, spec.recipe, spec.lr, spec.epochs, len(loader))

    def measure(epoch: int, **extra: Any) -> dict[str, Any]:
        train_loss, train_acc = evaluate(model, eval_train)
        test_loss, test_acc = evaluate(model, eval_test)
        values = dict(
            train_loss=train_loss,
            train_acc=train_acc,
            test_loss=test_loss,
            test_acc=test_acc,
            **extra,
        )
        return {"epoch": epoch, **{k: finite_or_none(v) for k, v in values.items()}}

    def checkpoint(epoch: int, records: list[dict[str, Any]]) -> None:
        state = {
            "epoch": epoch,
            "records": records,
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "generator": generator.get_state(),
        }
        run.save_checkpoint(epoch, model.state_dict(), state, keep=spec.is_checkpoint)
        run.write_records(records)

    start = run.resume_epoch
    if start is None:
        start, records = 0, [measure(0)]
        checkpoint(0, records)
    else:
        state = run.load_state(start)
        model.load_state_dict(run.load_weights(start, device))
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        records = state["records"]
        log.info("%s: resuming after epoch %d", run.path, start)

    status = dict(epochs=spec.epochs, host=socket.gethostname())
    run.write_status("running", epoch=start, **status)
    bar = tqdm(
        total=spec.epochs * len(loader),
        initial=start * len(loader),
        desc=run.path.name,
        disable=not spec.progress,
        leave=False,
    )
    for epoch in range(start + 1, spec.epochs + 1):
        began = time.perf_counter()
        bar.set_description(f"{run.path.name} epoch {epoch}/{spec.epochs}")
        batch_loss = train_epoch(model, loader, optimizer, schedule, bar.update)
        record = measure(
            epoch,
            batch_loss=batch_loss,
            lr=schedule.get_last_lr()[0],
            seconds=time.perf_counter() - began,
        )
        records.append(record)
        bar.set_postfix(test_acc=record["test_acc"])
        if not math.isfinite(batch_loss) or record["train_loss"] is None:
            run.write_records(records)
            run.write_status("diverged", epoch=epoch, **status)
            log.warning("%s: non-finite loss in epoch %d, marked diverged", run.path, epoch)
            bar.close()
            return "diverged"
        checkpoint(epoch, records)
        run.write_status("running", epoch=epoch, **status)
        log.info(
            "%s epoch %d/%d: %s",
            run.path.name,
            epoch,
            spec.epochs,
            {k: round(v, 4) for k, v in record.items() if k != "epoch"},
        )
    bar.close()
    run.write_status("done", epoch=spec.epochs, **status)
    run.drop_resume_state()
    return "done"
