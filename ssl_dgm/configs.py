"""Experiment configuration: one small frozen dataclass per concern, composed.

As in tensorflow/models' ``official/core/config_definitions.py``, an
`ExperimentConfig` holds a config per concern (data, the M1 stage, M1's
classifier head, the M2 stage, runtime); a stage the model does not have is
None.  Named presets (`ssl_dgm.presets`) are the one source of defaults;
`ssl_dgm.overrides` sets any field by its dotted path (``m2.optimization.epochs``),
which is how flags, ``--set`` and config files reach it.

A run folder's ``config.json`` holds `to_dict(config)`, which carries
`SCHEMA_VERSION`; `from_dict` reads only that version.

This module imports no TensorFlow, so entry points can check a configuration
before TensorFlow's start-up cost.
"""

import dataclasses
import math
import typing
from typing import Any, Mapping, Optional, Tuple

SCHEMA_VERSION = 1

MODELS = ("m1", "m2", "m1m2")
LR_SCHEDULES = ("constant", "cosine", "cosine_time")
STRATEGIES = ("default", "mirrored", "multi_worker")
CODES = ("per_step", "cached")
LABEL_NOISE = ("independent", "shared")
HEADS = ("spreading", "softmax")


class ConfigError(ValueError):
    """A field holds a value that makes no sense; `path` names the field."""

    def __init__(self, path, message):
        super().__init__(f"{path} {message}")
        self.path = path
        self.message = message


def _check_positive(config, *names, allow_none=False):
    for name in names:
        value = getattr(config, name)
        if value is None and allow_none:
            continue
        if value is None or not (isinstance(value, (int, float)) and math.isfinite(value)
                                 and value > 0):
            raise ConfigError(name, f"must be a positive number, got {value!r}")


def _check_choice(value, choices, path):
    if value not in choices:
        raise ConfigError(path, f"must be one of {', '.join(choices)}; got {value!r}")


