"""Model registry: `MODELS` maps a name to a `ModelSpec`; `build_model` is the one way to make a network.

Each family fills in the contract its own way (docs/architecture.md, "Models"):
- `options`: a pydantic model of the config's `model.options` (unknown or mistyped options are refused
  in one line naming the field);
- `needs`: the plan fields its builder reads (`patch_size`, `spacing`, and only for convolution
  stacks `features_per_stage`, `strides`, `kernel_sizes`); the builder gets those and nothing else;
- `head`: the `OutputHead` (`medseg.models.heads`) saying how many channels the network outputs and
  how the predictor stitches and decodes them.
A builder is `builder(plan: ModelPlan, options) -> nn.Module` mapping (B, in_channels, *S) to
(B, head.out_channels(num_classes), *S) for any spatial size S (2D: S = (X, Y), 3D: S = (X, Y, Z)).
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from pydantic import BaseModel, ValidationError
from torch import nn

from medseg.errors import ConfigError
from medseg.models.common import use_safe_conv3d
from medseg.models.heads import SEMANTIC_SOFTMAX, OutputHead
from medseg.schema import StrictModel

PLAN_FIELDS = ("patch_size", "spacing", "features_per_stage", "strides", "kernel_sizes")


class ModelOptions(StrictModel):
    """Base of every family's options model: fields are the family's options, extras are refused."""


@dataclass(frozen=True)
class ModelPlan:
    """What a builder gets: channel counts, and the plan fields its family `needs` (the others None).

    patch_size: spatial_dims ints; spacing: mm per axis of the preprocessed grid (RAS order, 3
    values); features_per_stage, strides, kernel_sizes: the `ConfigurationPlan`'s topology.
    """

    spatial_dims: int
    in_channels: int
    out_channels: int
    patch_size: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    features_per_stage: list[int] | None = None
    strides: list[list[int]] | None = None
    kernel_sizes: list[list[int]] | None = None


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry. `builder` and `options` may be "module:attribute" strings, imported on
    first use (DeepLab is built from MONAI blocks; importing MONAI costs seconds a U-Net user should
    not pay). `optional`: needed fields a builder can do without (it gets None)."""

    builder: str | Callable[[ModelPlan, Any], nn.Module]
    options: str | type[BaseModel]
    spatial_dims: int
    needs: tuple[str, ...] = ("patch_size",)
    optional: tuple[str, ...] = ()
    head: OutputHead = SEMANTIC_SOFTMAX
    description: str = ""
    # `loader(model, folder) -> str`: fills a built model from `model.options.pretrained` (a fresh
    # training run only; bundles carry their own weights); None: the family takes no checkpoint
    pretrained: str | Callable[[nn.Module, str], str] | None = None

    def __post_init__(self):
        unknown = sorted(set(self.needs) - set(PLAN_FIELDS))
        if unknown or self.spatial_dims not in (2, 3):
            raise ValueError(f"ModelSpec: needs {unknown} not among {PLAN_FIELDS}, or spatial_dims {self.spatial_dims} not 2/3")


_CONV = ("features_per_stage", "strides", "kernel_sizes")  # any patch size: the nets pad internally
_UNET = dict(builder="medseg.models.unet:build_unet", options="medseg.models.unet:UNetOptions", needs=_CONV,
             optional=("kernel_sizes",), description="nnU-Net-style U-Net")
_DEEPLAB = dict(builder="medseg.models.deeplab:build_deeplab", options="medseg.models.deeplab:DeepLabOptions", needs=_CONV,
                optional=("kernel_sizes",), description="DeepLabv3+ (atrous residual encoder, ASPP)")
# any patch size (the patch embeddings pad, the decoder crops); strides 4-2-2-2 adapted to the plan's
# patch size and spacing (medseg.models.segformer.stage_strides)
_SEGFORMER = dict(builder="medseg.models.segformer:build_segformer", needs=("patch_size", "spacing"),
                  optional=("patch_size", "spacing"), description="SegFormer (Mix Transformer encoder, all-MLP decoder)")
MODELS: dict[str, ModelSpec] = {
    "unet2d": ModelSpec(spatial_dims=2, **_UNET),
    "unet3d": ModelSpec(spatial_dims=3, **_UNET),
    "deeplabv3plus2d": ModelSpec(spatial_dims=2, **_DEEPLAB),
    "deeplabv3plus3d": ModelSpec(spatial_dims=3, **_DEEPLAB),
    "segformer2d": ModelSpec(spatial_dims=2, options="medseg.models.segformer:SegFormer2DOptions",
                             pretrained="medseg.models.hf_segformer:load_hf_segformer", **_SEGFORMER),
    "segformer3d": ModelSpec(spatial_dims=3, options="medseg.models.segformer:SegFormer3DOptions", **_SEGFORMER),
}


