"""RunSpec: everything one training run needs, validated, plus the run id derived from it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ptmz.data.augment import Augment
from ptmz.data.datasets import (
    DATASETS,
    INPUT_SHAPES,
    Normalization,
    first_normalization,
    input_kind,
    normalization,
)
from ptmz.errors import ConfigError, choose
from ptmz.models import MODELS, reads, smallest_batch

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "warmup_cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
LOGGERS = ("none", "tensorboard", "wandb")
TEMPERATURES = ("batch_size", "lr")  # the noise of training
LOADS = ("width", "data_fraction", "beta")  # data per unit of capacity; beta: PDE difficulty
AXIS_TAGS = {"width": "w", "data_fraction": "f", "beta": "beta", "batch_size": "bs", "lr": "lr"}


@dataclass(frozen=True)
class Recipe:
    """How a run trains. The defaults are the published CIFAR/SVHN ResNet recipe."""

    optimizer: str = "sgd"
    momentum: float = 0.9  # SGD only
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # OneCycleLR(max_lr=lr) stepped per batch; see build_optimizer
    # onecycle only: the momentum (Adam: beta1) cycles 0.95 -> 0.85 -> 0.95 against the lr, as
    # torch's OneCycleLR does by default and so the published runs did; false holds `momentum`
    cycle_momentum: bool = True
    augment: Augment = field(default_factory=Augment)


@dataclass(frozen=True)
class RunSpec:
    """One run of a zoo. Fields above `out_dir` define the run (and its id); the rest say where
    and how it executes and never change the trained weights."""

    zoo: str = "digits_resnet18"
    dataset: str = "digits"
    model: str = "resnet18"
    width: int = 8
    batch_size: int = 32
    lr: float = 0.1
    data_fraction: float = 1.0
    epochs: int = 10
    seed: int = 0
    subset_seed: int = 0  # picks the data_fraction subset; shared by the seeds of a grid point
    recipe: Recipe = field(default_factory=Recipe)
    precision: str = "fp32"  # bf16: the training step under bf16 autocast
    eval_precision: str = "fp32"  # bf16: the epochs' evaluations under bf16 autocast
    beta: float | None = None  # the convection coefficient (dataset=convection only)
    corpus: str | None = None  # dataset=text: its corpus (`corpus_id`); None: the generated one
    # the dataset's (mean, std), filled in from the registry: part of the identity because
    # ptmz once normalised CIFAR-100, SVHN and TinyImageNet otherwise (SUPERSEDED_NORMALIZATION)
    normalization: Normalization = None

    out_dir: str = "zoos"
    data_root: str = "data"
    download: bool = True
    device: str = "auto"
    checkpoints: int | tuple[int, ...] = 1  # every N epochs, or a list; 0 and last always kept
    progress: bool = True
    compile: bool = False  # torch.compile the training step: the same math, other rounding
    cuda_graph: bool = False  # replay each step's forward and backward from a CUDA graph
    temperature: str = "batch_size"  # the zoo's axes, which name its run directories
    load: str = "width"
    logger: str = "none"  # also send each epoch's record to: tensorboard | wandb

    def __post_init__(self) -> None:
        for part in (self, self.recipe, self.recipe.augment):
            _floats_as_float(part)
        choose("model", self.model, MODELS)
        choose("dataset", self.dataset, DATASETS)
        _fill_normalization(self)
        _check_inputs(self.model, self.dataset, self.recipe.augment)
        choose("recipe.optimizer", self.recipe.optimizer, dict.fromkeys(OPTIMIZERS))
        choose("recipe.schedule", self.recipe.schedule, dict.fromkeys(SCHEDULES))
        choose("device", self.device, dict.fromkeys(DEVICES))
        choose("precision", self.precision, dict.fromkeys(PRECISIONS))
        choose("eval_precision", self.eval_precision, dict.fromkeys(PRECISIONS))
        choose("temperature", self.temperature, dict.fromkeys(TEMPERATURES))
        choose("load", self.load, dict.fromkeys(LOADS))
        choose("logger", self.logger, dict.fromkeys(LOGGERS))
        if getattr(self, self.load) is None:
            raise ConfigError("load", self.load, f"an axis this run sets ({self.load} is null)")
        for key in ("download", "progress", "compile", "cuda_graph"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(key, getattr(self, key), "true or false")
        if self.compile and self.cuda_graph:
            raise ConfigError("cuda_graph", True, "false with compile=true, which records its own")
        for key in ("width", "batch_size", "epochs"):
            _check_int(key, getattr(self, key), minimum=1)
        smallest = smallest_batch(self.model, INPUT_SHAPES[self.dataset][1])
        if self.batch_size < smallest:
            raise ConfigError(
                "batch_size",
                self.batch_size,
                f"at least {smallest} for model={self.model} on dataset={self.dataset}: batch "
                "norm needs two values per channel, and its last stage is 1x1",
            )
        _check_int("seed", self.seed, minimum=0)
        _check_int("subset_seed", self.subset_seed, minimum=0)
        _check_int("recipe.augment.crop_padding", self.recipe.augment.crop_padding, minimum=0)
        _check_number(
            "data_fraction", self.data_fraction, "a number in (0, 1]", lambda v: 0 < v <= 1
        )
        if (self.dataset == "convection") != (self.beta is not None):
            allowed = "a number >= 0" if self.dataset == "convection" else "null (convection only)"
            raise ConfigError("beta", self.beta, f"{allowed} for dataset={self.dataset}")
        for key in ("precision", "eval_precision"):
            if self.dataset == "convection" and getattr(self, key) != "fp32":
                why = "its derivatives and relative errors are finer than bf16 resolves"
                raise ConfigError(key, getattr(self, key), f"fp32 for dataset=convection ({why})")
        if self.corpus is not None and self.dataset != "text":
            raise ConfigError("corpus", self.corpus, "null (dataset=text only)")
        if self.beta is not None:
            _check_number("beta", self.beta, "a number >= 0", lambda v: v >= 0)
        _check_number("lr", self.lr, "a positive number", lambda v: v > 0)
        recipe = self.recipe
        _check_number(
            "recipe.momentum", recipe.momentum, "a number in [0, 1)", lambda v: 0 <= v < 1
        )
        _check_number("recipe.weight_decay", recipe.weight_decay, "a number >= 0", lambda v: v >= 0)
        if not isinstance(recipe.cycle_momentum, bool):
            raise ConfigError("recipe.cycle_momentum", recipe.cycle_momentum, "true or false")
        if recipe.schedule != "onecycle" and not recipe.cycle_momentum:  # one id per training
            allowed = "true: it only applies with recipe.schedule=onecycle"
            raise ConfigError("recipe.cycle_momentum", False, allowed)
        cycled = recipe.schedule == "onecycle" and recipe.cycle_momentum
        ignored = cycled and recipe.optimizer == "sgd" and recipe.momentum != Recipe.momentum
        if ignored and not self.run_dir.exists():  # runs trained so before stay reachable
            raise ConfigError(
                "recipe.momentum",
                recipe.momentum,
                f"{Recipe.momentum} (unused) while recipe.schedule=onecycle cycles the momentum "
                "between 0.95 and 0.85; recipe.cycle_momentum=false holds it at your value",
            )
        rotation, hflip = recipe.augment.rotation, recipe.augment.hflip
        _check_number(
            "recipe.augment.rotation", rotation, "degrees in [0, 180]", lambda v: 0 <= v <= 180
        )
        if not isinstance(hflip, bool):
            raise ConfigError("recipe.augment.hflip", hflip, "true or false")
        if isinstance(self.checkpoints, int):
            _check_int("checkpoints", self.checkpoints, minimum=1)
        elif not all(isinstance(e, int) and 0 <= e <= self.epochs for e in self.checkpoints):
            raise ConfigError(
                "checkpoints",
                list(self.checkpoints),
                f"every-N as a positive integer, or a list of epochs in 0..{self.epochs}",
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunSpec:
        """Build from plain (nested) dicts, rejecting unknown keys by name."""
        values = dict(values)
        recipe = dict(values.pop("recipe", {}))
        augment = Augment(**_known(Augment, recipe.pop("augment", {}), "recipe.augment."))
        recipe = Recipe(augment=augment, **_known(Recipe, recipe, "recipe."))
        if isinstance(values.get("checkpoints"), list | tuple):
            values["checkpoints"] = tuple(values["checkpoints"])
        if values.get("normalization") is not None:  # stored as JSON lists
            values["normalization"] = tuple(tuple(v) for v in values["normalization"])
        return cls(recipe=recipe, **_known(cls, values, ""))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def identity(self) -> dict[str, Any]:
        """What determines the trained weights and their records: the content the run id hashes
        (keys added later are left out at their old meaning: `without_later_defaults`)."""
        names = [f.name for f in fields(self)]
        identity = {
            k: v
            for k, v in asdict(self).items()
            if names.index(k) < names.index("out_dir") and k != "zoo"
        }
        return without_later_defaults(identity)

    @property
    def run_id(self) -> str:
        axes = "_".join(
            f"{AXIS_TAGS[a]}{getattr(self, a):g}" for a in (self.load, self.temperature)
        )
        return f"{axes}_s{self.seed}-{self.digest}"

    @property
    def digest(self) -> str:
        """The hash of `identity` that ends the run id."""
        return hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:8]

    @property
    def grid_point(self) -> str:
        """What the seeds of one grid point share: the identity without the seed, as a key."""
        return json.dumps({k: v for k, v in self.identity.items() if k != "seed"}, sort_keys=True)

    @property
    def run_dir(self) -> Path:
        """The run's directory: one that already holds this content (named under other axes,
        say), else `run_id`'s."""
        zoo = Path(self.out_dir).expanduser().resolve() / self.zoo
        existing = sorted(zoo.glob(f"*_s{self.seed}-{self.digest}"))
        return existing[0] if existing else zoo / self.run_id

    def is_checkpoint(self, epoch: int) -> bool:
        """Whether the weights after `epoch` are kept (0 and the last epoch always are)."""
        if epoch in (0, self.epochs):
            return True
        if isinstance(self.checkpoints, int):
            return epoch % self.checkpoints == 0
        return epoch in self.checkpoints


