"""Permutation alignment (Git Re-Basin): reorder the hidden units of one network so that it
matches another, leaving its function unchanged, before the two are averaged.

The permutation groups are derived from the model itself, by tracing it with torch.fx and
following each layer's output channels through the graph:
- a Conv2d or Linear starts a new group (its output channels); its input channels belong to
  the group of whatever feeds it;
- BatchNorm, LayerNorm, activations, pooling, dropout and flattening to (N, C) pass the group
  on; BatchNorm's running statistics are permuted with their channels;
- an addition joins the groups of its operands (a residual stream is one group shared by every
  block that writes to it);
- the network's input and output channels are fixed and never permuted.
Anything else (attention, concatenation, grouped convolutions ...) raises an error naming
the operation, so an unsupported architecture never yields a silently wrong alignment.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ptmz.errors import ConfigError, PtmzError
from ptmz.models.mode import eval_mode
from ptmz.weights import State

Permutations = dict[str, torch.Tensor]

_PASS_MODULES = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Dropout,
    nn.Identity,
    nn.AdaptiveAvgPool2d,
    nn.AvgPool2d,
    nn.MaxPool2d,
)
_PASS_FUNCTIONS = {F.relu, torch.relu, F.gelu, F.silu, torch.tanh, torch.sigmoid, F.dropout}
_PASS_METHODS = {"relu", "contiguous"}
_ADD = {operator.add, operator.iadd, torch.add}
_FLATTEN = {torch.flatten, "flatten"}
_FIXED = 0  # the union-find element of the fixed channels (network input and output)


@dataclass(frozen=True)
class PermutationSpec:
    """Which axes of which state-dict entries each permutation group reorders.

    `axes[key]` maps an axis of `state[key]` to its group; `sizes[group]` is the group's
    number of units; `parameters` are the entries that weight matching compares (the
    buffers, such as BN running statistics, are permuted but not matched);
    `activations[node]` is the (group, channel axis) of the traced nodes whose output is the
    input of a Conv2d or Linear layer, where activation matching compares the networks.
    """

    axes: dict[str, dict[int, str]]
    sizes: dict[str, int]
    parameters: frozenset[str]
    activations: dict[str, tuple[str, int]]

    @property
    def groups(self) -> dict[str, list[tuple[str, int]]]:
        out: dict[str, list[tuple[str, int]]] = {g: [] for g in self.sizes}
        for key, axes in self.axes.items():
            for axis, group in axes.items():
                out[group].append((key, axis))
        return out


class _UnionFind:
    def __init__(self) -> None:
        self.parent = [_FIXED]
        self.name = ["fixed"]

    def new(self, name: str) -> int:
        self.parent.append(len(self.parent))
        self.name.append(name)
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        i, j = self.find(i), self.find(j)
        if i != j:  # the lower element wins: _FIXED absorbs, and a group keeps its first name
            self.parent[max(i, j)] = min(i, j)


def _unsupported(model: nn.Module, node: fx.Node, what: str) -> PtmzError:
    return PtmzError(
        f"alignment: {type(model).__name__} applies {what} (graph node {node.name}); "
        "permutation groups are derived only through Conv2d (groups=1), Linear, BatchNorm, "
        "LayerNorm over channels, elementwise activations, pooling, dropout, flatten to "
        "(N, C) and residual additions"
    )


def _traced(model: nn.Module) -> fx.GraphModule:
    """`model` as a torch.fx graph; a model fx cannot trace (shapes that steer its Python, say)
    cannot be aligned, and the error says so rather than fx's internals."""
    try:
        return fx.symbolic_trace(model)
    except Exception as error:
        raise PtmzError(
            f"alignment: {type(model).__name__} cannot be traced by torch.fx, so its "
            f"permutation groups cannot be derived ({type(error).__name__}: {error})"
        ) from error


