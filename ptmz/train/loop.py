"""The training step and its parts: device, data order, optimizer, schedule, epoch, evaluation."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from ptmz.data import DeviceLoader
from ptmz.errors import ConfigError
from ptmz.objectives import Loss, cross_entropy
from ptmz.train.gradients import Gradients, GraphedGradients
from ptmz.train.spec import Recipe


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", name, "auto or cpu: no CUDA device is visible here")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool = True) -> nn.Module:
    """`model` on `device`; on CUDA in channels_last (cuDNN's fastest convolution layouts; the
    same math, and state dicts are saved contiguous) unless asked not to, and with cuDNN timing
    its algorithms once per shape to keep the fastest (a run's shapes repeat every step).
    Never channels_last on a CPU: torch 2.14's oneDNN gets weight gradients wrong in that
    layout (see DeviceLoader).

    Compiled models stay contiguous: torch 2.11's inductor was seen to fail a stride assertion
    in a channels_last convolution backward where the spatial size is 1x1."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
    return model.to(device)


def compile_step(model: nn.Module) -> nn.Module:
    """`model` compiled for training steps with CUDA graphs: the same math, fused into fewer
    kernels (another rounding order), a whole step replayed without per-kernel launch cost;
    the last, smaller batch of an epoch records a second graph. Checkpoints keep using the
    uncompiled module, whose parameters the compiled one shares.

    Meant for CUDA: on a CPU, inductor lays the convolutions out channels_last, where torch
    2.14's oneDNN gets weight gradients wrong (see DeviceLoader), stalls for minutes or
    corrupts the heap, so runs refuse `compile` there."""
    return torch.compile(model, mode="reduce-overhead")


def model_gradients(
    model: nn.Module,
    loss_fn: Loss = cross_entropy,
    precision: str = "fp32",
    compile: bool = False,
    cuda_graph: bool = False,
) -> Gradients:
    """How a training step of `model` computes its loss `loss_fn(model, x, y)` and gradients:
    eagerly, through the compiled model, or replayed from CUDA graphs."""
    step_model = compile_step(model) if compile else model
    loss, params = partial(loss_fn, step_model), list(model.parameters())
    if cuda_graph:
        return GraphedGradients(loss, params, precision, list(model.buffers()))
    return Gradients(loss, params, precision)


def data_generator(seed: int) -> torch.Generator:
    """The generator of a run's data order and augmentation, independent of its init stream."""
    return torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
    )


def build_optimizer(
    params: Iterable[torch.Tensor], r: Recipe, lr: float, epochs: int, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The recipe's optimizer and its per-step learning-rate schedule. The fused
    implementations update all parameters in one kernel: the same update rule as the
    per-parameter loop, without its hundreds of small launches per step."""
    if r.optimizer == "sgd":
        opt = torch.optim.SGD(
            params, lr, momentum=r.momentum, weight_decay=r.weight_decay, fused=True
        )
    else:
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[r.optimizer]
        opt = cls(params, lr, weight_decay=r.weight_decay, fused=True)
    total = epochs * steps_per_epoch
    if r.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=lr,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            cycle_momentum=r.cycle_momentum,
        )
    elif r.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    elif r.schedule == "warmup_cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(warmup_cosine, total=total))
    else:
        sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    return opt, sched


WARMUP = 0.05  # of all steps, in warmup_cosine


def warmup_cosine(step: int, total: int) -> float:
    """The learning-rate factor at `step`: linear from 1/w to 1 over the first w = 5% of the
    steps, then a cosine from 1 to 0 (the usual transformer schedule)."""
    warm = max(1, round(WARMUP * total))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def train_epoch(
    model: nn.Module,
    loader: DeviceLoader,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    on_step: Callable[[], Any] = lambda: None,
    gradients: Gradients | None = None,
) -> float:
    """One pass of training over `loader`; the mean training loss of its batches (read from
    the device once, at the end). `gradients` computes each batch's loss and gradients: by
    default eagerly, the cross-entropy of `model` in fp32."""
    model.train()
    if gradients is None:
        gradients = model_gradients(model)
    device = loader.labels.device
    loss_sum = torch.zeros((), device=device)
    for x, y in loader:
        loss = gradients(x, y)
        optimizer.step()
        schedule.step()
        loss_sum += loss * len(y)
        on_step()
    return loss_sum.item() / len(loader.labels)
