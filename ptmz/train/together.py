"""Several models of one architecture trained as one vectorised model.

The seeds of a grid point differ only in their initialisation, data order and augmentation
draws, so one step can carry them all: their parameters and buffers are stacked along a new
leading dimension, and the forward pass either folds them into one network's channels (the
ResNets, see `fold`) or is `vmap`ped over them (convolutions become grouped convolutions,
batch norm keeps per-model statistics). Each model's loss depends only on its
own slice, so the gradient of the summed losses is every model's own gradient, and an
elementwise optimizer (SGD, Adam) stepping the stacked tensors updates each slice exactly as
it would update that model alone. What is saved and resumed is the separate models and their
optimizers: they are copied into the stack before an epoch and back out after it, while the
stacked tensors themselves stay (a CUDA graph of the step keeps their addresses).
"""

from __future__ import annotations

import copy
import inspect
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ptmz.data import DeviceLoader, stacked_batches
from ptmz.train.fold import fold_batch, fold_state, foldable, folded_skeleton, state_shapes
from ptmz.train.gradients import Gradients, GraphedGradients

Schedule = torch.optim.lr_scheduler.LRScheduler


def _quiet_model_schedules() -> None:
    """The models' own optimizers never step (the stacked one does), so their schedules' first
    step would warn that it came before the optimizer's: a filter for that warning, from this
    module only. Set rather than entered (`catch_warnings` would swap process-wide state under
    runs training in other threads, `at_once`), and set again by every Together, since a
    `catch_warnings` around an import may have dropped one set then."""
    warnings.filterwarnings(
        "ignore", "Detected call of `lr_scheduler.step", UserWarning, re.escape(__name__)
    )