def permutation_spec(model: nn.Module, example: torch.Tensor) -> PermutationSpec:
    """Trace `model` on `example` (a batch of inputs) and derive its permutation groups."""
    traced = _traced(model)
    with eval_mode(model), torch.no_grad():  # the traced graph runs model's own modules
        ShapeProp(traced).propagate(example)
    modules = dict(traced.named_modules())
    uf = _UnionFind()
    group: dict[fx.Node, int] = {}  # node -> union-find element of its output channels
    channel_axis: dict[fx.Node, int] = {}
    owner: dict[tuple[str, int], int] = {}  # (state key, axis) -> element
    layer_inputs: set[fx.Node] = set()  # what the layers see: where activations are matched

    def own(key: str, axis: int, element: int) -> None:
        if (key, axis) in owner:  # a module applied twice shares its weights' groups
            uf.union(owner[key, axis], element)
        owner.setdefault((key, axis), element)

    def source(node: fx.Node) -> fx.Node:
        return node.args[0]

    for node in traced.graph.nodes:
        if node.op == "placeholder":
            image = len(node.meta["tensor_meta"].shape) == 4  # (N, C, H, W), else features last
            group[node], channel_axis[node] = _FIXED, 1 if image else -1
        elif node.op == "output":
            for out in node.all_input_nodes:
                uf.union(group[out], _FIXED)
        elif node.op == "get_attr":
            raise _unsupported(model, node, f"a bare tensor attribute {node.target}")
        elif node.op == "call_module":
            module, prefix, inp = modules[node.target], node.target, source(node)
            if isinstance(module, nn.Conv2d | nn.Linear):
                if isinstance(module, nn.Conv2d) and module.groups != 1:
                    raise _unsupported(model, node, "a grouped convolution")
                rank = len(inp.meta["tensor_meta"].shape)
                if isinstance(module, nn.Linear) and rank > 2 and channel_axis[inp] == 1:
                    raise _unsupported(model, node, "a Linear over the positions of a feature map")
                group[node] = uf.new(prefix)
                layer_inputs.add(inp)
                channel_axis[node] = 1 if isinstance(module, nn.Conv2d) else -1
                own(f"{prefix}.weight", 0, group[node])
                own(f"{prefix}.weight", 1, group[inp])
                if module.bias is not None:
                    own(f"{prefix}.bias", 0, group[node])
            elif isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm):
                if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
                    raise _unsupported(model, node, "a LayerNorm over several dimensions")
                group[node], channel_axis[node] = group[inp], channel_axis[inp]
                for key, _ in [*module.named_parameters(), *module.named_buffers()]:
                    if key != "num_batches_tracked":
                        own(f"{prefix}.{key}", 0, group[node])
            elif isinstance(module, nn.Flatten):
                group[node], channel_axis[node] = _flatten(model, node, group[inp], inp), -1
            elif isinstance(module, _PASS_MODULES):
                group[node], channel_axis[node] = group[inp], channel_axis[inp]
            else:
                raise _unsupported(model, node, f"module {type(module).__name__}")
        elif node.target in _ADD:
            operands = [a for a in node.args if isinstance(a, fx.Node)]
            for other in operands[1:]:
                uf.union(group[operands[0]], group[other])
            group[node], channel_axis[node] = group[operands[0]], channel_axis[operands[0]]
        elif node.target in _FLATTEN:
            inp = source(node)
            group[node], channel_axis[node] = _flatten(model, node, group[inp], inp), -1
        elif node.target in _PASS_FUNCTIONS or node.target in _PASS_METHODS:
            group[node], channel_axis[node] = group[source(node)], channel_axis[source(node)]
        else:
            raise _unsupported(
                model, node, f"{node.op} {getattr(node.target, '__name__', node.target)}"
            )

    state = model.state_dict()
    names = {uf.find(e): uf.name[uf.find(e)] for e in range(1, len(uf.parent))}
    axes: dict[str, dict[int, str]] = {}
    sizes: dict[str, int] = {}
    for (key, axis), element in owner.items():
        root = uf.find(element)
        if root == _FIXED:
            continue
        name = names[root]
        size = state[key].shape[axis]
        if sizes.setdefault(name, size) != size:
            raise PtmzError(
                f"alignment: {key} axis {axis} has {size} units, group {name} has {sizes[name]}"
            )
        axes.setdefault(key, {})[axis] = name
    activations = {
        node.name: (names[uf.find(e)], channel_axis[node])
        for node, e in group.items()
        if node in layer_inputs and uf.find(e) != _FIXED
    }
    parameters = frozenset(k for k, _ in model.named_parameters())
    return PermutationSpec(axes, sizes, parameters, activations)


def _flatten(model: nn.Module, node: fx.Node, element: int, inp: fx.Node) -> int:
    """Flattening keeps the channel group only when nothing but channels is left (N, C, 1, 1);
    flattening the fixed input (an MLP on images) is always fine."""
    shape = inp.meta["tensor_meta"].shape
    if element != _FIXED and int(np.prod(shape[2:])) != 1:
        raise _unsupported(model, node, f"a flatten of permuted channels with shape {tuple(shape)}")
    return element


def apply_permutation(spec: PermutationSpec, perms: Permutations, state: State) -> State:
    """`state` with every permuted axis reordered: entry i of a group becomes entry perms[i]."""
    out = {}
    for key, tensor in state.items():
        out[key] = tensor.clone()
        for axis, group in spec.axes.get(key, {}).items():
            out[key] = out[key].index_select(axis, perms[group].to(tensor.device))
    return out


