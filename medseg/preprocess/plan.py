"""The plan schema: how every case is resampled, normalised and cut into patches (`WORKDIR/plan.json`).

`Plan` is a typed, versioned pydantic model (extra fields are refused) with its load/save/digest and
the label value <-> channel maps (`value_lookup`, `channels_to_values`, `Plan.to_channels`). It is
filled from the dataset fingerprint by the planner, `medseg.preprocess.planner.make_plan`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, ValidationError, field_validator, model_validator

from medseg.errors import ConfigError, InputError, first_validation_problem
from medseg.label_codes import LabelCode
from medseg.schema import StrictModel

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


class ChannelNormalization(StrictModel):
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


class ResamplingPlan(StrictModel):
    """Interpolation used when a case's spacing differs from the target spacing."""

    image_order: Literal[1, 3] = 3  # spline order for images (3 as nnU-Net; 1 is faster)
    label_mode: Literal["onehot_linear", "nearest"] = "onehot_linear"
    anisotropy_threshold: float = 3.0  # max/min spacing above which the coarse axis uses order 0


_Positive = Annotated[int, Field(ge=1)]


class ConfigurationPlan(StrictModel):
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


class Plan(StrictModel):
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
    things: list[int] | None = None  # countable label values (instance/panoptic outputs); None: every foreground label
    border_of: dict[int, int] = {}  # border label value -> its thing's value: a border/core model (medseg.instances)
    prompt_channels: int = 0  # > 0: a promptable model (medseg.interactive): image + these prompt inputs; labels {0, 1: object}

    @field_validator("normalization")
    @classmethod
    def _one_entry_per_channel(cls, normalization: list, info) -> list:
        names, modalities = info.data.get("channel_names"), info.data.get("modalities")
        if names is not None and modalities is not None:
            if not names or len(modalities) != len(names) or len(normalization) != len(names):
                raise ValueError(
                    f"{len(names)} channel_names, {len(modalities)} modalities and {len(normalization)} normalization "
                    "entries; expected one of each per input channel (at least one)"
                )
        return normalization

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
    def in_channels(self) -> int:
        """The network's input channels: one per image channel, then a promptable model's prompt channels."""
        return len(self.channel_names) + self.prompt_channels

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
