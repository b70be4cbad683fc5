"""Model registry: `MODELS` maps a name to a builder; `build_model` is the one way to make a network.

Every builder takes the plan's topology (`features_per_stage`, `strides`, `kernel_sizes`, from the
`ConfigurationPlan`) and the options of the config's `model:` section, and returns a module mapping
(B, in_channels, *S) to logits (B, num_classes, *S) for any spatial size S (2D: S = (X, Y),
3D: S = (X, Y, Z)).
"""

from __future__ import annotations

import difflib
import inspect
from functools import partial
from typing import Callable, Sequence

from torch import nn

from medseg.errors import ConfigError
from medseg.models.deeplab import DeepLabV3Plus
from medseg.models.unet import UNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet2d": partial(UNet, 2),
    "unet3d": partial(UNet, 3),
    "deeplabv3plus2d": partial(DeepLabV3Plus, 2),
    "deeplabv3plus3d": partial(DeepLabV3Plus, 3),
}


def spatial_dims_of(name: str) -> int:
    """2 or 3: the number of spatial axes model `name` works on."""
    return _lookup(name).args[0]


def _lookup(name: str):
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
    builder = _lookup(name)
    accepted = [p for p, v in inspect.signature(builder.func).parameters.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"model {name!r} got unknown option(s) {', '.join(unknown)}; it accepts: {', '.join(accepted)}")
    return builder(in_channels, num_classes, features_per_stage, strides, kernel_sizes, **options)


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


__all__ = ["MODELS", "build_model", "count_parameters", "count_gflops", "spatial_dims_of", "UNet", "DeepLabV3Plus"]
