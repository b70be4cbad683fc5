"""Loss registry: `LOSSES` maps a name to a builder; `build_loss(name, **options)` makes one.

Every loss is called as `loss(logits (B, K, *S), target (B, 1, *S) integer labels)` -> scalar
float32 (sigmoid losses also take (B, K, *S) multi-label maps). Common options: `class_weights`
(one per class, background included), `ignore_index` (default 255; None disables), `batch_dice`,
`smooth`, `include_background`. See `medseg.losses.compound` for the exact formulas.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Callable

from torch import nn

from medseg.errors import ConfigError
from medseg.losses.compound import SegmentationLoss
from medseg.losses.deep_supervision import DeepSupervisionLoss, default_weights, downsample_target

_COMMON = ("class_weights", "ignore_index", "include_background", "batch_dice", "smooth")


def dice(*, sigmoid: bool = False, **common) -> nn.Module:
    """Soft Dice on softmax probabilities (or sigmoid with `sigmoid=True`)."""
    return SegmentationLoss(lambda_dice=1.0, lambda_voxel=0.0, sigmoid=sigmoid, **common)


def dice_ce(*, lambda_dice: float = 1.0, lambda_ce: float = 1.0, **common) -> nn.Module:
    """Softmax Dice + cross-entropy, multi-class (nnU-Net's default)."""
    return SegmentationLoss(lambda_dice=lambda_dice, lambda_voxel=lambda_ce, **common)


def dice_bce(*, lambda_dice: float = 1.0, lambda_bce: float = 1.0, **common) -> nn.Module:
    """Sigmoid Dice + binary cross-entropy; binary (K = 1) or multi-label (one sigmoid per channel)."""
    return SegmentationLoss(lambda_dice=lambda_dice, lambda_voxel=lambda_bce, sigmoid=True, **common)


def focal(*, gamma: float = 2.0, alpha=None, sigmoid: bool = False, **common) -> nn.Module:
    """Focal loss (Lin et al. 2017), softmax by default; gamma = 0 and alpha = None give CE/BCE."""
    return SegmentationLoss(lambda_dice=0.0, lambda_voxel=1.0, gamma=gamma, alpha=alpha, sigmoid=sigmoid, **common)


def dice_focal(
    *, lambda_dice: float = 1.0, lambda_focal: float = 1.0, gamma: float = 2.0, alpha=None, sigmoid: bool = False, **common
) -> nn.Module:
    """Soft Dice + focal."""
    return SegmentationLoss(
        lambda_dice=lambda_dice, lambda_voxel=lambda_focal, gamma=gamma, alpha=alpha, sigmoid=sigmoid, **common
    )


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "dice": dice,
    "dice_ce": dice_ce,
    "dice_bce": dice_bce,
    "focal": focal,
    "dice_focal": dice_focal,
}


def build_loss(name: str, **options) -> nn.Module:
    """Build registered loss `name` with its keyword `options` (from the config's `loss:` section)."""
    if name not in LOSSES:
        close = difflib.get_close_matches(name, LOSSES, n=1)
        hint = f" did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown loss {name!r},{hint} Known: {', '.join(LOSSES)}")
    builder = LOSSES[name]
    accepted = [p for p, v in inspect.signature(builder).parameters.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]
    accepted += list(_COMMON)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"loss {name!r} got unknown option(s) {', '.join(unknown)}; it accepts: {', '.join(accepted)}")
    return builder(**options)


__all__ = ["LOSSES", "build_loss", "SegmentationLoss", "DeepSupervisionLoss", "default_weights", "downsample_target"]
