"""The plan: how every case is resampled, normalised and cut into patches (`WORKDIR/plan.json`).

`Plan` is a typed, versioned pydantic model (extra fields are refused) derived from the dataset
fingerprint by `make_plan`, in the manner of nnU-Net's experiment planner: median target spacing
(coarse axis of anisotropic data at its 10th percentile), patch and batch size from a memory
budget, pooling strides per axis, normalisation per channel by modality.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medseg.errors import ConfigError, InputError, first_validation_problem
from medseg.label_codes import LabelCode

PLAN_VERSION = 1
IGNORE_LABEL = 255  # unannotated voxels, in masks and in the cached label.npy (the losses' default ignore_index)
MAX_LABEL_VALUE = 65535  # label maps are written as uint16 at most
MAX_CLASSES = 255  # channels 0..254 fit the uint8 cache beside IGNORE_LABEL


def check_label_set(labels: dict[int, str]) -> None:
    """Raise ValueError unless `labels` holds background 0 and at most MAX_CLASSES values in 0..MAX_LABEL_VALUE."""
    bad = sorted(int(k) for k in labels if not 0 <= int(k) <= MAX_LABEL_VALUE)
    if bad:
        raise ValueError(f"label values {bad[:5]} are outside 0..{MAX_LABEL_VALUE}; relabel the masks")
    if 0 not in labels:
        raise ValueError(f"labels {sorted(labels)} lack 0 (background); declare 0 as background")
    if len(labels) > MAX_CLASSES:
        raise ValueError(f"{len(labels)} labels; at most {MAX_CLASSES} classes (background included) are supported")


def value_lookup(label_values: list[int]) -> np.ndarray:
    """(256,) channel -> label value: channel k is the k-th value in sorted order, IGNORE_LABEL stays
    IGNORE_LABEL; uint8 when every value is < 256, else uint16. Other channels map to 0."""
    values = sorted(int(v) for v in label_values)
    lut = np.zeros(MAX_CLASSES + 1, dtype=np.uint8 if max(values, default=0) < 256 else np.uint16)
    lut[: len(values)] = values
    lut[IGNORE_LABEL] = IGNORE_LABEL
    return lut


def channels_to_values(channels: np.ndarray, label_values: list[int] | None) -> np.ndarray:
    """Channel indices (integer array, e.g. an argmax or a cached label.npy) -> label values.

    label_values None means a legacy plan whose values are the channels (returned unchanged).
    """
    if label_values is None:
        return channels
    if list(label_values) == list(range(len(label_values))) and channels.dtype == np.uint8:
        return channels  # consecutive labels: the map is the identity
    lut = value_lookup(label_values)
    out = np.zeros(channels.shape, dtype=lut.dtype, order="F" if np.isfortran(channels) else "C")
    # one pass per channel: no int64 copy of a large volume, as fancy indexing would make
    for k in present_values(channels).tolist():
        if k:
            out[channels == k] = lut[k] if k < len(lut) else 0
    return out


def present_values(labels: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer array; one bincount pass for uint8/uint16/bool."""
    if labels.dtype in (np.uint8, np.uint16, bool):
        return np.flatnonzero(np.bincount(labels.reshape(-1, order="A"), minlength=1))
    return np.unique(labels)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChannelNormalization(_Strict):
    """How one input channel is normalised.

    scheme "ct": clip to [clip_low, clip_high] (dataset foreground 0.5/99.5 percentiles), then
    (x - mean) / std with the dataset foreground mean/std.
    scheme "zscore": per case (x - mean) / std over the nonzero region when `use_nonzero_mask`,
    else over the whole cropped image; voxels outside the nonzero region become 0.
    scheme "none": the image is only cast to float32.
    """

    scheme: Literal["ct", "zscore", "none"]
    clip_low: float | None = None
    clip_high: float | None = None
    mean: float | None = None
    std: float | None = None
    use_nonzero_mask: bool = False


class ResamplingPlan(_Strict):
    """Interpolation used when a case's spacing differs from the target spacing."""

    image_order: Literal[1, 3] = 3  # spline order for images (3 as nnU-Net; 1 is faster)
    label_mode: Literal["onehot_linear", "nearest"] = "onehot_linear"
    anisotropy_threshold: float = 3.0  # max/min spacing above which the coarse axis uses order 0


_Positive = Annotated[int, Field(ge=1)]


class ConfigurationPlan(_Strict):
    """One network configuration ("2d" or "3d"); `strides[0]` is all ones.

    Checked when loaded (plan.json, bundles, preprocess overrides): sizes, strides, kernels, features
    and batch are >= 1, per-axis lists hold spatial_dims values, and there is one stride, kernel and
    feature count per stage.
    """

    spatial_dims: Literal[2, 3]
    patch_size: list[_Positive]
    batch_size: _Positive
    features_per_stage: list[_Positive] = Field(min_length=1)
    strides: list[list[_Positive]]
    kernel_sizes: list[list[_Positive]]
    slice_axis: int | None = Field(default=None, ge=0, le=2)  # 2D only: axis (0, 1, 2) of the preprocessed grid sliced along

    @model_validator(mode="after")
    def _consistent(self) -> "ConfigurationPlan":
        n = self.spatial_dims
        if len(self.patch_size) != n:
            raise ValueError(f"patch_size {self.patch_size} has {len(self.patch_size)} value(s); spatial_dims {n} needs {n}")
        stages = len(self.features_per_stage)
        for name in ("strides", "kernel_sizes"):
            values = getattr(self, name)
            if len(values) != stages:
                raise ValueError(f"{name} has {len(values)} stage(s) but features_per_stage has {stages}; give one per stage")
            for v in values:
                if len(v) != n:
                    raise ValueError(f"{name} entry {v} has {len(v)} value(s); spatial_dims {n} needs {n}")
        return self

    @property
    def total_stride(self) -> list[int]:
        return [int(np.prod([s[a] for s in self.strides])) for a in range(self.spatial_dims)]


