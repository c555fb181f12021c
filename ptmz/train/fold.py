"""Several ResNets as one network of grouped layers: the models folded into the channels.

Every layer of a ResNet acts on each channel (convolutions through their groups, batch norm,
ReLU, pooling, the residual sum) until the classifier head. So M models of one architecture are
one ResNet of M times the channels whose convolutions have M times the groups: batch norm's
per-channel statistics are then each model's own, and the head becomes M linear maps applied
side by side. A step of the folded network runs about the kernels of one model's step, where
vmap adds its own reshapes, copies and batch-norm bookkeeping (a ResNet-18 step of 3 seeds: 191
operations other than views folded, 502 vmapped, 181 for one model); on a GPU, where a small
model's step waits on kernel latency, that is the cost.
The arithmetic is that of the models alone, summed in the orders of grouped convolutions.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ptmz.models import ResNet


def foldable(model: nn.Module) -> bool:
    """Whether models like `model` fold into one (see `check_foldable`)."""
    try:
        check_foldable(model)
    except ValueError:
        return False
    return True


def check_foldable(model: nn.Module) -> None:
    """ValueError naming what keeps `model` from folding. Its layers must all act per channel
    up to its linear head (the ResNets), and each layer with tensors of its own must be one
    `folded_skeleton` folds: a convolution, the head, or batch norm with affine parameters,
    running statistics and a momentum (a cumulative average would share one count)."""
    if not isinstance(model, ResNet):
        raise ValueError(f"{type(model).__name__} models cannot be folded into one")
    for layer in model.modules():
        if isinstance(layer, nn.BatchNorm2d):
            if layer.momentum is None or not (layer.affine and layer.track_running_stats):
                raise ValueError(
                    f"{layer}: only affine batch norm with running statistics and a momentum folds"
                )
        elif not isinstance(layer, (nn.Conv2d, nn.Linear)):
            own = [*layer.parameters(recurse=False), *layer.buffers(recurse=False)]
            if own:
                raise ValueError(f"{type(layer).__name__} layers do not fold")


class FoldedLinear(nn.Module):
    """The head: M linear maps side by side, (B, M * in) to each model's (M, B, out); weights
    (M, out, in)."""

    def __init__(self, models: int, linear: nn.Linear) -> None:
        super().__init__()
        self.models = models
        self.weight = nn.Parameter(torch.empty(models, *linear.weight.shape, device="meta"))
        self.bias = None
        if linear.bias is not None:
            self.bias = nn.Parameter(torch.empty(models, *linear.bias.shape, device="meta"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_model = x.unflatten(1, (self.models, -1)).transpose(0, 1)  # (M, B, in)
        if self.bias is None:
            return torch.bmm(per_model, self.weight.transpose(1, 2))
        return torch.baddbmm(self.bias.unsqueeze(1), per_model, self.weight.transpose(1, 2))


def folded_skeleton(model: nn.Module, models: int) -> nn.Module:
    """`model`'s architecture for `models` models folded into its channels, without storage
    (`functional_call` supplies every tensor, see `fold_state`); its output is each model's,
    (M, B, classes). ValueError for a model that does not fold."""
    check_foldable(model)
    skeleton = copy.deepcopy(model).to("meta")
    for name, layer in list(skeleton.named_modules()):
        if isinstance(layer, nn.Conv2d):
            folded = nn.Conv2d(
                layer.in_channels * models,
                layer.out_channels * models,
                layer.kernel_size,
                layer.stride,
                layer.padding,
                layer.dilation,
                layer.groups * models,
                layer.bias is not None,
                layer.padding_mode,
                device="meta",
            )
        elif isinstance(layer, nn.BatchNorm2d):
            folded = nn.BatchNorm2d(
                layer.num_features * models, layer.eps, layer.momentum, device="meta"
            )
            folded.num_batches_tracked = torch.empty(models, dtype=torch.long, device="meta")
        elif isinstance(layer, nn.Linear):
            folded = FoldedLinear(models, layer)
        else:
            continue
        parent, _, attr = name.rpartition(".")
        setattr(skeleton.get_submodule(parent), attr, folded)
    return skeleton.train()


def state_shapes(skeleton: nn.Module) -> dict[str, torch.Size]:
    """The shape of each parameter and buffer of a folded skeleton, by name."""
    return {k: t.shape for k, t in [*skeleton.named_parameters(), *skeleton.named_buffers()]}


def fold_state(
    shapes: dict[str, torch.Size], stacked: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Stacked tensors (M, ...) as views in the folded skeleton's `shapes`: writes to them (the
    batch-norm statistics) and gradients through them reach the stack."""
    return {name: tensor.view(shapes[name]) for name, tensor in stacked.items()}


def fold_batch(x: torch.Tensor) -> torch.Tensor:
    """(M, B, C, ...) batches, model m's at [m], as one (B, M * C, ...) batch."""
    return x.transpose(0, 1).flatten(1, 2)
