"""The training configuration: a typed model loaded from a YAML preset in `configs/`.

Values left `null` (batch size, patch size) come from the plan at run time; `resolve_with_plan`
fills them so the bundle's `config.yaml` records exactly what ran.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medseg.errors import ConfigError, first_validation_problem
from medseg.precision import Precision


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    name: str  # a key of medseg.models.MODELS, e.g. "unet3d"
    configuration: Literal["2d", "3d"]  # which plan configuration supplies patch/batch/strides
    features_per_stage: Optional[list[int]] = None  # null: the plan's
    options: dict[str, Any] = Field(default_factory=dict)  # passed to build_model (deep_supervision, ...)


class LossConfig(_Strict):
    name: str = "dice_ce"
    options: dict[str, Any] = Field(default_factory=dict)


class OptimizerConfig(_Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.99  # sgd only
    nesterov: bool = True  # sgd only
    weight_decay: float = 3e-5
    schedule: Literal["poly", "cosine"] = "poly"
    poly_exponent: float = 0.9
    warmup_epochs: int = 0


class AugmentConfig(_Strict):
    """Probabilities per sample; 0 disables a transform. nnU-Net's defaults."""

    flip: float = 0.5  # per axis
    rot90: float = 0.0  # only about axes whose in-plane spacings agree (checked at run time)
    affine: float = 0.2  # small rotation + scaling (RandAffined)
    rotate_degrees: float = 30.0
    scale_range: float = 0.3  # zoom factor drawn in [1 - s, 1 + s]
    elastic: float = 0.0  # expensive on CPU: off unless asked for
    brightness: float = 0.15
    contrast: float = 0.15
    gamma: float = 0.3
    noise: float = 0.1
    blur: float = 0.2
    low_resolution: float = 0.25


class TrainConfig(_Strict):
    """Everything `medseg train` needs besides the WORKDIR and plan."""

    version: int = 1
    model: ModelConfig
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    epochs: int = Field(1000, ge=1)
    iterations_per_epoch: int = Field(250, ge=1)
    batch_size: Optional[int] = Field(None, ge=1)  # null: the plan's
    patch_size: Optional[list[int]] = None  # null: the plan's
    foreground_oversampling: float = Field(0.33, ge=0.0, le=1.0)
    validate_every: int = Field(50, ge=1)
    ema_alpha: float = Field(0.9, gt=0.0, le=1.0)  # weight of the past in the smoothed val Dice
    precision: Precision = Precision.auto
    grad_clip: float = 12.0
    num_workers: Optional[int] = None  # null: chosen from the CPU count (see loop.default_workers)
    seed: int = 12345
    deterministic: bool = False
    compile: bool = False  # torch.compile the training forward/backward (see docs/benchmarks.md for the gain)
    val_overlap: float = Field(0.5, ge=0.0, lt=1.0)

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
            model = model.model_copy(update={"features_per_stage": list(conf.features_per_stage)})
        update["model"] = model
        return self.model_copy(update=update)


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> TrainConfig:
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
        raise ConfigError(f"{path}: {first_validation_problem(exc)}; see the commented presets in configs/") from None


def dump_config(config: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