class Plan(_Strict):
    """Everything needed to turn a raw case into network input, and back."""

    version: Literal[PLAN_VERSION] = PLAN_VERSION
    dataset_name: str
    channel_names: list[str]
    modalities: list[str]
    labels: dict[int, str]
    target_spacing: list[Annotated[float, Field(gt=0)]] = Field(min_length=3, max_length=3)  # mm, RAS axis order
    normalization: list[ChannelNormalization]
    resampling: ResamplingPlan = ResamplingPlan()
    configurations: dict[str, ConfigurationPlan]
    label_codes: dict[int, LabelCode] = {}  # label value -> DICOM SEG/RTSTRUCT codes (medseg.label_codes)

    @model_validator(mode="after")
    def _one_entry_per_channel(self) -> "Plan":
        n = len(self.channel_names)
        if n == 0 or len(self.modalities) != n or len(self.normalization) != n:
            raise ValueError(
                f"{n} channel_names, {len(self.modalities)} modalities and {len(self.normalization)} normalization "
                "entries; expected one of each per input channel (at least one)"
            )
        return self

    # --- labels: values as in the masks; the network's channel k is the k-th value in sorted order ---

    @field_validator("labels")
    @classmethod
    def _labels_valid(cls, labels: dict[int, str]) -> dict[int, str]:
        check_label_set(labels)
        return dict(sorted(labels.items()))

    @property
    def label_values(self) -> list[int]:
        """Label values in channel order (sorted; 0 first)."""
        return sorted(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def class_names(self) -> list[str]:
        """Label names in channel order."""
        return [self.labels[v] for v in self.label_values]

    @property
    def label_dtype(self) -> type:
        """dtype of label maps written in label values: uint8 if every value is < 256, else uint16."""
        return np.uint8 if max(self.labels) < 256 else np.uint16

    @property
    def value_lookup(self) -> np.ndarray:
        """(256,) channel -> label value (see `value_lookup`)."""
        return value_lookup(self.label_values)

    @property
    def channel_lookup(self) -> np.ndarray:
        """(max(max value, 255) + 1,) int16 label value -> channel; IGNORE_LABEL -> IGNORE_LABEL unless it
        is a declared label; -1 for undeclared values."""
        lut = np.full(max(max(self.labels), IGNORE_LABEL) + 1, -1, dtype=np.int16)
        lut[IGNORE_LABEL] = IGNORE_LABEL
        lut[self.label_values] = np.arange(self.num_classes)
        return lut

    def undeclared_values(self, values) -> list[int]:
        """The values among `values` (any integers) that are neither a label nor IGNORE_LABEL, sorted."""
        return sorted({int(v) for v in values} - set(self.labels) - {IGNORE_LABEL})

    def to_channels(self, labels: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        """A mask in label values (X, Y, Z), any integer-valued dtype -> uint8 channel indices;
        IGNORE_LABEL stays IGNORE_LABEL. Raises InputError naming undeclared or non-integer values.

        values: the distinct values of `labels` when the caller has them already."""
        if labels.size == 0:
            return labels.astype(np.uint8)
        if not np.issubdtype(labels.dtype, np.integer):
            if labels.dtype == bool:
                labels = labels.astype(np.uint8)
            elif not np.all(np.mod(labels, 1) == 0):
                raise InputError("the mask holds non-integer values; give an integer label map")
        values = present_values(labels) if values is None else np.asarray(values)
        extra = self.undeclared_values(values)
        if extra:
            raise InputError(
                f"the mask holds label values {extra[:10]} that the plan does not declare ({self.label_values}); "
                "relabel the mask or declare the labels and rerun `medseg preprocess`"
            )
        if values.tolist() == list(range(len(values))) and self.label_values[: len(values)] == values.tolist() and labels.dtype == np.uint8:
            return labels  # consecutive values: channels are the values
        lut = self.channel_lookup
        out = np.zeros(labels.shape, dtype=np.uint8, order="F" if np.isfortran(labels) else "C")
        for v in values.tolist():  # one pass per value: no int64 copy of a large mask
            if lut[int(v)]:
                out[labels == v] = lut[int(v)]
        return out

    def to_values(self, channels: np.ndarray) -> np.ndarray:
        """Channel indices (integer array) -> label values (`label_dtype`; IGNORE_LABEL kept)."""
        return channels_to_values(channels, self.label_values)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the plan ({exc}); rerun `medseg preprocess` to write it") from None
        if data.get("version") != PLAN_VERSION:
            raise ConfigError(
                f"{path}: plan version {data.get('version')}, expected {PLAN_VERSION}; rerun `medseg preprocess`"
            )
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "plan") -> "Plan":
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{source}: invalid plan {first_validation_problem(exc)} ({exc.error_count()} problem(s))") from None

    def save(self, path: str | os.PathLike) -> Path:
        from medseg.io.atomic import atomic_output

        path = Path(path)
        with atomic_output(path) as tmp:
            tmp.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    def digest(self) -> str:
        """sha256 of the fields that change the preprocessed arrays (not patch/batch sizes)."""
        data = self.model_dump(include={"version", "channel_names", "labels", "target_spacing", "normalization", "resampling"})
        if self.label_values != list(range(self.num_classes)):
            # caches written before the value -> channel map held raw values: invalidate exactly those
            data["label_channels"] = "sorted values"
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# --- planning ----------------------------------------------------------------------------------


class PlannerSettings(_Strict):
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