def _rows(tensor: torch.Tensor, axis: int) -> torch.Tensor:
    return tensor.movedim(axis, 0).reshape(tensor.shape[axis], -1).double().cpu()


def _assign(similarity: torch.Tensor) -> torch.Tensor:
    """The permutation maximising sum_i similarity[i, perm[i]] (a linear assignment)."""
    _, cols = linear_sum_assignment(similarity.numpy(), maximize=True)
    return torch.as_tensor(cols, dtype=torch.long)


def weight_matching(
    spec: PermutationSpec,
    reference: State,
    other: State,
    max_iter: int = 100,
    seed: int = 0,
) -> Permutations:
    """Permutations of `other` that maximise its inner product with `reference`, summed over
    every parameter: coordinate descent over the groups (in random order each sweep), each
    step an exact linear assignment with the other groups held fixed, until a sweep improves
    nothing."""
    perms = {g: torch.arange(n) for g, n in spec.sizes.items()}
    groups, generator = spec.groups, torch.Generator().manual_seed(seed)
    names = sorted(spec.sizes)
    for _ in range(max_iter):
        improved = False
        for i in torch.randperm(len(names), generator=generator).tolist():
            group = names[i]
            similarity = torch.zeros(spec.sizes[group], spec.sizes[group], dtype=torch.float64)
            for key, axis in groups[group]:
                if key not in spec.parameters:
                    continue
                w = other[key]
                for other_axis, other_group in spec.axes[key].items():
                    if other_axis != axis:
                        w = w.index_select(other_axis, perms[other_group].to(w.device))
                similarity += _rows(reference[key], axis) @ _rows(w, axis).T
            best = _assign(similarity)
            rows = torch.arange(len(best))
            gain = similarity[rows, best].sum() - similarity[rows, perms[group]].sum()
            if gain > 1e-12 * similarity.abs().sum():
                perms[group], improved = best, True
        if not improved:
            break
    return perms


@torch.no_grad()
def _activations(
    spec: PermutationSpec, model: nn.Module, batches: Iterable[torch.Tensor]
) -> dict[str, list[torch.Tensor]]:
    """Every permuted node's output, as (samples, units) rows with positions counted as
    samples, for all batches."""
    recorded: dict[str, list[torch.Tensor]] = {name: [] for name in spec.activations}

    class Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node) -> object:
            out = super().run_node(node)
            if node.name in spec.activations:
                units = out.movedim(spec.activations[node.name][1], -1)
                recorded[node.name].append(units.reshape(-1, units.shape[-1]).double().cpu())
            return out

    recorder = Recorder(_traced(model))
    for x in batches:
        recorder.run(x)
    return recorded


def activation_matching(
    spec: PermutationSpec,
    reference: nn.Module,
    other: nn.Module,
    batches: Iterable[torch.Tensor],
) -> Permutations:
    """Permutations of `other` that maximise the correlation of its units' activations with
    the reference's on the same inputs, summed over every layer input in a group (a
    residual stream is seen after every block). One assignment per group: activations do not
    depend on the other groups' permutations."""
    batches = list(batches)
    a, b = _activations(spec, reference, batches), _activations(spec, other, batches)
    similarity = {g: torch.zeros(n, n, dtype=torch.float64) for g, n in spec.sizes.items()}
    for node, (group, _) in spec.activations.items():
        za, zb = (_standardise(torch.cat(z[node])) for z in (a, b))
        similarity[group] += za.T @ zb / len(za)
    return {group: _assign(s) for group, s in similarity.items()}


def _standardise(z: torch.Tensor) -> torch.Tensor:
    return (z - z.mean(0)) / (z.std(0) + 1e-12)


METHODS = ("weights", "activations")


def align(
    model: nn.Module,
    reference: State,
    other: State,
    inputs: list[torch.Tensor],
    method: str = "weights",
    seed: int = 0,
) -> State:
    """`other` with its hidden units permuted to match `reference` (two states of `model`'s
    architecture), by weight matching or by activation matching on `inputs` (batches of
    unaugmented training inputs; the first also traces the model)."""
    if method not in METHODS:
        raise ConfigError("method", method, " or ".join(METHODS))
    spec = permutation_spec(model, inputs[0])
    if method == "weights":
        perms = weight_matching(spec, reference, other, seed=seed)
    else:
        a, b = copy.deepcopy(model).eval(), copy.deepcopy(model).eval()
        a.load_state_dict(reference)
        b.load_state_dict(other)
        perms = activation_matching(spec, a, b, inputs)
    return apply_permutation(spec, perms, other)