# Keys added after zoos existed, with the value that means "as before": left out of every hash,
# so older runs keep their ids and grid points.
LATER_DEFAULTS = {
    "precision": "fp32",
    "eval_precision": "fp32",
    "beta": None,
    "corpus": None,
    "recipe.cycle_momentum": True,
}


def without_later_defaults(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`values` (an identity or a stored config) without the keys at their "as before" value.
    A run's normalisation is "as before" when it is what its dataset's runs had before the key
    existed, so new CIFAR-100, SVHN and TinyImageNet runs get ids of their own."""
    out = {}
    for key, value in values.items():
        name = prefix + key
        if name in LATER_DEFAULTS and value == LATER_DEFAULTS[name]:
            continue
        dataset = values.get("dataset")
        known = name == "normalization" and dataset in DATASETS  # else kept: nothing to tell by
        if known and _as_json(value) == _as_json(first_normalization(dataset)):
            continue
        out[key] = without_later_defaults(value, f"{name}.") if isinstance(value, dict) else value
    return out


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _fill_normalization(spec: RunSpec) -> None:
    """Set the dataset's normalisation; another one given is refused (the loaders use the
    dataset's)."""
    expected = normalization(spec.dataset)
    given = spec.normalization
    if given is not None and _as_json(given) != _as_json(expected):
        raise ConfigError("normalization", given, f"{expected} (dataset={spec.dataset}'s) or null")
    object.__setattr__(spec, "normalization", expected)


def _floats_as_float(obj: Any) -> None:
    """`lr=1` and `lr=1.0` are the same run: store float fields as floats before hashing."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        is_float = f.type in ("float", "float | None")
        if is_float and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(obj, f.name, float(value))


def _check_inputs(model: str, dataset: str, augment: Augment) -> None:
    """The model reads the dataset's kind of input, and only images are augmented."""
    kind = input_kind(dataset)
    if reads(model) != kind:
        fits = ", ".join(sorted(name for name in MODELS if reads(name) == kind))
        raise ConfigError(
            "model", model, f"one of {fits} for dataset={dataset} (its inputs are {kind})"
        )
    if kind != "images" and augment.active:
        raise ConfigError(
            "recipe.augment",
            asdict(augment),
            f"crop_padding=0, hflip=false, rotation=0 for dataset={dataset}, whose inputs "
            f"are {kind}, not images",
        )


def _check_number(key: str, value: Any, allowed: str, within: Callable[[float], bool]) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and within(value)):
        raise ConfigError(key, value, allowed)


def _check_int(key: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, value, f"an integer >= {minimum}")


def _known(cls: type, values: dict[str, Any], prefix: str) -> dict[str, Any]:
    allowed = {f.name for f in fields(cls)} - {"recipe", "augment"}
    for key in values:
        if key not in allowed:
            raise ConfigError(
                f"{prefix}{key}",
                values[key],
                f"not a known key; known keys: {', '.join(sorted(allowed))}",
            )
    return values
