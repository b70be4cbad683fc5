"""Surface distances in mm between two binary masks (X, Y, Z), honouring anisotropic spacing."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of `mask` removed by one erosion (6-connectivity; the grid border counts as outside)."""
    return mask ^ ndimage.binary_erosion(mask)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each predicted surface voxel to the reference surface, and back.

    pred, ref: bool (X, Y, Z), both non-empty; spacing: (3,) mm. Returns (pred->ref, ref->pred).
    Both masks are cropped to their union's bounding box plus one voxel first (exact, and much
    faster than distance transforms over the whole scan).
    """
    union = pred | ref
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in ndimage.find_objects(union.astype(np.uint8))[0])
    # Pad by one background voxel so the grid border behaves like outside the mask.
    pred = np.pad(pred[box], 1)
    ref = np.pad(ref[box], 1)
    pred_surface, ref_surface = _surface(pred), _surface(ref)
    sampling = np.asarray(spacing, dtype=np.float64)
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)
    return to_ref[pred_surface], to_pred[ref_surface]


def distance_penalty(shape, spacing) -> float:
    """The distance (mm) given to a missed or false structure: the diagonal of the image's extent,
    sqrt(sum((shape * spacing)^2)), the largest distance two points of the grid can have (BraTS's
    374 mm is this diagonal for its 240 x 240 x 155 grid of 1 mm voxels)."""
    return float(np.linalg.norm(np.asarray(shape[:3], np.float64) * np.asarray(spacing, np.float64)))


def surface_metrics(pred: np.ndarray, ref: np.ndarray, spacing, tolerance_mm: float = 1.0,
                    penalty_mm: float | None = None) -> dict[str, float]:
    """HD95, ASSD (mm), NSD and boundary F1 at `tolerance_mm` for bool masks (X, Y, Z).

    HD95 = max of the two directed 95th percentiles; ASSD = mean over both directions' distances;
    NSD = surface voxels within tolerance (both directions) / all surface voxels;
    boundary F1 = harmonic mean of the fractions of predicted and reference surface within tolerance.
    Empty masks (conventions in `medseg.metrics`): both empty, HD95 = ASSD = 0 and NSD = F1 = 1;
    one empty, HD95 = ASSD = `penalty_mm` (default `distance_penalty`, the image diagonal) and 0.
    """
    pred_any, ref_any = bool(pred.any()), bool(ref.any())
    if not (pred_any and ref_any):
        if pred_any == ref_any:
            return {"hd95": 0.0, "assd": 0.0, "nsd": 1.0, "boundary_f1": 1.0}
        penalty = distance_penalty(pred.shape, spacing) if penalty_mm is None else float(penalty_mm)
        return {"hd95": penalty, "assd": penalty, "nsd": 0.0, "boundary_f1": 0.0}
    d_pred, d_ref = surface_distances(pred, ref, spacing)
    hd95 = max(np.percentile(d_pred, 95), np.percentile(d_ref, 95))
    assd = (d_pred.sum() + d_ref.sum()) / (d_pred.size + d_ref.size)
    close_pred = np.count_nonzero(d_pred <= tolerance_mm)
    close_ref = np.count_nonzero(d_ref <= tolerance_mm)
    nsd = (close_pred + close_ref) / (d_pred.size + d_ref.size)
    b_precision, b_recall = close_pred / d_pred.size, close_ref / d_ref.size
    bf1 = 0.0 if b_precision + b_recall == 0 else 2 * b_precision * b_recall / (b_precision + b_recall)
    return {"hd95": float(hd95), "assd": float(assd), "nsd": float(nsd), "boundary_f1": float(bf1)}
