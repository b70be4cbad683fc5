"""Object-level scores: instances matched by IoU, panoptic quality, lesion-wise Dice and HD95,
detection precision and recall, false-positive and false-negative volumes, and the published
protocols of BraTS 2023 (lesion-wise) and autoPET (FP/FN volumes).

Instance maps are integer arrays (X, Y, Z): 0 = background, each object one id (any positive
integer, not necessarily consecutive). Spacing is (3,) mm; volumes are reported in ml.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from medseg.metrics.surface import surface_metrics

CONNECTIVITY = {6: 1, 18: 2, 26: 3}  # neighbourhood -> scipy's generate_binary_structure rank
MATCHING = ("threshold", "hungarian")


def connected_instances(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Connected components of a bool mask (X, Y, Z): (ids int32, 1..n), n."""
    if connectivity not in CONNECTIVITY:
        raise ValueError(f"connectivity {connectivity} is invalid; use 6, 18 or 26")
    structure = ndimage.generate_binary_structure(mask.ndim, min(CONNECTIVITY[connectivity], mask.ndim))
    ids, n = ndimage.label(np.asarray(mask, bool), structure=structure)
    return ids.astype(np.int32), int(n)


def instances_from_labels(labels: np.ndarray, classes, connectivity: int = 26) -> tuple[np.ndarray, dict[int, int]]:
    """Instances of the "thing" classes of a label map, by connected components per class:
    (ids (X, Y, Z) int32, {instance id: class value}). Ids run over classes in the given order."""
    ids = np.zeros(labels.shape, np.int32)
    to_class: dict[int, int] = {}
    for value in classes:
        components, n = connected_instances(labels == value, connectivity)
        if n:
            offset = len(to_class)
            ids[components > 0] = components[components > 0] + offset
            to_class.update({offset + k: int(value) for k in range(1, n + 1)})
    return ids, to_class


