"""Model registry: `MODELS` maps a name to a builder; `build_model` is the one way to make a network.

Every builder takes the plan's topology (`features_per_stage`, `strides`, `kernel_sizes`, from the
`ConfigurationPlan`) and the options of the config's `model:` section, and returns a module mapping
(B, in_channels, *S) to logits (B, num_classes, *S) for any spatial size S (2D: S = (X, Y),
3D: S = (X, Y, Z)).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Sequence

from torch import nn

from medseg.errors import ConfigError

# name -> (module, class, spatial dims). Classes are imported on first use: DeepLab is built from
# MONAI blocks, and importing MONAI costs seconds that a U-Net user should not pay.
MODELS: dict[str, tuple[str, str, int]] = {
    "unet2d": ("medseg.models.unet", "UNet", 2),
    "unet3d": ("medseg.models.unet", "UNet", 3),
    "deeplabv3plus2d": ("medseg.models.deeplab", "DeepLabV3Plus", 2),
    "deeplabv3plus3d": ("medseg.models.deeplab", "DeepLabV3Plus", 3),
}


def spatial_dims_of(name: str) -> int:
    """2 or 3: the number of spatial axes model `name` works on."""
    return _lookup(name)[2]


def model_class(name: str) -> type[nn.Module]:
    """The class registered as `name` (its first argument is the number of spatial dims)."""
    module, cls, _ = _lookup(name)
    return getattr(importlib.import_module(module), cls)


def _lookup(name: str) -> tuple[str, str, int]:
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f" did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown model {name!r},{hint} Known: {', '.join(MODELS)}")
    return MODELS[name]


def build_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    features_per_stage: Sequence[int],
    strides: Sequence[Sequence[int]],
    kernel_sizes: Sequence[Sequence[int]] | None = None,
    **options,
) -> nn.Module:
    """Build registered model `name`; `options` are its keyword options (e.g. deep_supervision, upsample)."""
    cls = model_class(name)
    accepted = [p for p, v in inspect.signature(cls).parameters.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"model {name!r} got unknown option(s) {', '.join(unknown)}; it accepts: {', '.join(accepted)}")
    return cls(spatial_dims_of(name), in_channels, num_classes, features_per_stage, strides, kernel_sizes, **options)


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


__all__ = ["MODELS", "build_model", "count_gflops", "count_parameters", "model_class", "spatial_dims_of"]
