"""All metrics for one case (rows per label) and their aggregates over cases."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from medseg.errors import GeometryError, InputError
from medseg.metrics.overlap import confusion_matrix, overlap_metrics
from medseg.metrics.surface import surface_metrics
from medseg.volume import Volume

METRIC_COLUMNS = ["dice", "iou", "precision", "recall", "hd95", "assd", "nsd", "boundary_f1", "volume_diff_ml"]
"""The metric columns of a report, in order; extra columns follow them."""
EXTRA_COLUMNS = ["pixel_accuracy", "pred_volume_ml", "ref_volume_ml"]
FLAG_COLUMNS = ["both_empty"]
"""1 where the label is absent from both prediction and reference: such rows are left out of the
means (as nnU-Net does) unless `summarise(..., count_empty=True)`."""


def case_metrics(
    pred: Volume,
    ref: Volume,
    labels: Iterable[int] | None = None,
    tolerance_mm: float = 1.0,
    ignore_index: int | None = 255,
    penalty_mm: float | None = None,
) -> list[dict]:
    """One dict per label with METRIC_COLUMNS + EXTRA_COLUMNS + FLAG_COLUMNS for label maps
    (X, Y, Z) on one grid.

    labels: default every non-zero label present in either map (except ignore_index).
    penalty_mm: HD95/ASSD of a missed or false structure (default: the image diagonal in mm).
    Raises GeometryError when the two volumes are not on the same voxel grid.
    """
    problems = pred.geometry_differences(ref)
    if problems:
        raise GeometryError(
            f"prediction and reference are on different grids ({'; '.join(problems)}); "
            "resample the prediction onto the reference grid first"
        )
    if pred.array.ndim != 3 or ref.array.ndim != 3:
        raise InputError(
            f"expected label maps (X, Y, Z), got arrays of shape {pred.array.shape} and {ref.array.shape}; "
            "pass integer masks, not probabilities"
        )
    return array_metrics(pred.array, ref.array, ref.spacing, labels, tolerance_mm, ignore_index, penalty_mm)


def array_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    labels: Iterable[int] | None = None,
    tolerance_mm: float = 1.0,
    ignore_index: int | None = 255,
    penalty_mm: float | None = None,
) -> list[dict]:
    """Like `case_metrics` for bare integer arrays (X, Y, Z) with voxel spacing (3,) in mm."""
    pred, ref = _as_labels(pred, "prediction"), _as_labels(ref, "reference")
    if pred.shape != ref.shape:
        raise GeometryError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if labels is None:
        present = np.union1d(np.unique(pred), np.unique(ref))
        labels = [int(v) for v in present if v != 0 and v != ignore_index]
    labels = [int(v) for v in labels]
    num_labels = int(max([pred.max(initial=0), ref.max(initial=0), *labels])) + 1
    index = {v: v for v in labels}  # label value -> row/column of the confusion matrix
    if num_labels > 1024:  # large values (uint16 label maps): count over the values present only
        values = np.union1d(np.union1d(np.unique(pred), np.unique(ref)), labels)
        index = {int(v): i for i, v in enumerate(values)}
        ignore = index.get(ignore_index) if ignore_index is not None else None
        cm = confusion_matrix(np.searchsorted(values, pred), np.searchsorted(values, ref), len(values), ignore)
    else:
        cm = confusion_matrix(pred, ref, num_labels, ignore_index)
    total = int(cm.sum())
    voxel_ml = float(np.prod(spacing)) / 1000.0
    valid = None if ignore_index is None else ref != ignore_index
    rows = []
    for label in labels:
        i = index[label]
        tp = int(cm[i, i])
        fp = int(cm[:, i].sum()) - tp
        fn = int(cm[i, :].sum()) - tp
        row = overlap_metrics(tp, fp, fn, total - tp - fp - fn)
        pred_mask = pred == label
        if valid is not None:
            pred_mask &= valid
        row.update(surface_metrics(pred_mask, ref == label, spacing, tolerance_mm, penalty_mm))
        row["pred_volume_ml"] = (tp + fp) * voxel_ml
        row["ref_volume_ml"] = (tp + fn) * voxel_ml
        row["volume_diff_ml"] = row["pred_volume_ml"] - row["ref_volume_ml"]
        row["both_empty"] = int(tp + fp + fn == 0)
        rows.append({"label": label, **{k: row[k] for k in METRIC_COLUMNS + EXTRA_COLUMNS + FLAG_COLUMNS}})
    return rows


def summarise(rows: Sequence[dict], metrics: Sequence[str] = tuple(METRIC_COLUMNS + EXTRA_COLUMNS),
              count_empty: bool = False) -> dict:
    """Aggregates over cases: {"per_class": {label: {metric: {mean, std, median, n, n_nan, n_empty}}},
    "mean": {metric: mean over classes of the class means}, "miou": float}.

    Rows with `both_empty` (label absent from prediction and reference) are left out and counted in
    n_empty, unless count_empty (then they score Dice 1, HD95 0). n counts the rows averaged. NaN
    values (only from rows made elsewhere: these metrics give none) are skipped, counted in n_nan.
    A class with no row left has mean NaN and is left out of the class means.
    """
    per_class: dict[int, dict] = {}
    for label in sorted({int(r["label"]) for r in rows}):
        stats = {}
        mine = [r for r in rows if int(r["label"]) == label]
        kept = [r for r in mine if count_empty or not r.get("both_empty", 0)]
        for metric in metrics:
            values = np.array([r[metric] for r in kept], dtype=np.float64)
            finite = values[~np.isnan(values)]
            stats[metric] = {
                "mean": _nan_if_empty(finite, np.mean),
                "std": _nan_if_empty(finite, np.std),
                "median": _nan_if_empty(finite, np.median),
                "n": int(finite.size),
                "n_nan": int(values.size - finite.size),
                "n_empty": len(mine) - len(kept),
            }
        per_class[label] = stats
    means = {}
    for metric in metrics:
        class_means = [s[metric]["mean"] for s in per_class.values() if not math.isnan(s[metric]["mean"])]
        means[metric] = float(np.mean(class_means)) if class_means else float("nan")
    return {"per_class": per_class, "mean": means, "miou": means.get("iou", float("nan"))}


def _nan_if_empty(values: np.ndarray, fn) -> float:
    return float(fn(values)) if values.size else float("nan")


def _as_labels(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise InputError(f"the {what} holds non-integer values; expected an integer label map, not probabilities")
        array = rounded
    if array.size and array.min() < 0:
        raise InputError(f"the {what} holds negative labels; expected labels 0, 1, 2, ...")
    return array.astype(np.int64, copy=False)