def _dense(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids renumbered 1..n (0 stays 0) and the original id of each new one (index 0 unused)."""
    values, dense = np.unique(np.asarray(ids).ravel(), return_inverse=True)
    if values.size == 0 or values[0] != 0:
        values = np.concatenate([[0], values])
        dense = dense + 1
    return dense.reshape(ids.shape), values


def overlap_table(pred_dense: np.ndarray, ref_dense: np.ndarray, n_pred: int, n_ref: int) -> np.ndarray:
    """Voxel counts (n_ref + 1, n_pred + 1) of every (reference id, predicted id) pair, row/column 0 = background."""
    flat = ref_dense.ravel().astype(np.int64) * (n_pred + 1) + pred_dense.ravel()
    return np.bincount(flat, minlength=(n_ref + 1) * (n_pred + 1)).reshape(n_ref + 1, n_pred + 1)


def iou_matrix(table: np.ndarray) -> np.ndarray:
    """IoU (n_ref, n_pred) of every object pair from an `overlap_table`."""
    inter = table[1:, 1:].astype(np.float64)
    ref_size = table[1:, :].sum(1, keepdims=True)
    pred_size = table[:, 1:].sum(0, keepdims=True)
    union = ref_size + pred_size - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match(iou: np.ndarray, threshold: float = 0.5, method: str = "threshold") -> list[tuple[int, int]]:
    """One-to-one (reference index, predicted index) pairs, 0-based, with IoU > threshold.

    "threshold": pairs in decreasing IoU, each object used once (for threshold >= 0.5 every pair
    above it is unique anyway, as in panoptic quality); "hungarian": the assignment maximising total
    IoU (scipy's linear_sum_assignment), then pairs at or below the threshold dropped.
    """
    if method not in MATCHING:
        raise ValueError(f"matching {method!r} is unknown; use one of {', '.join(MATCHING)}")
    if iou.size == 0:
        return []
    if method == "hungarian":
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(-iou)
        return [(int(r), int(c)) for r, c in zip(rows, cols) if iou[r, c] > threshold]
    pairs, used_ref, used_pred = [], set(), set()
    for r, c in zip(*np.unravel_index(np.argsort(-iou, axis=None, kind="stable"), iou.shape)):
        if iou[r, c] <= threshold:
            break
        if r not in used_ref and c not in used_pred:
            pairs.append((int(r), int(c)))
            used_ref.add(r)
            used_pred.add(c)
    return pairs


@dataclass
class InstanceScores:
    """Scores of one case (or one class of it). NaN where undefined (no object in either map)."""

    n_ref: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    rq: float  # recognition quality: F1 of detection = tp / (tp + fp/2 + fn/2)
    sq: float  # segmentation quality: mean IoU of matched pairs (0 when none matched)
    pq: float  # panoptic quality = rq * sq
    precision: float
    recall: float
    lesion_dice: float  # sum of matched pairs' Dice / (tp + fp + fn): misses and false objects count 0
    lesion_hd95: float  # mean HD95 over the same objects, misses and false objects at the penalty (mm)
    fp_volume_ml: float  # volume of unmatched predicted objects
    fn_volume_ml: float  # volume of unmatched reference objects

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def instance_scores(pred_ids: np.ndarray, ref_ids: np.ndarray, spacing, *, threshold: float = 0.5,
                    method: str = "threshold", penalty_mm: float | None = None) -> InstanceScores:
    """Match the objects of two instance maps (X, Y, Z) by IoU and score them.

    penalty_mm: the HD95 of a missed or false object (default: the image diagonal, as
    `medseg.metrics.surface.distance_penalty`).
    """
    if pred_ids.shape != ref_ids.shape:
        raise ValueError(f"prediction {pred_ids.shape} and reference {ref_ids.shape} differ in shape")
    pred_dense, pred_values = _dense(pred_ids)
    ref_dense, ref_values = _dense(ref_ids)
    n_pred, n_ref = len(pred_values) - 1, len(ref_values) - 1
    table = overlap_table(pred_dense, ref_dense, n_pred, n_ref)
    iou = iou_matrix(table)
    pairs = match(iou, threshold, method)
    tp, fp, fn = len(pairs), n_pred - len(pairs), n_ref - len(pairs)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    matched_ref = {r for r, _ in pairs}
    matched_pred = {c for _, c in pairs}
    ref_sizes, pred_sizes = table[1:, :].sum(1), table[:, 1:].sum(0)
    fn_volume = sum(int(ref_sizes[r]) for r in range(n_ref) if r not in matched_ref) * voxel_ml
    fp_volume = sum(int(pred_sizes[c]) for c in range(n_pred) if c not in matched_pred) * voxel_ml

    nan = float("nan")
    if n_ref == 0 and n_pred == 0:
        return InstanceScores(0, 0, 0, 0, 0, nan, nan, nan, nan, nan, nan, nan, 0.0, 0.0)
    rq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(np.mean([iou[r, c] for r, c in pairs])) if pairs else 0.0
    dice_sum, hd_sum = 0.0, 0.0
    for r, c in pairs:
        inter = table[r + 1, c + 1]
        dice_sum += 2.0 * inter / (ref_sizes[r] + pred_sizes[c])
        hd_sum += _pair_hd95(pred_dense == c + 1, ref_dense == r + 1, spacing, penalty_mm)
    penalty = _penalty(ref_ids.shape, spacing, penalty_mm)
    objects = tp + fp + fn
    return InstanceScores(
        n_ref=n_ref, n_pred=n_pred, tp=tp, fp=fp, fn=fn, rq=float(rq), sq=sq, pq=float(rq * sq),
        precision=tp / n_pred if n_pred else nan, recall=tp / n_ref if n_ref else nan,
        lesion_dice=dice_sum / objects, lesion_hd95=(hd_sum + (fp + fn) * penalty) / objects,
        fp_volume_ml=fp_volume, fn_volume_ml=fn_volume,
    )


def _penalty(shape, spacing, penalty_mm: float | None) -> float:
    from medseg.metrics.surface import distance_penalty

    return distance_penalty(shape, spacing) if penalty_mm is None else float(penalty_mm)


def _pair_hd95(pred: np.ndarray, ref: np.ndarray, spacing, penalty_mm: float | None) -> float:
    return surface_metrics(pred, ref, spacing, penalty_mm=penalty_mm)["hd95"]


def scores_per_class(pred_ids: np.ndarray, pred_classes: dict[int, int], ref_ids: np.ndarray,
                     ref_classes: dict[int, int], classes, spacing, **options) -> dict[int, InstanceScores]:
    """`instance_scores` per thing class: objects are matched only within their class."""
    out = {}
    for value in classes:
        pred = np.where(np.isin(pred_ids, [i for i, c in pred_classes.items() if c == value]), pred_ids, 0)
        ref = np.where(np.isin(ref_ids, [i for i, c in ref_classes.items() if c == value]), ref_ids, 0)
        out[int(value)] = instance_scores(pred, ref, spacing, **options)
    return out


# --- Published challenge protocols -------------------------------------------------------------

BRATS2023_PENALTY_MM = 374.0  # HD95 of a missed or false lesion (the 240 x 240 x 155 mm diagonal)


def brats2023_lesion_scores(pred: np.ndarray, ref: np.ndarray, spacing, *, dilation: int = 3,
                            min_volume_mm3: float = 50.0) -> dict[str, float]:
    """BraTS 2023 lesion-wise Dice and HD95 of one region (bool masks (X, Y, Z)).

    The challenge's rules (BraTS-GLI/SSA/PED: dilation 3, threshold 50 mm^3; MEN: 1, 50; MET: 1, 2):
    components with 26-connectivity; reference components whose dilations (3x3x3 cross-and-edge
    structure, `dilation` iterations) touch are one lesion; a predicted component is a hit of
    every reference lesion whose dilation it touches, and a false positive otherwise; each lesion's
    Dice and HD95 are against the union of its hits (a miss: Dice 0, HD95 374 mm); lesions of at
    most `min_volume_mm3` are left out; lesion-wise Dice = sum of lesion Dice / (lesions + false
    positives), HD95 likewise with 374 mm per false positive; with neither lesions nor false
    positives, Dice 1 and HD95 0.
    """
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    structure = ndimage.generate_binary_structure(3, 2)
    voxel_mm3 = float(np.prod(spacing))
    ref_cc, _ = connected_instances(ref, 26)
    pred_cc, _ = connected_instances(pred, 26)
    grown, n_grown = connected_instances(ndimage.binary_dilation(ref, structure, iterations=dilation) if dilation else ref, 26)
    lesions = np.where(ref_cc > 0, grown, 0)  # reference voxels grouped by their dilated component

    hits: set[int] = set()
    dice_sum, hd_sum, kept, tp, fn = 0.0, 0.0, 0, 0, 0
    for lesion in range(1, n_grown + 1):
        mask = lesions == lesion
        if not mask.any():
            continue
        reach = ndimage.binary_dilation(mask, structure, iterations=dilation) if dilation else mask
        touching = np.unique(pred_cc[reach & (pred_cc > 0)])
        hits.update(int(t) for t in touching)
        matched = np.isin(pred_cc, touching) if touching.size else np.zeros_like(mask)
        if mask.sum() * voxel_mm3 <= min_volume_mm3:
            continue
        kept += 1
        if touching.size:
            tp += 1
            dice_sum += 2.0 * (mask & matched).sum() / (mask.sum() + matched.sum())
            hd_sum += surface_metrics(matched, mask, spacing, penalty_mm=BRATS2023_PENALTY_MM)["hd95"]
        else:
            fn += 1
            hd_sum += BRATS2023_PENALTY_MM
    fp = len(set(np.unique(pred_cc[pred_cc > 0]).tolist()) - hits)
    objects = kept + fp
    return {
        "lesion_dice": dice_sum / objects if objects else 1.0,
        "lesion_hd95": (hd_sum + fp * BRATS2023_PENALTY_MM) / objects if objects else 0.0,
        "tp": tp, "fp": fp, "fn": fn,
    }


def autopet_scores(pred: np.ndarray, ref: np.ndarray, spacing) -> dict[str, float]:
    """autoPET's case metrics (bool masks (X, Y, Z)): Dice of the whole foreground (NaN without
    reference lesions, where the challenge does not score it), the volume (ml) of predicted
    components that touch no reference voxel, and of reference components that no prediction
    touches; components with 18-connectivity, as the challenge's evaluation script."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    voxel_ml = float(np.prod(spacing)) / 1000.0

    def untouched_volume(mask: np.ndarray, other: np.ndarray) -> float:
        ids, n = connected_instances(mask, 18)
        if not n:
            return 0.0
        touched = np.unique(ids[other & (ids > 0)])
        sizes = np.bincount(ids.ravel(), minlength=n + 1)
        return float(sizes[1:].sum() - sizes[touched].sum()) * voxel_ml

    dice = 2.0 * (pred & ref).sum() / (pred.sum() + ref.sum()) if ref.any() else float("nan")
    return {"dice": float(dice), "fp_volume_ml": untouched_volume(pred, ref), "fn_volume_ml": untouched_volume(ref, pred)}
