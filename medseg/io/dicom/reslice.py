"""Masks made on the regular grid of a resampled irregular series, back onto its own slices.

A gantry-tilted or gapped series is read onto a regular grid (`load_dicom_series(...,
resample_irregular=True)`); a DICOM SEG or RTSTRUCT must instead reference the acquisition's real
slices. `to_source_slices` resamples the mask (nearest neighbour) onto each source slice, giving a
Volume on the series' acquisition grid (`geometry.source_grid`: one k per source slice), which the
SEG/RTSTRUCT writers accept (the SEG places one frame per source slice by its header; the
RTSTRUCT draws each slice's contours through that slice's position, `SourceGrid.positions`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medseg.io.dicom.geometry import (
    acquisition_affine,
    affine_lps,
    dedupe,
    irregularities,
    regular_targets,
    sort_frames,
)
from medseg.io.dicom.pixels import frames_of
from medseg.volume import LPS_TO_RAS, Volume


def to_source_slices(mask: Volume, datasets: list[Any]) -> Volume:
    """`mask` on the source series' own slices.

    mask: (X, Y, Z) labels. When the series (its single-frame headers `datasets`) is irregular and
    `mask` lies on the regular grid `load_dicom_series(resample_irregular=True)` gives, returns an
    (X, Y, K) Volume, K = the number of source slices, on the acquisition grid: slice k is the
    source slice k (sorted along the normal), each of its pixels the label of the nearest voxel of
    `mask` (0 outside). Otherwise `mask` itself (the writers then check it as it is).
    """
    if mask.array.ndim != 3 or not datasets or any("PerFrameFunctionalGroupsSequence" in ds for ds in datasets):
        return mask
    frames = dedupe([fr for ds in datasets for fr in frames_of(Path(str(getattr(ds, "filename", None) or "source")), ds)])
    frames, positions, d, normal = sort_frames(frames, Path("the source series"))
    if not irregularities(positions, d, normal):
        return mask
    targets, spacing = regular_targets(d)
    regular = Volume(np.broadcast_to(np.zeros((), np.uint8), (*mask.array.shape[:2], len(targets))),
                     LPS_TO_RAS @ affine_lps(frames[0], positions[0], normal, spacing))
    if mask.geometry_differences(regular, atol_mm=1e-3, atol_dir=1e-4):
        return mask
    labels = np.asarray(mask.array)
    to_voxel = np.linalg.inv(LPS_TO_RAS @ regular.affine)
    out = np.zeros((*labels.shape[:2], len(frames)), labels.dtype)
    nx, ny = labels.shape[:2]
    for k, position in enumerate(positions):
        # the in-plane axes are shared: source pixel (i, j) of slice k is regular voxel (i + di, j + dj, kk)
        di, dj, kk = np.rint((to_voxel @ [*position, 1.0])[:3]).astype(int)
        if not 0 <= kk < labels.shape[2]:
            continue
        src_i, dst_i = slice(max(di, 0), min(nx + di, nx)), slice(max(-di, 0), min(nx - di, nx))
        src_j, dst_j = slice(max(dj, 0), min(ny + dj, ny)), slice(max(-dj, 0), min(ny - dj, ny))
        out[dst_i, dst_j, k] = labels[src_i, src_j, kk]
    return Volume(out, LPS_TO_RAS @ acquisition_affine(frames[0], positions), mask.meta)