class ModelStack:
    """The parameters and buffers of `models` stacked (leaves of their own), and the
    cross-entropy of a stacked batch: through the models folded into one network's channels
    where the architecture allows (`fold`, the ResNets: a step costs about one model's
    kernels), else through vmap. `fold` False asks for vmap, True for folding (ValueError
    where the models do not fold)."""

    def __init__(self, models: Sequence[nn.Module], fold: bool | None = None) -> None:
        params, self.buffers = stack_module_state(list(models))
        # Contiguous whatever the models' layout: torch 2.11's vmap of batch norm cannot query
        # a channels_last layout, and folding views each tensor in a new shape.
        self.params = {k: p.detach().contiguous().requires_grad_() for k, p in params.items()}
        self.fold = foldable(models[0]) if fold is None else fold
        if self.fold:
            self.skeleton = folded_skeleton(models[0], len(models))
            self.shapes = state_shapes(self.skeleton)
            return
        # The architecture without storage: functional_call supplies every tensor.
        self.skeleton = copy.deepcopy(models[0]).to("meta").train()
        for module in self.skeleton.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.forward = _vmappable(module.forward)

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (M, B, ...) and y (M, B): each model's mean cross-entropy on its own batch, (M,)."""
        if self.fold:
            tensors = fold_state(self.shapes, {**self.params, **self.buffers})
            logits = functional_call(self.skeleton, tensors, (fold_batch(x),))  # (M, B, K)
            per_sample = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
            return per_sample.view_as(y).mean(1)

        def one(params, buffers, x, y):
            return F.cross_entropy(functional_call(self.skeleton, (params, buffers), (x,)), y)

        return vmap(one)(self.params, self.buffers, x, y)

    @torch.no_grad()
    def load(self, models: Sequence[nn.Module]) -> None:
        """Copy each model's parameters and buffers into its slice of the stack."""
        _copy(*self._pairs(models))

    @torch.no_grad()
    def unstack_into(self, models: Sequence[nn.Module]) -> None:
        slices, owns = self._pairs(models)
        _copy(owns, slices)

    def _pairs(self, models: Sequence[nn.Module]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The stack's slice of every parameter and buffer of `models`, and the models' own."""
        slices, owns = [], []
        for i, model in enumerate(models):
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                slices.append(self.params.get(name, self.buffers.get(name))[i])
                owns.append(tensor)
        return slices, owns


def _copy(destinations: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """All the copies in one call rather than a Python loop over every tensor of every model
    (about a thousand for three ResNet-18s with momentum). On CUDA it is still a kernel per
    tensor: the models are channels_last, the stack is not."""
    if destinations:
        torch._foreach_copy_(destinations, sources)


def _vmappable(forward: Callable[[torch.Tensor], torch.Tensor]):
    """Batch norm's `forward` as vmap can run it on CUDA (torch 2.11). cuDNN is off: its batch
    norm asks the input for a channels_last layout, which a vmapped input cannot answer; the
    native kernel it falls back to has a batching rule. That rule's backward cannot mix a bf16
    input with fp32 statistics (pytorch issue 184890), so under bf16 autocast the input is
    normalised in fp32 and the output returned in bf16, as cuDNN's would be. Convolutions keep
    cuDNN."""

    def vmappable(x: torch.Tensor) -> torch.Tensor:
        enabled = torch.backends.cudnn.enabled
        torch.backends.cudnn.enabled = False
        try:
            return forward(x.to(torch.promote_types(x.dtype, torch.float32))).to(x.dtype)
        finally:
            torch.backends.cudnn.enabled = enabled

    return vmappable


def _paired_state(optimizers: Sequence[torch.optim.Optimizer], stacked: torch.optim.Optimizer):
    """For each parameter: the models' optimizer states for it, and the stacked one's."""
    columns = zip(
        *(o.param_groups[0]["params"] for o in optimizers),
        stacked.param_groups[0]["params"],
        strict=True,
    )
    for *params, stacked_param in columns:
        states = [o.state[p] for o, p in zip(optimizers, params, strict=True)]
        yield states, stacked.state[stacked_param]


SHARED_STATE = ("step",)  # Adam's step count: one scalar, the same for every model


def _stack_state(optimizers: Sequence[torch.optim.Optimizer], stacked: torch.optim.Optimizer):
    """Per-parameter tensors (momentum, Adam's moments) copied into the stacked ones (stacked
    anew where there are none yet); the shared step count taken from the first model, after
    checking that every model has the same. The stacked state holds nothing the models lack."""
    slices, owns = [], []
    for states, stacked_state in _paired_state(optimizers, stacked):
        for key in set(stacked_state) - set(states[0]):
            del stacked_state[key]
        for key, value in states[0].items():
            if key in SHARED_STATE:
                if any(not torch.equal(s[key], value) for s in states):
                    raise ValueError(f"optimizer state {key!r} differs between the models")
                stacked_state[key] = value.clone()
            elif key in stacked_state:
                slices += stacked_state[key].unbind()
                owns += [s[key] for s in states]
            else:
                stacked_state[key] = torch.stack([s[key] for s in states])
    _copy(slices, owns)


def _unstack_state(optimizers: Sequence[torch.optim.Optimizer], stacked: torch.optim.Optimizer):
    owns, slices = [], []
    for states, stacked_state in _paired_state(optimizers, stacked):
        for i, state in enumerate(states):
            for key, value in stacked_state.items():
                if key in SHARED_STATE:
                    state[key] = value.clone()
                elif key in state:
                    owns.append(state[key])
                    slices.append(value[i])
                else:
                    state[key] = value[i].clone()
    _copy(owns, slices)


class Together:
    """`models` trained as one vectorised model, each over its own loader, with its own
    optimizer and schedule, epoch after epoch: the stack, its optimizer and the step's
    gradients (eagerly, or replayed from CUDA graphs with `cuda_graph`) are made once.

    The optimizers must be one class with one parameter group each (what `build_optimizer`
    makes); their schedules keep driving the hyperparameters, which the stacked optimizer copies
    every step. The loaders must share their batches (`DeviceLoader.shares_batches_with`): a
    step's batches are gathered and augmented as one. `fold`: see `ModelStack`."""

    def __init__(
        self,
        models: Sequence[nn.Module],
        loaders: Sequence[DeviceLoader],
        optimizers: Sequence[torch.optim.Optimizer],
        schedules: Sequence[Schedule],
        precision: str = "fp32",
        cuda_graph: bool = False,
        fold: bool | None = None,
    ) -> None:
        if not all(loaders[0].shares_batches_with(loader) for loader in loaders[1:]):
            raise ValueError(
                "models trained together need loaders over the same samples with the same "
                "batch size, augmentation and normalisation (each with its own generator)"
            )
        self.models, self.loaders = models, loaders
        self.optimizers, self.schedules = optimizers, schedules
        for model in models:  # stack_module_state asks for one mode; evaluation left some in eval
            model.train()
        self.stack = ModelStack(models, fold)
        _quiet_model_schedules()
        first = optimizers[0]
        accepted = inspect.signature(type(first)).parameters  # AdamW fixes some Adam defaults
        options = {k: v for k, v in first.defaults.items() if k in accepted}
        params = list(self.stack.params.values())
        self.optimizer = type(first)(params, **options)
        if cuda_graph:
            buffers = list(self.stack.buffers.values())
            self.gradients = GraphedGradients(self.stack.losses, params, precision, buffers)
        else:
            self.gradients = Gradients(self.stack.losses, params, precision)

    def train_epoch(self, on_step: Callable[[], Any] = lambda: None) -> list[float]:
        """One epoch of each model, as one vectorised step per batch; each model's mean
        training loss. Models, optimizers and schedules are left as if each had run
        `train_epoch` alone (to float rounding: grouped and single convolutions sum in other
        orders)."""
        self.stack.load(self.models)
        _stack_state(self.optimizers, self.optimizer)
        hyper = self.optimizers[0].param_groups[0]
        loss_sums = torch.zeros(len(self.models), device=self.loaders[0].labels.device)
        for x, y in stacked_batches(self.loaders):
            update = {k: v for k, v in hyper.items() if k != "params"}
            self.optimizer.param_groups[0].update(update)
            losses = self.gradients(x, y)
            self.optimizer.step()
            for schedule in self.schedules:
                schedule.step()
            loss_sums += losses * y.shape[1]
            on_step()
        self.stack.unstack_into(self.models)
        _unstack_state(self.optimizers, self.optimizer)
        return [loss_sum / len(self.loaders[0].labels) for loss_sum in loss_sums.tolist()]