def register_model(name: str, spec: ModelSpec, replace: bool = False) -> None:
    """Add a model family under `name` (e.g. from a plugin); an existing name needs replace=True."""
    if name in MODELS and not replace:
        raise ConfigError(f"model {name!r} is already registered; pick another name or pass replace=True")
    MODELS[name] = spec


def model_spec(name: str) -> ModelSpec:
    """The registry entry of `name`; an unknown name is refused with the closest known one."""
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f" did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown model {name!r},{hint} Known: {', '.join(MODELS)}")
    return MODELS[name]


def spatial_dims_of(name: str) -> int:
    """2 or 3: the number of spatial axes model `name` works on."""
    return model_spec(name).spatial_dims


def model_head(name: str) -> OutputHead:
    """The output head of model `name`: what the predictor asks how to stitch and decode."""
    return model_spec(name).head


def _resolve(ref):
    if not isinstance(ref, str):
        return ref
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def validate_options(name: str, options: Mapping[str, Any] | None = None) -> BaseModel:
    """The config's `model.options` of `name` as its family's typed options; ConfigError in one line
    naming the unknown or invalid field."""
    cls = _resolve(model_spec(name).options)
    try:
        return cls.model_validate(dict(options or {}))
    except ValidationError as exc:
        errors = exc.errors()
        extra = [str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden"]
        if extra:
            raise ConfigError(f"model {name!r} got unknown option(s) {', '.join(extra)}; it accepts: {', '.join(cls.model_fields)}") from None
        first = errors[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"model {name!r} option {where}={first.get('input')!r} is invalid: {first['msg']}; fix model.options.{where}") from None


def model_plan(name: str, plan: Any, *, in_channels: int, num_classes: int, spacing: Sequence[float] | None = None) -> ModelPlan:
    """The `ModelPlan` model `name` is built from: `plan` is a `ConfigurationPlan` or a mapping with (at
    least) the fields the family needs; `spacing` (the `Plan`'s target_spacing) if it needs spacing."""
    spec = model_spec(name)
    get = plan.get if isinstance(plan, Mapping) else lambda key, default=None: getattr(plan, key, default)
    dims = get("spatial_dims")
    if dims is not None and int(dims) != spec.spatial_dims:
        raise ConfigError(f"model {name!r} is {spec.spatial_dims}D but the plan configuration is {dims}D; "
                          f"pick the {spec.spatial_dims}d configuration or a {dims}D model")
    values = {"spacing": spacing if spacing is not None else get("spacing")}
    values.update({f: get(f) for f in PLAN_FIELDS if f != "spacing"})
    missing = [f for f in spec.needs if values[f] is None and f not in spec.optional]
    if missing:
        raise ConfigError(f"model {name!r} needs {', '.join(missing)} from the plan and got none; "
                          "build it from the plan configuration (plan.json) of a `medseg preprocess` run")

    def plain(value):
        return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value

    given = {f: (plain(values[f]) if f in spec.needs and values[f] is not None else None) for f in PLAN_FIELDS}
    for f in ("patch_size", "spacing"):
        if given[f] is not None:
            given[f] = tuple(given[f])
    head = spec.head
    return ModelPlan(spatial_dims=spec.spatial_dims, in_channels=int(in_channels), out_channels=head.out_channels(num_classes), **given)


def build_model(name: str, plan: Any, *, in_channels: int, num_classes: int, spacing: Sequence[float] | None = None,
                **options) -> nn.Module:
    """Build registered model `name` from a plan configuration (a `ConfigurationPlan` or a mapping of
    its fields; only those the family `needs` are read), the channel counts and the family's options
    (the config's `model.options`, e.g. deep_supervision=True for a U-Net)."""
    spec = model_spec(name)
    typed = validate_options(name, options)
    inputs = model_plan(name, plan, in_channels=in_channels, num_classes=num_classes, spacing=spacing)
    return use_safe_conv3d(_resolve(spec.builder)(inputs, typed))


def load_pretrained(name: str, model: nn.Module, options: Mapping[str, Any] | None) -> str | None:
    """Fill `model` (built by `build_model(name, ...)`) from the checkpoint folder its options name
    (`pretrained`); returns the loader's one-line report, or None when no checkpoint is named."""
    folder = dict(options or {}).get("pretrained")
    if not folder:
        return None
    return _resolve(model_spec(name).pretrained)(model, folder)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_gflops(model: nn.Module, input_shape: Sequence[int]) -> float:
    """GFLOPs (1e9 floating-point operations, a multiply-add counts 2) of one forward pass.

    `input_shape` is (B, C, *S). Counted by torch's FlopCounterMode (convolutions and matmuls).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.zeros(tuple(input_shape)))
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


__all__ = [
    "MODELS", "ModelOptions", "ModelPlan", "ModelSpec", "build_model", "count_gflops", "count_parameters", "model_head",
    "model_plan", "model_spec", "register_model", "spatial_dims_of", "validate_options",
]
