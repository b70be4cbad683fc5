"""The one inversion of `medseg.preprocess.preprocess_case`: preprocessed grid -> original grid.

Every map is resampled the same way (`_slabs`): each channel linearly onto the cropped original grid
(the extent-preserving grid of `medseg.preprocess.resample`, i.e. scipy's
`zoom(order=1, grid_mode=True, mode="nearest")`, which in-plane is torch's bilinear
`interpolate(align_corners=False)`), uncropped with background = 1 outside the box, reoriented back
to exactly the original shape and affine. It streams over slabs of the last axis:

- `labels_on_original(probs, properties)`: (K, X, Y, Z) probabilities -> label values, decoded
  (argmax) slab by slab, so a 512x512x400 CT with 3 classes needs the uint8 label map plus a slab of
  floats instead of K full-size float32 arrays (4.7 GB for this example). What the predictor uses.
- `probabilities_on_original(probs, properties)`: the same maps kept, (K, *original) float32.
- `channels_on_original(channels, properties)`: an (X, Y, Z) channel map (a cached label.npy, an
  argmax) -> label values, through the one-hot maps of the channels it holds (none is created).
- `invert_to_original(array, properties)`: either of the last two, by the array's shape.

Outputs are Fortran-ordered per channel, as NIfTI stores voxels, so writing them never transposes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medseg.errors import GeometryError, InputError
from medseg.models.heads import argmax0
from medseg.preprocess.case import CaseProperties
from medseg.preprocess.plan import IGNORE_LABEL, present_values, value_lookup
from medseg.volume import Volume


def _axis_weights(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linear interpolation indices/weights along one axis, extent-preserving, edges clamped."""
    if n_in == n_out:
        idx = torch.arange(n_out)
        return idx, idx, torch.zeros(n_out)
    src = (torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5
    src = src.clamp(0, n_in - 1)
    i0 = src.floor().long()
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, (src - i0).float()


def _lerp_axis(x: torch.Tensor, dim: int, i0: torch.Tensor, i1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    a = x.index_select(dim, i0)
    if not torch.any(w):
        return a
    b = x.index_select(dim, i1)
    shape = [1] * x.ndim
    shape[dim] = -1
    return torch.lerp(a, b, w.view(shape))


def labels_on_original(probs: np.ndarray | torch.Tensor, properties, slab: int = 16, label_values: list[int] | None = None,
                       decode=argmax0) -> Volume:
    """(K, X, Y, Z) probabilities on the preprocessed grid -> label Volume on the original grid.

    Channel k becomes label value `label_values[k]` (default `properties.label_values`; the channel
    itself for properties without them); uint8 when every value is < 256, else uint16.
    decode: (K, *s) slab of resampled maps -> (*s) channel indices (the output head's `decode`; argmax).
    """
    props = _properties(properties)
    p = torch.as_tensor(probs).float()
    _check_grid(p.shape[1:], props)
    k = p.shape[0]
    values = label_values if label_values is not None else props.label_values
    if values is None:
        values = list(range(k))
    if len(values) != k:
        raise GeometryError(f"the prediction has {k} channels but there are {len(values)} label values {list(values)[:8]}; "
                            "predict with the plan these properties came from")
    lut = None if list(values) == list(range(k)) and k <= 256 else torch.from_numpy(value_lookup(values).astype(np.int64))
    dtype = np.uint8 if max(values) < 256 else np.uint16
    return _decoded(lambda lo, hi: (p, 0), k, props, slab, decode, lut, dtype)


def probabilities_on_original(probs: np.ndarray | torch.Tensor, properties, slab: int = 16) -> Volume:
    """(K, X, Y, Z) probabilities (or any dense maps) on the preprocessed grid -> float32 (K, *original
    shape) Volume: each channel resampled linearly, background (channel 0) = 1 and others 0 outside
    the crop box. The argmax of its array is exactly `labels_on_original`'s channel map."""
    props = _properties(properties)
    p = torch.as_tensor(probs).float()
    _check_grid(p.shape[1:], props)
    k = p.shape[0]
    out_kzyx = np.zeros((k, *props.ras_shape[::-1]), dtype=np.float32)
    out_kzyx[0] = 1.0  # background outside the crop box
    (x0, x1), (y0, y1), (z0, z1) = props.crop_box
    for start, stop, part in _slabs(lambda lo, hi: (p, 0), k, props, slab):
        out_kzyx[:, z0 + start : z0 + stop, y0:y1, x0:x1] = part.numpy()
    return _on_original(out_kzyx.transpose(0, 3, 2, 1), props)


def channels_on_original(channels: np.ndarray, properties, slab: int = 16) -> Volume:
    """(X, Y, Z) integer channel indices on the preprocessed grid (IGNORE_LABEL kept) -> label values
    (`properties.label_values`; uint8, uint16 when a value is >= 256) of the original shape.

    The one-hot map of each channel present is resampled like probabilities and decoded by argmax
    (first maximum wins), so no channel absent from the input is created; built slab by slab."""
    props = _properties(properties)
    if channels.ndim != 3 or not (np.issubdtype(channels.dtype, np.integer) or channels.dtype == bool):
        raise InputError(f"expected an (X, Y, Z) integer channel map, got shape {channels.shape} of {channels.dtype}; "
                         "pass probabilities as (K, X, Y, Z) to probabilities_on_original")
    _check_grid(channels.shape, props)
    present = present_values(channels).tolist()
    classes = sorted(set(present) | {0})
    values = props.label_values
    if values is not None:
        extra = [c for c in classes if c >= len(values) and c != IGNORE_LABEL]
        if extra:
            raise InputError(f"the label map holds channels {extra[:5]} but the plan has {len(values)} labels; "
                             f"pass channel indices 0..{len(values) - 1}")
    mapped = [c if values is None or c == IGNORE_LABEL else values[c] for c in classes]
    dtype = np.uint8 if max(mapped + list(values or [])) < 256 else np.uint16
    cls = torch.tensor(classes).view(-1, 1, 1, 1)

    def one_hot(lo: int, hi: int) -> tuple[torch.Tensor, int]:
        block = torch.from_numpy(np.ascontiguousarray(channels[..., lo:hi])).long()
        return (block[None] == cls).float(), lo

    lut = torch.tensor(mapped, dtype=torch.int64)  # compact index j -> label value of classes[j]
    return _decoded(one_hot, len(classes), props, slab, argmax0, lut, dtype)


def invert_to_original(array: np.ndarray, properties) -> Volume:
    """(K, X, Y, Z) float maps -> `probabilities_on_original`; (X, Y, Z) integer channel indices ->
    `channels_on_original`. The returned Volume has exactly the original shape and affine."""
    if array.ndim == 4:
        return probabilities_on_original(array, properties)
    if array.ndim == 3:
        if np.issubdtype(array.dtype, np.floating):
            raise InputError("a (X, Y, Z) prediction must hold integer labels; pass probabilities as (K, X, Y, Z)")
        return channels_on_original(array, properties)
    raise InputError(f"expected (K, X, Y, Z) probabilities or (X, Y, Z) labels, got shape {array.shape}")


def _properties(properties) -> CaseProperties:
    return properties if isinstance(properties, CaseProperties) else CaseProperties.model_validate(properties)


def _check_grid(spatial_shape, props: CaseProperties) -> None:
    if tuple(spatial_shape) != tuple(props.resampled_shape):
        raise GeometryError(
            f"prediction of spatial shape {tuple(spatial_shape)} does not match the preprocessed grid "
            f"{tuple(props.resampled_shape)}; predict on the preprocessed image of this case"
        )


def _slabs(block, k: int, props: CaseProperties, slab: int):
    """Yield (start, stop, part): part (K, stop - start, Y', X') float32 is the K maps resampled onto
    z-slices [start, stop) of the cropped original grid (X', Y', Z' = `cropped_shape`, RAS order).

    block(lo, hi) -> (maps, offset): float32 (K, X, Y, n) maps on the preprocessed grid holding at
    least its z-slices [lo, hi), maps[..., 0] being slice `offset` (the whole map and 0, or a slab
    built on demand, such as one-hot masks, and lo)."""
    cropped = [int(s) for s in props.cropped_shape]
    i0, i1, w = _axis_weights(int(props.resampled_shape[2]), cropped[2])
    with torch.inference_mode():
        for start in range(0, cropped[2], slab):
            stop = min(start + slab, cropped[2])
            maps, offset = block(int(i0[start]), int(i1[start:stop].max()) + 1)
            part = _lerp_axis(maps, 3, i0[start:stop] - offset, i1[start:stop] - offset, w[start:stop])  # (K, X, Y, s)
            part = part.permute(0, 3, 2, 1).contiguous()  # (K, s, Y, X), a slab only
            if part.shape[2:] != (cropped[1], cropped[0]):
                part = F.interpolate(part.view(1, -1, *part.shape[2:]), size=(cropped[1], cropped[0]),
                                     mode="bilinear", align_corners=False).view(k, stop - start, cropped[1], cropped[0])
            yield start, stop, part


def _decoded(block, k: int, props: CaseProperties, slab: int, decode, lut: torch.Tensor | None, dtype) -> Volume:
    """Label Volume on the original grid: each resampled slab decoded to channels, mapped by `lut`
    (channel -> label value; None: the channel itself), background (0) outside the crop box."""
    labels = np.zeros(props.ras_shape, dtype=dtype, order="F")
    labels_zyx = labels.T  # the same memory as C-ordered (Z, Y, X): a z-slab is one block
    (x0, x1), (y0, y1), (z0, z1) = props.crop_box
    for start, stop, part in _slabs(block, k, props, slab):
        channels = decode(part)
        labels_zyx[z0 + start : z0 + stop, y0:y1, x0:x1] = (channels if lut is None else lut[channels.long()]).numpy()
    return _on_original(labels, props)


def _on_original(ras: np.ndarray, props: CaseProperties) -> Volume:
    """(..., X, Y, Z) on the uncropped RAS grid -> Volume on exactly the original grid."""
    back = Volume(ras, np.array(props.ras_affine)).reoriented(props.original_orientation)
    original_affine = np.array(props.original_affine)
    if tuple(back.spatial_shape) != tuple(props.original_shape) or not np.allclose(back.affine, original_affine, atol=1e-3):
        raise GeometryError("reorienting back did not reproduce the original grid; the properties are inconsistent")
    return Volume(back.array, original_affine)
