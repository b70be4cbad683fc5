"""Training augmentation: MONAI dictionary transforms applied identically to image and label.

Inputs are {"image": (C, *S) float32, "label": (1, *S)} with S two or three spatial axes;
spatial transforms resample the label with nearest neighbour. Validation uses no augmentation.
"""

from __future__ import annotations

import math
from typing import Sequence


def rot90_axis_pairs(patch_size: Sequence[int], spacing: Sequence[float] | None, rtol: float = 0.1) -> list[tuple[int, int]]:
    """Spatial axis pairs where a 90 degree rotation is safe: equal patch sides and similar spacing.

    Equal sides keep the patch shape (so patches still batch); similar spacing keeps anatomy undistorted.
    """
    pairs = []
    n = len(patch_size)
    for a in range(n):
        for b in range(a + 1, n):
            if patch_size[a] != patch_size[b]:
                continue
            if spacing is not None and abs(spacing[a] - spacing[b]) > rtol * max(spacing[a], spacing[b]):
                continue
            pairs.append((a, b))
    return pairs


def strength_at(augment, progress: float) -> float:
    """The factor on the augmentation probabilities at `progress` in [0, 1] of the run: linear from
    `augment.strength_start` to `augment.strength_end`."""
    q = min(1.0, max(0.0, float(progress)))
    return augment.strength_start + (augment.strength_end - augment.strength_start) * q


def scheduled_transforms(augment, patch_size: Sequence[int], spacing: Sequence[float] | None, progress: float):
    """(strength, transforms) at `progress` in [0, 1] of the run, or None when the strength is the
    constant 1 (the transforms built once stay). The trainer passes the LR schedule's progress at
    each epoch's first step: the strength follows a time budget's re-plans, and a run resumed
    mid-epoch draws as the uninterrupted one."""
    if augment.strength_start == augment.strength_end == 1.0:
        return None
    strength = strength_at(augment, progress)
    return strength, build_train_transforms(augment, patch_size, spacing, strength)


def build_train_transforms(augment, patch_size: Sequence[int], spacing: Sequence[float] | None = None, strength: float = 1.0):
    """A `monai.transforms.Compose` for training patches of `patch_size` (2 or 3 spatial axes).

    augment: an `AugmentConfig` (probabilities; 0 leaves a transform out).
    spacing: mm per spatial axis of the patch, for choosing rot90 planes.
    strength: a factor on every probability but mirroring's (capped at 1), see `strength_at`;
        mirroring stays as configured (a symmetry of the anatomy, not a distortion to unlearn).
    Call `.set_random_state(seed)` before each sample for reproducible draws.
    """
    import monai.transforms as mt

    if strength != 1.0:
        scaled = {name: min(1.0, getattr(augment, name) * strength)
                  for name in ("rot90", "affine", "elastic", "brightness", "contrast", "gamma", "noise", "blur", "low_resolution")}
        augment = augment.model_copy(update=scaled)
    dims = len(patch_size)
    keys = ["image", "label"]
    interp = "trilinear" if dims == 3 else "bilinear"
    out = []
    if augment.affine > 0:
        rad = math.radians(augment.rotate_degrees)
        out.append(
            mt.RandAffined(
                keys=keys,
                prob=augment.affine,
                rotate_range=(rad,) * (3 if dims == 3 else 1),
                scale_range=(augment.scale_range,) * dims,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            )
        )
    if augment.elastic > 0:
        elastic = mt.Rand3DElasticd if dims == 3 else mt.Rand2DElasticd
        kwargs = dict(sigma_range=(9, 13), magnitude_range=(0, 200)) if dims == 3 else dict(spacing=(20, 20), magnitude_range=(0, 2))
        out.append(elastic(keys=keys, prob=augment.elastic, mode=("bilinear", "nearest"), padding_mode="zeros", **kwargs))
    if augment.rot90 > 0:
        for pair in rot90_axis_pairs(patch_size, spacing):
            out.append(mt.RandRotate90d(keys=keys, prob=augment.rot90, max_k=3, spatial_axes=pair))
    if augment.noise > 0:
        out.append(mt.RandGaussianNoised(keys="image", prob=augment.noise, mean=0.0, std=0.1))
    if augment.blur > 0:
        s = (0.5, 1.0)
        out.append(mt.RandGaussianSmoothd(keys="image", prob=augment.blur, sigma_x=s, sigma_y=s, sigma_z=s))
    if augment.brightness > 0:
        out.append(mt.RandScaleIntensityd(keys="image", prob=augment.brightness, factors=0.25))
    if augment.contrast > 0:
        out.append(mt.RandScaleIntensityFixedMeand(keys="image", prob=augment.contrast, factors=0.25, preserve_range=True))
    if augment.low_resolution > 0:
        out.append(mt.RandSimulateLowResolutiond(keys="image", prob=augment.low_resolution, zoom_range=(0.5, 1.0), upsample_mode=interp))
    if augment.gamma > 0:
        out.append(mt.RandAdjustContrastd(keys="image", prob=augment.gamma, gamma=(0.7, 1.5), retain_stats=True))
    if augment.flip > 0:
        for axis in range(dims):
            out.append(mt.RandFlipd(keys=keys, prob=augment.flip, spatial_axis=axis))
    return mt.Compose(out, lazy=False)
