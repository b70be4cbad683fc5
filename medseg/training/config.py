"""The training configuration: a typed model loaded from a YAML preset in `configs/`.

Values left `null` (batch size, patch size) come from the plan at run time; `resolve_with_plan`
fills them so the bundle's `config.yaml` records exactly what ran.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import Field, ValidationError, field_validator, model_validator

from medseg.errors import ConfigError, first_validation_problem
from medseg.precision import Precision
from medseg.schema import StrictModel


Positive = Annotated[int, Field(gt=0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class ModelConfig(StrictModel):
    name: str  # a key of medseg.models.MODELS, e.g. "unet3d"
    configuration: Literal["2d", "3d"]  # which plan configuration supplies patch/batch/strides
    features_per_stage: Optional[list[Positive]] = Field(None, min_length=1)  # null: the plan's
    # multiplies the plan's features_per_stage (0.5: half the channels, about a quarter of the FLOPs);
    # only with features_per_stage null; the resolved config records the features it gave (and 1.0)
    width: float = Field(1.0, gt=0.0, le=4.0)
    options: dict[str, Any] = Field(default_factory=dict)  # passed to build_model (deep_supervision, ...)

    @model_validator(mode="after")
    def _width_scales_the_plans_features(self):
        if self.width != 1.0 and self.features_per_stage is not None:
            raise ValueError(f"width {self.width:g} scales the plan's features, but features_per_stage is given "
                             f"({self.features_per_stage}); set one of them (features_per_stage: null, or width: 1.0)")
        return self


class LossConfig(StrictModel):
    name: str = "dice_ce"
    options: dict[str, Any] = Field(default_factory=dict)
    # with model.options.deep_supervision: output k (0 = full resolution) weighs decay^k, normalised;
    # 0.5 is nnU-Net's 1, 1/2, 1/4, 1.0 weighs every output alike
    deep_supervision_decay: float = Field(0.5, gt=0.0, le=1.0)


class OptimizerConfig(StrictModel):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0.0)
    momentum: float = Field(0.99, ge=0.0, lt=1.0)  # sgd only
    nesterov: bool = True  # sgd only
    weight_decay: float = Field(3e-5, ge=0.0)
    schedule: Literal["poly", "cosine"] = "poly"
    poly_exponent: float = Field(0.9, gt=0.0)
    warmup_epochs: int = Field(0, ge=0)


class AugmentConfig(StrictModel):
    """Probabilities per sample; 0 disables a transform. nnU-Net's defaults."""

    flip: Probability = 0.5  # per axis
    rot90: Probability = 0.0  # only about axes whose in-plane spacings agree (checked at run time)
    affine: Probability = 0.2  # small rotation + scaling (RandAffined)
    rotate_degrees: float = Field(30.0, ge=0.0, le=180.0)
    scale_range: float = Field(0.3, ge=0.0, lt=1.0)  # zoom factor drawn in [1 - s, 1 + s]
    elastic: Probability = 0.0  # expensive on CPU: off unless asked for
    brightness: Probability = 0.15
    contrast: Probability = 0.15
    gamma: Probability = 0.3
    noise: Probability = 0.1
    blur: Probability = 0.2
    low_resolution: Probability = 0.25
    # the probabilities above, mirroring aside, times a factor that runs linearly from strength_start
    # at the first step to strength_end at the last (the LR schedule's progress; capped at 1)
    strength_start: float = Field(1.0, ge=0.0, le=4.0)
    strength_end: float = Field(1.0, ge=0.0, le=4.0)


class TrainConfig(StrictModel):
    """Everything `medseg train` needs besides the WORKDIR and plan."""

    version: int = 1
    model: ModelConfig
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    epochs: int = Field(1000, ge=1)  # with time_budget: only the warm-up's schedule length (the budget sizes the run)
    iterations_per_epoch: int = Field(250, ge=1)
    batch_size: Optional[int] = Field(None, ge=1)  # null: the plan's
    patch_size: Optional[list[Positive]] = Field(None, min_length=2, max_length=3)  # null: the plan's
    foreground_oversampling: float = Field(0.33, ge=0.0, le=1.0)
    validate_every: int = Field(50, ge=1)
    ema_alpha: float = Field(0.9, gt=0.0, le=1.0)  # weight of the past in the smoothed val Dice
    # decay of a moving average of the weights (e.g. 0.99), which validation and the bundle then use
    # (medseg.training.weight_average); null: the live weights
    weight_ema: Optional[float] = Field(None, gt=0.0, lt=1.0)
    precision: Precision = Precision.auto
    grad_clip: float = Field(12.0, gt=0.0)
    num_workers: Optional[int] = Field(None, ge=0)  # null: chosen from the CPU count (see loop.default_workers)
    seed: int = 12345
    threads: Optional[int] = Field(None, ge=1)  # torch CPU threads; null: one per core (medseg.threads)
    deterministic: bool = False
    compile: bool = False  # torch.compile the training forward/backward (see docs/benchmarks.md for the gain)
    val_overlap: float = Field(0.5, ge=0.0, lt=1.0)
    interactive: Optional["InteractiveOptions"] = None  # a promptable model trained with simulated clicks (medseg.training.interactive)
    # minutes of wall clock for the whole run, final validation and bundle included ("90s", "60m",
    # "1.5h" or plain minutes): the epochs are sized and re-sized to it (medseg.training.budget)
    time_budget: Optional[float] = Field(None, gt=0)

    @field_validator("time_budget", mode="before")
    @classmethod
    def _budget_minutes(cls, value):
        if value is None:
            return None
        from medseg.training.budget import parse_minutes

        try:
            return parse_minutes(value, "time_budget")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    def resolve_with_plan(self, plan) -> "TrainConfig":
        """A copy with batch size, patch size and features filled from `plan`."""
        conf = plan.configurations[self.model.configuration]
        update: dict[str, Any] = {}
        if self.batch_size is None:
            update["batch_size"] = int(conf.batch_size)
        if self.patch_size is None:
            update["patch_size"] = [int(p) for p in conf.patch_size]
        elif len(self.patch_size) != conf.spatial_dims:
            raise ConfigError(
                f"patch_size {self.patch_size} has {len(self.patch_size)} dimensions, the plan's "
                f"{self.model.configuration} configuration has {conf.spatial_dims}; fix patch_size or set it to null"
            )
        model = self.model
        if model.features_per_stage is None:
            features = [max(1, round(f * model.width)) for f in conf.features_per_stage]
            model = model.model_copy(update={"features_per_stage": features, "width": 1.0})
        update["model"] = model
        return self.model_copy(update=update)


def load_train_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML preset; `overrides` (top-level keys, None values ignored) win over the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file; pass one of the presets in configs/ (e.g. configs/unet3d.yaml)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}); fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, found {type(data).__name__}")
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_problem(exc)}; fix it (see the commented presets in configs/)") from None


def _problem(exc: ValidationError) -> str:
    """"field 'a.b': found X; <what pydantic expected>" for the first problem, on one line."""
    first = exc.errors()[0]
    found = first.get("input")
    shown = "" if first["type"] == "missing" or isinstance(found, dict) else f"found {found!r}; "
    text = first_validation_problem(exc)
    where, _, msg = text.partition(": ")
    return f"{where}: {shown}{msg}".replace("\n", " ")


def dump_config(config: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


from medseg.training.interactive import InteractiveOptions  # noqa: E402  (the option model; imports no trainer code)

TrainConfig.model_rebuild()
