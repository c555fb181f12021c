"""What a training step computes before the optimizer steps: the batch's loss and the gradients
of the parameters, eagerly or replayed from CUDA graphs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from ptmz.errors import ConfigError

BatchLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# a recorded step: its graph, static inputs x and y, and static loss
Recorded = tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor]
WARMUP_STEPS = 3  # eager steps before a graph is recorded: cuDNN times its algorithms in them
# One recording at a time in a process (runs trained at once, `at_once`): a recording's warm-up
# stream comes from torch's shared pool, which may hand another thread's stream out again,
# and torch.cuda.graph synchronizes the whole device before it captures.
RECORDING = threading.Lock()


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The training step's numerics: fp32, or bf16 autocast (matmuls and convolutions in bf16
    with fp32 accumulation; weights, optimizer state and the loss reduction stay fp32).
    fp32 enters no autocast context at all: torch 2.14 was seen to hang a compiled model's
    backward under a disabled one. No cast cache: a CUDA graph cannot keep one, and each weight
    is cast once per step anyway."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return nullcontext()


class Gradients:
    """`loss(x, y)` under the run's precision (one loss, or one per model of a stack) and the
    gradients of its sum in each parameter's `.grad`, computed eagerly; returns the loss,
    detached. Gradients are set to None first rather than zeroed: nothing to launch."""

    def __init__(self, loss: BatchLoss, params: Sequence[torch.Tensor], precision: str) -> None:
        self.loss, self.params, self.precision = loss, list(params), precision

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for p in self.params:
            p.grad = None
        return self._forward_backward(x, y)

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, self.precision):
            loss = self.loss(x, y)
        loss.sum().backward()
        return loss.detach()


class GraphedGradients(Gradients):
    """The same computation replayed from a CUDA graph: one kernel launch per step instead of
    hundreds, so small models stop waiting on the host. The same kernels in the same order as
    the eager step, so the same numbers.

    A graph is recorded the first time a batch shape is seen (an epoch's last batch gets its own
    when its size differs) and replays with the step's inputs copied into its static ones.
    Gradients accumulate into the `.grad` tensors the first eager warm-up step made, zeroed
    inside the graph, so the optimizer reads them where it always does (and a parameter the loss
    does not use keeps None, so the optimizer skips it as it does eagerly). The warm-up steps
    before recording update the `buffers` (batch-norm statistics and step counts), which are put
    back afterwards: recording changes nothing a run keeps."""

    def __init__(
        self,
        loss: BatchLoss,
        params: Sequence[torch.Tensor],
        precision: str,
        buffers: Sequence[torch.Tensor],
    ) -> None:
        super().__init__(loss, params, precision)
        devices = {p.device.type for p in self.params}
        if devices != {"cuda"}:
            raise ConfigError("cuda_graph", True, f"false for parameters on {sorted(devices)}")
        self.buffers = list(buffers)
        self.grads: list[torch.Tensor | None] = []  # where the graphs write each gradient
        self.graphs: dict[tuple, Recorded] = {}  # per batch shape

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # where the graphs write, even if something set them to None since (none before recording)
        for p, grad in zip(self.params, self.grads, strict=False):
            p.grad = grad
        shape = (x.shape, y.shape)
        if shape not in self.graphs:
            self.graphs[shape] = self._record(x, y)
        graph, static_x, static_y, loss = self.graphs[shape]
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        return loss

    def _zeroed_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            torch._foreach_zero_(grads)
        return self._forward_backward(x, y)

    def _record(self, x: torch.Tensor, y: torch.Tensor) -> Recorded:
        with RECORDING:
            return self._record_alone(x, y)

    def _record_alone(self, x: torch.Tensor, y: torch.Tensor) -> Recorded:
        static_x, static_y = x.clone(), y.clone()
        kept = [b.clone() for b in self.buffers]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._zeroed_step(static_x, static_y)
        torch.cuda.current_stream().wait_stream(side)
        self.grads = [p.grad for p in self.params]
        with torch.no_grad():
            for buffer, value in zip(self.buffers, kept, strict=True):
                buffer.copy_(value)
        graph = torch.cuda.CUDAGraph()
        # A run training beside others (`at_once`) captures on its thread's own stream, which
        # no other thread uses (torch's capture stream may be one); thread_local: they may go
        # on allocating and synchronizing their own streams meanwhile.
        current = torch.cuda.current_stream()
        own = None if current == torch.cuda.default_stream() else current
        with torch.cuda.graph(graph, stream=own, capture_error_mode="thread_local"):
            loss = self._zeroed_step(static_x, static_y)
        return graph, static_x, static_y, loss
