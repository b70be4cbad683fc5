"""Probabilities on the preprocessed grid -> labels on the original grid, without full-size floats.

`labels_on_original(probs, properties)` gives the same labels as
`argmax(invert_to_original(probs, properties).array)`: each class is resampled linearly onto the
cropped original grid (the extent-preserving grid of `medseg.preprocess.resample`, i.e. scipy's
`zoom(order=1, grid_mode=True, mode="nearest")`, which in-plane is torch's bilinear
`interpolate(align_corners=False)`), uncropped with background = 1 outside the box, argmax,
reoriented back. It streams over slabs of the last axis, so a 512x512x400 CT with 3 classes needs
the uint8 label map plus a slab of floats, instead of K full-size float32 arrays (4.7 GB for this
example). The label map is Fortran-ordered, as NIfTI stores voxels, so writing it never transposes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medseg.errors import GeometryError
from medseg.models.heads import argmax0
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
    from medseg.preprocess.case import CaseProperties
    from medseg.preprocess.plan import value_lookup

    props = properties if isinstance(properties, CaseProperties) else CaseProperties.model_validate(properties)
    p = torch.as_tensor(probs).float()
    if tuple(p.shape[1:]) != tuple(props.resampled_shape):
        raise GeometryError(
            f"prediction of spatial shape {tuple(p.shape[1:])} does not match the preprocessed grid "
            f"{tuple(props.resampled_shape)}; predict on the preprocessed image of this case"
        )
    k = p.shape[0]
    values = label_values if label_values is not None else props.label_values
    if values is None:
        values = list(range(k))
    if len(values) != k:
        raise GeometryError(f"the prediction has {k} channels but there are {len(values)} label values {list(values)[:8]}; "
                            "predict with the plan these properties came from")
    lut = None if list(values) == list(range(k)) and k <= 256 else torch.from_numpy(value_lookup(values).astype(np.int64))
    dtype = np.uint8 if max(values) < 256 else np.uint16
    cropped = [int(s) for s in props.cropped_shape]
    wz = _axis_weights(p.shape[3], cropped[2])
    labels = np.zeros(props.ras_shape, dtype=dtype, order="F")  # background outside the crop box
    labels_zyx = labels.T  # the same memory as C-ordered (Z, Y, X): a z-slab is one block
    (x0, x1), (y0, y1), (z0, z1) = props.crop_box
    with torch.inference_mode():
        for start in range(0, cropped[2], slab):
            stop = min(start + slab, cropped[2])
            part = _lerp_axis(p, 3, wz[0][start:stop], wz[1][start:stop], wz[2][start:stop])  # (K, X', Y', s)
            part = part.permute(0, 3, 2, 1).contiguous()  # (K, s, Y', X'), a slab only
            if part.shape[2:] != (cropped[1], cropped[0]):
                part = F.interpolate(part.view(1, -1, *part.shape[2:]), size=(cropped[1], cropped[0]),
                                     mode="bilinear", align_corners=False).view(k, stop - start, cropped[1], cropped[0])
            channels = decode(part)
            labels_zyx[z0 + start : z0 + stop, y0:y1, x0:x1] = (channels if lut is None else lut[channels.long()]).numpy()
    back = Volume(labels, np.array(props.ras_affine)).reoriented(props.original_orientation)
    original_affine = np.array(props.original_affine)
    if tuple(back.spatial_shape) != tuple(props.original_shape) or not np.allclose(back.affine, original_affine, atol=1e-3):
        raise GeometryError("reorienting back did not reproduce the original grid; the properties are inconsistent")
    return Volume(back.array, original_affine)