def _check_sizes(sizes, path, allow_empty=True):
    if not allow_empty and not sizes:
        raise ConfigError(path, "needs at least one width")
    if any(not isinstance(s, int) or s <= 0 for s in sizes):
        raise ConfigError(path, f"must be positive integers, got {list(sizes)}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What the model trains and is scored on.

    Attributes:
      dataset: a TFDS image classification dataset (``image`` and ``label``).
      data_dir: TFDS data folder (None: TFDS's default).
      labels: labeled training images N, the same number per class.
      eval_split: split reported at the end: ``test``, ``validation``
        (= ``train[50000:]``) or a TFDS split string.
      train_examples: use only the first this many training images (None: all).
      binarize: dynamic binarisation (a fresh Bernoulli sample per draw).
      batch_size: unlabeled images per step.
      labeled_batch_size: labeled images per step.
    """

    dataset: str = "mnist"
    data_dir: Optional[str] = None
    labels: int = 100
    eval_split: str = "test"
    train_examples: Optional[int] = None
    binarize: bool = True
    batch_size: int = 100
    labeled_batch_size: int = 100

    def __post_init__(self):
        _check_positive(self, "labels", "batch_size", "labeled_batch_size")
        _check_positive(self, "train_examples", allow_none=True)
        for name in ("dataset", "eval_split"):
            if not getattr(self, name):
                raise ConfigError(name, "must not be empty")


@dataclasses.dataclass(frozen=True)
class OptimizationConfig:
    """How one stage is optimised (Adam).

    Attributes:
      epochs: passes over the unlabeled training images (a cap with ``cosine_time``).
      learning_rate: Adam's initial step size.
      lr_schedule: ``constant``; ``cosine`` (to 0 at the last epoch); or
        ``cosine_time`` (to 0 as training time reaches `time_budget_minutes`).
      time_budget_minutes: stop after this much training time (None: no limit).
    """

    epochs: int = 200
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    time_budget_minutes: Optional[float] = None

    def __post_init__(self):
        _check_positive(self, "epochs", "learning_rate")
        _check_positive(self, "time_budget_minutes", allow_none=True)
        _check_choice(self.lr_schedule, LR_SCHEDULES, "lr_schedule")
        if self.lr_schedule == "cosine_time" and self.time_budget_minutes is None:
            raise ConfigError("lr_schedule", "'cosine_time' anneals over the time budget: "
                                             "give time_budget_minutes too")


@dataclasses.dataclass(frozen=True)
class M1Config:
    """The M1 stage: a VAE trained on all training images without labels.

    Attributes:
      hidden_sizes: encoder/decoder hidden widths.
      latent_size: dimension of z1.
      activation: hidden activation.
      kl_warmup_epochs: epochs over which the KL weight rises from 0 to 1
        (0: the plain ELBO throughout).
      optimization: the stage's optimiser.
    """

    hidden_sizes: Tuple[int, ...] = (600, 600)
    latent_size: int = 50
    activation: str = "softplus"
    kl_warmup_epochs: int = 50
    optimization: OptimizationConfig = dataclasses.field(
        default_factory=lambda: OptimizationConfig(epochs=300))

    def __post_init__(self):
        _check_sizes(self.hidden_sizes, "hidden_sizes")
        _check_positive(self, "latent_size")
        if self.kl_warmup_epochs < 0:
            raise ConfigError("kl_warmup_epochs", f"must be >= 0, got {self.kl_warmup_epochs}")


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """The classifier on M1's codes (model m1).

    Attributes:
      kind: ``spreading`` (label spreading over every training code, transductive
        like the paper's TSVM) or ``softmax`` (regression on the labeled codes).
      neighbours: graph and prediction neighbours of label spreading.
      alpha: label spreading's alpha, in (0, 1).
      steps: full-batch Adam steps of the softmax head.
      learning_rate: the softmax head's Adam step size.
    """

    kind: str = "spreading"
    neighbours: int = 10
    alpha: float = 0.99
    steps: int = 500
    learning_rate: float = 1e-2

    def __post_init__(self):
        _check_choice(self.kind, HEADS, "kind")
        _check_positive(self, "neighbours", "steps", "learning_rate")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError("alpha", f"must be in (0, 1), got {self.alpha}")


@dataclasses.dataclass(frozen=True)
class M2Config:
    """The M2 stage: on pixels (model m2) or on M1's codes (model m1m2).

    Attributes:
      hidden_sizes: encoder/decoder hidden widths.
      classifier_hidden_sizes: q(y|x) hidden widths.
      latent_size: dimension of z.
      activation: hidden activation.
      alpha: weight of -log q(y|x) per labeled example; None: the paper's
        0.1 * N_images / N_labels (`objectives.default_alpha`).
      labeled_weight: weight of a labeled example's terms against an unlabeled
        example's U per step; None: the paper's N_l / N_u (every example once per
        pass, as the paper's sums).
      codes: M1+M2's training codes: ``per_step`` (M1's encoder on every batch) or
        ``cached`` (q(z1|x) of every training image computed once, on grey levels).
      label_noise: how U(x) samples z for the K labels of an image: ``independent``
        (K noise draws, as the original code) or ``shared`` (one draw for all K:
        unbiased still, K times fewer random numbers; `objectives.unlabeled_bound`).
      optimization: the stage's optimiser.
    """

    hidden_sizes: Tuple[int, ...] = (500, 500)
    classifier_hidden_sizes: Tuple[int, ...] = (500, 500)
    latent_size: int = 50
    activation: str = "softplus"
    alpha: Optional[float] = None
    labeled_weight: Optional[float] = 1.0
    codes: str = "per_step"
    label_noise: str = "independent"
    optimization: OptimizationConfig = dataclasses.field(default_factory=OptimizationConfig)

    def __post_init__(self):
        _check_sizes(self.hidden_sizes, "hidden_sizes")
        _check_sizes(self.classifier_hidden_sizes, "classifier_hidden_sizes")
        _check_positive(self, "latent_size")
        _check_positive(self, "alpha", "labeled_weight", allow_none=True)
        _check_choice(self.codes, CODES, "codes")
        _check_choice(self.label_noise, LABEL_NOISE, "label_noise")


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the steps run; a resumed run may change any of these.

    Attributes:
      strategy: ``default`` (one device), ``mirrored`` (all local devices) or
        ``multi_worker`` (the cluster in TF_CONFIG); batch sizes are global.
      steps_per_execution: train steps per compiled call.
      jit_compile: XLA-compile the train step.
      checkpoint_minutes: also checkpoint within an epoch after this much training.
      validation_every: run the validation pass (monitoring, not training) after
        every this many epochs and after the stage's last epoch (unless a time
        budget ends the stage first, between passes).
    """

    strategy: str = "default"
    steps_per_execution: int = 50
    jit_compile: bool = True
    checkpoint_minutes: float = 10.0
    validation_every: int = 10

    def __post_init__(self):
        _check_choice(self.strategy, STRATEGIES, "strategy")
        _check_positive(self, "steps_per_execution", "checkpoint_minutes", "validation_every")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines a training run.

    Attributes:
      model: ``m1`` (M1 + head), ``m2``, or ``m1m2`` (M2 on M1's codes).
      seed: seeds the labeled subset, the data order and the models' RNG.
      data: `DataConfig`.
      m1: the M1 stage (m1, m1m2), else None.
      head: M1's classifier head (m1), else None.
      m2: the M2 stage (m2, m1m2), else None.
      runtime: `RuntimeConfig`.
      m1_dir: a finished M1 stage folder to use instead of training one (m1, m1m2);
        `m1` then describes that M1 (`ssl_dgm.builders.adopt_m1`).
      schema_version: the version of this layout, `SCHEMA_VERSION`.
    """

    model: str
    seed: int = 0
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    m1: Optional[M1Config] = None
    head: Optional[HeadConfig] = None
    m2: Optional[M2Config] = None
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    m1_dir: Optional[str] = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        _check_choice(self.model, MODELS, "model")
        wanted = {"m1": ("m1", "head"), "m2": ("m2",), "m1m2": ("m1", "m2")}[self.model]
        for stage in ("m1", "head", "m2"):
            present = getattr(self, stage) is not None
            if present != (stage in wanted):
                raise ConfigError(stage, f"must be {'given' if stage in wanted else 'None'} "
                                         f"for model {self.model}")
        if self.m1_dir is not None and self.model == "m2":
            raise ConfigError("m1_dir", "is for m1 and m1m2 runs; model m2 has no M1")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("seed", f"must be a non-negative integer, got {self.seed!r}")
        if self.schema_version != SCHEMA_VERSION:
            raise ConfigError("schema_version", f"{self.schema_version} is not this version "
                                                f"of ssl_dgm's ({SCHEMA_VERSION})")

    @property
    def stages(self):
        """The optimised stages in training order: ``[("m1", M1Config), ...]``."""
        return [(name, getattr(self, name)) for name in ("m1", "m2")
                if getattr(self, name) is not None]


def to_dict(config) -> dict:
    """A config as JSON-ready nested dicts (tuples become lists)."""
    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(dataclasses.asdict(config))


def optional_type(hint):
    """``Optional[X]`` -> X; anything else -> None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        return next(a for a in args if a is not type(None))
    return None


def coerce(hint, value, path):
    """`value` (from JSON or a typed override) as a value of type `hint`."""
    inner = optional_type(hint)
    if inner is not None:
        return None if value is None else coerce(inner, value, path)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"must be a mapping of {hint.__name__} fields, "
                                    f"got {value!r}")
        return build(hint, value, path + ".")
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"must be a list of integers, got {value!r}")
        return tuple(coerce(typing.get_args(hint)[0], v, path) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(path, f"must be true or false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(path, f"must be an integer, got {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(path, f"must be a {hint.__name__}, got {value!r}")
    return value


def build(cls, fields, prefix=""):
    """A `cls` config from a mapping of its fields (nested mappings for sections)."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(fields) - set(hints))
    if unknown:
        raise ConfigError(prefix + unknown[0], f"is not a field of {cls.__name__} "
                          f"(fields: {', '.join(hints)})")
    values = {name: coerce(hints[name], value, prefix + name)
              for name, value in fields.items()}
    try:
        return cls(**values)
    except ConfigError as error:
        raise ConfigError(prefix + error.path, error.message) from None


def from_dict(stored: Mapping[str, Any]) -> ExperimentConfig:
    """The `ExperimentConfig` of a `to_dict` record (of this `SCHEMA_VERSION`)."""
    if not isinstance(stored, Mapping):
        raise ConfigError("config", f"must be a mapping of fields, got {type(stored).__name__}")
    version = stored.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ConfigError("schema_version", f"is {version!r}; this ssl_dgm reads version "
                                            f"{SCHEMA_VERSION} (a run of an older ssl_dgm "
                                            f"is a plain record: retrain it)")
    return build(ExperimentConfig, stored)


def flatten(config, prefix=""):
    """``{dotted path: value}`` of every leaf field (an absent stage is one None leaf)."""
    leaves = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            leaves.update(flatten(value, f"{prefix}{field.name}."))
        else:
            leaves[prefix + field.name] = value
    return leaves
