"""One case onto the plan's grid: `preprocess_case` (its inverse is `medseg.inference.invert`).

Forward: stack channels -> reorient to RAS (exact) -> crop to the nonzero box of all channels ->
normalise -> resample to the plan's target spacing. `CaseProperties` records every step so
`medseg.inference.invert` can map predictions back onto exactly the original grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict

from medseg.errors import GeometryError, InputError
from medseg.preprocess.normalize import normalize
from medseg.preprocess.plan import PLAN_VERSION, Plan, present_values
from medseg.preprocess.resample import coarse_axis_of, resample_image, resample_label, resampled_affine
from medseg.volume import Volume, orientation_code


class CaseProperties(BaseModel):
    """What the inversion (`medseg.inference.invert`) needs (JSON-serialisable). Shapes (X, Y, Z); affines 4x4 RAS mm."""

    model_config = ConfigDict(extra="forbid")

    plan_version: int = PLAN_VERSION
    original_shape: list[int]
    original_affine: list[list[float]]
    original_orientation: str
    ras_shape: list[int]
    ras_affine: list[list[float]]
    crop_box: list[list[int]]  # [[start, stop]] per RAS axis
    cropped_shape: list[int]
    resampled_shape: list[int]
    resampled_affine: list[list[float]]
    original_spacing: list[float]  # mm, RAS axis order
    spacing: list[float]  # mm of the preprocessed grid, RAS axis order
    classes_present: list[int] = []  # label values in this case (empty without a label)
    # the plan's label values: the cached label.npy and predictions hold channel k = label_values[k];
    # None in caches written before the map existed, whose channels were the values
    label_values: list[int] | None = None


@dataclass
class PreprocessedCase:
    """image: float32 (C, X, Y, Z); label: uint8 (X, Y, Z) channel indices (IGNORE_LABEL kept) or
    None; both on the preprocessed grid."""

    image: np.ndarray
    label: np.ndarray | None
    properties: CaseProperties


def stack_channels(images: list[Volume]) -> Volume:
    """Channels of one case (each (X, Y, Z) or (C, X, Y, Z), same grid) -> one (C, X, Y, Z) Volume."""
    if not images:
        raise InputError("a case needs at least one image; none was given")
    first = images[0]
    arrays = []
    for i, vol in enumerate(images):
        diff = first.geometry_differences(vol)
        if diff:
            raise GeometryError(f"channel {i} does not share channel 0's grid ({'; '.join(diff)}); resample it onto channel 0 first")
        arrays.append(vol.array[None] if vol.array.ndim == 3 else vol.array)
    array = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
    return Volume(array, first.affine, first.meta)


def nonzero_box(image: np.ndarray) -> list[list[int]]:
    """[[start, stop]] per spatial axis of the voxels nonzero in any channel of (C, X, Y, Z)."""
    mask = np.any(image != 0, axis=0)
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append([int(hits[0]), int(hits[-1]) + 1] if hits.size else [0, int(mask.shape[axis])])
    return box


def target_shape(shape, spacing, target_spacing) -> list[int]:
    return [max(1, int(round(s * sp / t))) for s, sp, t in zip(shape, spacing, target_spacing)]


def preprocess_case(images: list[Volume], plan: Plan, label: Volume | None = None) -> PreprocessedCase:
    """Raw channel volumes (+ optional label in label values, same grid) -> arrays on the plan's grid;
    the label becomes channel indices (`Plan.to_channels`)."""
    image = stack_channels(images)
    if image.num_channels != len(plan.channel_names):
        raise InputError(
            f"the case has {image.num_channels} channel(s), the plan expects {len(plan.channel_names)} "
            f"({', '.join(plan.channel_names)}); give one image per channel"
        )
    ras = image.reoriented("RAS")
    ras_label = label.reoriented("RAS") if label is not None else None
    if ras_label is not None:  # compared in RAS: a label may store the same grid in another voxel order
        diff = ras.geometry_differences(ras_label)
        if diff:
            raise GeometryError(f"the label's grid differs from the image's ({'; '.join(diff)}); resample the label onto the image")

    box = nonzero_box(ras.array)
    sl = tuple(slice(a, b) for a, b in box)
    cropped = ras.array[(slice(None),) + sl]
    nonzero = np.any(cropped != 0, axis=0) if any(n.use_nonzero_mask for n in plan.normalization) else None
    spacing = ras.spacing
    new_shape = target_shape(cropped.shape[1:], spacing, plan.target_spacing)
    coarse = coarse_axis_of(spacing, plan.resampling.anisotropy_threshold)
    if coarse is None:
        coarse = coarse_axis_of(plan.target_spacing, plan.resampling.anisotropy_threshold)

    normalized = normalize(cropped, plan.normalization, nonzero)
    out_image = resample_image(normalized, new_shape, plan.resampling.image_order, coarse)

    out_label = None
    classes: list[int] = []
    if ras_label is not None:
        lab = ras_label.array[sl]
        values = present_values(lab)
        classes = [int(c) for c in values]
        lab = plan.to_channels(lab, values)  # raises naming values the plan does not declare
        out_label = resample_label(lab, new_shape, plan.resampling.label_mode, coarse)

    cropped_affine = ras.affine.copy()
    cropped_affine[:3, 3] = ras.affine[:3, :3] @ np.array([b[0] for b in box], dtype=float) + ras.affine[:3, 3]
    props = CaseProperties(
        original_shape=list(image.spatial_shape),
        original_affine=image.affine.tolist(),
        original_orientation=orientation_code(image.affine),
        ras_shape=list(ras.spatial_shape),
        ras_affine=ras.affine.tolist(),
        crop_box=box,
        cropped_shape=[int(s) for s in cropped.shape[1:]],
        resampled_shape=[int(s) for s in new_shape],
        resampled_affine=resampled_affine(cropped_affine, cropped.shape[1:], new_shape).tolist(),
        original_spacing=[float(s) for s in spacing],
        spacing=[float(s) for s in plan.target_spacing],
        classes_present=classes,
        label_values=plan.label_values,
    )
    return PreprocessedCase(np.ascontiguousarray(out_image, dtype=np.float32), out_label, props)


def check_cached_labels(workdir, case_ids: list[str], plan: Plan) -> None:
    """Before training: every cached case's label.npy must be in this plan's channels.

    Reads only properties.json. Raises InputError naming the first case cached with other label
    values, or (caches from before the value -> channel map) holding a value that is not a channel.
    """
    from medseg.preprocess.cache import load_properties

    for cid in case_ids:
        props = load_properties(workdir, cid)
        if props.label_values is not None:
            if props.label_values != plan.label_values:
                raise InputError(
                    f"case {cid}: cached with label values {props.label_values} but the plan has {plan.label_values}; "
                    f"rerun `medseg preprocess` into {workdir}"
                )
            continue
        legacy = [v for v in props.classes_present if v != 255 and (v >= plan.num_classes or plan.label_values[v] != v)]
        if legacy:
            raise InputError(
                f"case {cid}: its cached label holds values {legacy[:5]} that are not channels of the plan's labels "
                f"{plan.label_values} (a cache from an older medseg); rerun `medseg preprocess` into {workdir}"
            )
