"""The planner: a `Plan` derived from the dataset fingerprint (`make_plan`), as nnU-Net's experiment planner.

Median target spacing (the coarse axis of anisotropic data at its 10th percentile), patch and batch
size from a memory budget, pooling strides and kernel sizes per axis, normalisation per channel by
modality. The schema it fills is `medseg.preprocess.plan`.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field

from medseg.errors import ConfigError
from medseg.preprocess.plan import ChannelNormalization, ConfigurationPlan, Plan, ResamplingPlan
from medseg.schema import StrictModel


class PlannerSettings(StrictModel):
    """Knobs of `make_plan` (the `planner:` section of configs/preprocess.yaml)."""

    anisotropy_threshold: float = Field(3.0, ge=1)
    memory_budget_gb: float = Field(8.0, gt=0)  # activation memory one training step may use
    max_features_3d: int = Field(320, ge=1)
    max_features_2d: int = Field(512, ge=1)
    base_features: int = Field(32, ge=1)
    min_bottom_size: int = Field(4, ge=1)  # an axis is pooled only while its size stays >= this after pooling
    max_pools: int = Field(5, ge=0)
    max_patch_voxels_3d: int = Field(128**3, ge=1)
    max_patch_voxels_2d: int = Field(1024**2, ge=1)
    max_batch_fraction: float = Field(0.05, gt=0, le=1)  # a batch covers at most this fraction of the dataset's voxels
    min_batch_size: int = Field(2, ge=1)
    image_order: Literal[1, 3] = 3
    label_mode: Literal["onehot_linear", "nearest"] = "onehot_linear"


CT_MODALITIES = {"CT"}
NO_NORM_MODALITIES = {"NONORM", "NONE"}


def normalization_scheme(modality: str) -> str:
    m = modality.upper()
    if m in CT_MODALITIES:
        return "ct"
    if m in NO_NORM_MODALITIES:
        return "none"
    return "zscore"


def target_spacing_from(spacings: np.ndarray, shapes: np.ndarray, threshold: float) -> list[float]:
    """Median spacing; for anisotropic data the coarse axis gets its 10th percentile (nnU-Net).

    spacings, shapes: (N, 3) per case, RAS axis order.
    """
    target = np.median(spacings, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    median_shape = np.median(shapes, axis=0)
    anisotropic_spacing = target[worst] > threshold * min(target[others])
    few_slices = median_shape[worst] * threshold < min(median_shape[others])
    if anisotropic_spacing and few_slices:
        coarse = float(np.percentile(spacings[:, worst], 10))
        # never finer than the in-plane spacing: that would only add interpolated slices
        target[worst] = max(coarse, float(max(target[others])) + 1e-5)
    return [float(x) for x in target]


def pooling(spacing: list[float], patch: list[int], settings: PlannerSettings) -> tuple[list[list[int]], list[list[int]]]:
    """Strides and kernel sizes per stage for a patch of size `patch` at `spacing` (mm).

    An axis is halved while its size stays >= min_bottom_size after pooling and its spacing is at
    most twice the finest current spacing; kernels are 1 along axes still much coarser than the
    finest one (nnU-Net's rule), else 3.
    """
    dims = len(patch)
    size = [float(p) for p in patch]
    sp = [float(s) for s in spacing]
    strides = [[1] * dims]
    kernels = [[3 if sp[a] <= 2 * min(sp) else 1 for a in range(dims)]]
    for _ in range(settings.max_pools):
        finest = min(sp)
        stride = [2 if size[a] >= 2 * settings.min_bottom_size and sp[a] <= 2 * finest else 1 for a in range(dims)]
        if sum(s == 2 for s in stride) == 0:
            break
        for a in range(dims):
            size[a] /= stride[a]
            sp[a] *= stride[a]
        strides.append(stride)
        finest = min(sp)
        kernels.append([3 if sp[a] <= 2 * finest else 1 for a in range(dims)])
    return strides, kernels


def _estimate_bytes(patch: list[int], strides: list[list[int]], features: list[int], in_channels: int, num_classes: int) -> float:
    """Rough activation memory of one sample through an encoder-decoder U-Net (float32 + grads)."""
    voxels = float(np.prod(patch))
    total = voxels * (in_channels + num_classes)
    scale = 1.0
    for stride, f in zip(strides, features):
        scale *= float(np.prod(stride))
        # two convs each storing conv output, norm output and activation, in encoder and decoder
        total += (voxels / scale) * f * 2 * 3 * 2
    return total * 4 * 2  # float32, activations + gradients


def _configuration(
    dims: int,
    spacing: list[float],
    median_shape: list[float],
    in_channels: int,
    num_classes: int,
    dataset_voxels: float,
    settings: PlannerSettings,
) -> ConfigurationPlan:
    max_features = settings.max_features_3d if dims == 3 else settings.max_features_2d
    max_voxels = settings.max_patch_voxels_3d if dims == 3 else settings.max_patch_voxels_2d
    budget = settings.memory_budget_gb * 1024**3
    # start from the median shape, shrunk isotropically (in mm) to the voxel cap
    patch = [max(1.0, float(m)) for m in median_shape]
    while np.prod(patch) > max_voxels:
        mm = [p * s for p, s in zip(patch, spacing)]
        a = int(np.argmax(mm))
        patch[a] *= 0.9

    def finish(p: list[float]):
        strides, kernels = pooling(spacing, [int(round(x)) for x in p], settings)
        div = [int(np.prod([s[a] for s in strides])) for a in range(dims)]
        cap = [int(math.ceil(m / d) * d) for m, d in zip(median_shape, div)]
        size = [min(int(math.ceil(x / d) * d), c) for x, d, c in zip(p, div, cap)]
        size = [max(d, s) for s, d in zip(size, div)]
        features = [min(settings.base_features * 2**i, max_features) for i in range(len(strides))]
        return size, strides, kernels, features

    size, strides, kernels, features = finish(patch)
    while _estimate_bytes(size, strides, features, in_channels, num_classes) * settings.min_batch_size > budget:
        # shrink the axis that is largest relative to the median shape
        rel = [s / max(m, 1.0) for s, m in zip(size, median_shape)]
        a = int(np.argmax(rel))
        div = int(np.prod([s[a] for s in strides]))
        if size[a] - div < div:
            if all(s <= int(np.prod([st[i] for st in strides])) for i, s in enumerate(size)):
                break
            rel[a] = -1
            a = int(np.argmax(rel))
            div = int(np.prod([s[a] for s in strides]))
        patch = list(size)
        patch[a] = max(size[a] - div, 1)
        size, strides, kernels, features = finish(patch)
    per_sample = _estimate_bytes(size, strides, features, in_channels, num_classes)
    batch = int(budget // per_sample)
    max_by_data = int(settings.max_batch_fraction * dataset_voxels / float(np.prod(size)))
    batch = max(settings.min_batch_size, min(batch, max_by_data))
    return ConfigurationPlan(
        spatial_dims=dims,
        patch_size=size,
        batch_size=batch,
        features_per_stage=features,
        strides=strides,
        kernel_sizes=kernels,
    )


def make_plan(fingerprint: dict, settings: PlannerSettings | None = None, overrides: dict | None = None) -> Plan:
    """Derive a `Plan` from a fingerprint (see `fingerprint.compute_fingerprint`).

    overrides: nested dict merged over the planned fields before validation (any field of `Plan`).
    """
    settings = settings or PlannerSettings()
    cases = fingerprint["cases"]
    if not cases:
        raise ConfigError("the dataset has no valid case to plan from; fix the inputs listed above")
    spacings = np.array([c["spacing"] for c in cases], dtype=float)
    shapes = np.array([c["shape_after_crop"] for c in cases], dtype=float)
    target = target_spacing_from(spacings, shapes, settings.anisotropy_threshold)
    resampled = shapes * spacings / np.array(target)
    median_shape = [float(x) for x in np.median(resampled, axis=0)]
    dataset_voxels = float(np.sum(np.prod(resampled, axis=1)))
    n_channels = len(fingerprint["channel_names"])
    num_classes = len(fingerprint["labels"])

    normalization = []
    crop_shrinks = float(np.median(np.prod(shapes, axis=1) / np.prod([c["shape"] for c in cases], axis=1))) < 0.75
    for ch, modality in enumerate(fingerprint["modalities"]):
        scheme = normalization_scheme(modality)
        stats = fingerprint["intensity"][ch]
        if scheme == "ct":
            normalization.append(
                ChannelNormalization(
                    scheme="ct",
                    clip_low=stats["percentile_00_5"],
                    clip_high=stats["percentile_99_5"],
                    mean=stats["mean"],
                    std=max(stats["std"], 1e-8),
                )
            )
        else:
            normalization.append(ChannelNormalization(scheme=scheme, use_nonzero_mask=crop_shrinks))

    cfg3d = _configuration(3, target, median_shape, n_channels, num_classes, dataset_voxels, settings)
    spacing_ratio = max(target) / min(target)
    slice_axis = int(np.argmax(target)) if spacing_ratio > 1.01 else 2
    in_plane = [a for a in range(3) if a != slice_axis]
    cfg2d = _configuration(
        2,
        [target[a] for a in in_plane],
        [median_shape[a] for a in in_plane],
        n_channels,
        num_classes,
        dataset_voxels,
        settings,
    )
    cfg2d.slice_axis = slice_axis
    data = Plan(
        dataset_name=fingerprint["dataset_name"],
        channel_names=fingerprint["channel_names"],
        modalities=fingerprint["modalities"],
        labels={int(k): v for k, v in fingerprint["labels"].items()},
        target_spacing=target,
        normalization=normalization,
        resampling=ResamplingPlan(
            image_order=settings.image_order,
            label_mode=settings.label_mode,
            anisotropy_threshold=settings.anisotropy_threshold,
        ),
        configurations={"2d": cfg2d, "3d": cfg3d},
    ).model_dump()
    if overrides:
        data = deep_merge(data, overrides)
    plan = Plan.from_dict(data, source="plan overrides in the config file")
    for name, cfg in plan.configurations.items():
        total = cfg.total_stride
        if any(p % t for p, t in zip(cfg.patch_size, total)):
            raise ConfigError(
                f"configuration '{name}': patch size {cfg.patch_size} is not divisible by the total stride {total}; "
                "use multiples of it in the config overrides"
            )
    return plan


def deep_merge(base: dict, update: dict) -> dict:
    """`base` with `update` merged in; nested dicts merge, everything else replaces."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            # JSON/YAML keys of int-keyed dicts may arrive as strings
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
