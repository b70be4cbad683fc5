"""Overlap metrics from integer label maps: one confusion matrix, then every score from it."""

from __future__ import annotations

from typing import Iterable

import numpy as np


def confusion_matrix(pred: np.ndarray, ref: np.ndarray, num_labels: int, ignore_index: int | None = 255) -> np.ndarray:
    """(num_labels, num_labels) int64 counts, rows = reference label, columns = predicted label.

    pred, ref: integer arrays of the same shape. Voxels where ref == ignore_index are skipped;
    labels >= num_labels in either array are not counted.
    """
    pred = np.asarray(pred).ravel()
    ref = np.asarray(ref).ravel()
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference differ in size: {pred.size} vs {ref.size}")
    keep = (pred < num_labels) & (ref < num_labels)
    if ignore_index is not None and ignore_index < num_labels:
        keep &= ref != ignore_index
    if not keep.all():
        pred, ref = pred[keep], ref[keep]
    # One bincount over ref * K + pred: a single pass, cheap enough for validation every epoch.
    index = ref.astype(np.int64) * num_labels + pred.astype(np.int64)
    return np.bincount(index, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def dice_per_class(pred, ref, labels: Iterable[int], ignore_index: int | None = 255, empty: float = 1.0) -> dict[int, float]:
    """Dice per label from integer maps (X, Y, Z) (numpy or torch); both empty -> `empty` (1.0;
    NaN marks the pair for leaving out of a mean, as training validation does).

    One bincount over the volume, no surfaces: meant for training validation.
    """
    pred, ref = _to_numpy(pred), _to_numpy(ref)
    labels = [int(label) for label in labels]
    num_labels = max(labels + [int(pred.max(initial=0)), int(ref.max(initial=0))]) + 1
    cm = confusion_matrix(pred, ref, num_labels, ignore_index)
    result = {}
    for label in labels:
        tp = cm[label, label]
        fp = cm[:, label].sum() - tp
        fn = cm[label, :].sum() - tp
        result[label] = float(empty) if tp + fp + fn == 0 else float(2 * tp / (2 * tp + fp + fn))
    return result


def overlap_metrics(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """Dice, IoU, precision, recall, pixel accuracy from counts, with the package's empty conventions."""
    both_empty = tp + fp + fn == 0
    if both_empty:
        return {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "pixel_accuracy": 1.0}
    total = tp + fp + fn + tn
    return {
        "dice": float(2 * tp / (2 * tp + fp + fn)),
        "iou": float(tp / (tp + fp + fn)),
        "precision": float(tp / (tp + fp)) if tp + fp else 0.0,
        "recall": float(tp / (tp + fn)) if tp + fn else 0.0,
        "pixel_accuracy": float((tp + tn) / total),
    }


def _to_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor, without importing torch here
        array = array.detach().cpu().numpy()
    return np.asarray(array)
