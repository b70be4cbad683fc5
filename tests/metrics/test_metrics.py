"""Metrics against hand-computed answers, empty-mask conventions and grid checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medseg.errors import GeometryError, InputError
from medseg.metrics import METRIC_COLUMNS, case_metrics, dice_per_class, summarise
from medseg.metrics.case import array_metrics
from medseg.volume import Volume, affine_from_geometry


def cube(shape=(20, 20, 20), start=(5, 5, 5), size=5, label=1) -> np.ndarray:
    array = np.zeros(shape, np.uint8)
    array[tuple(slice(s, s + size) for s in start)] = label
    return array


def sphere(radius: float, shape=(32, 32, 32)) -> np.ndarray:
    grid = np.indices(shape) - (np.array(shape) // 2)[:, None, None, None]
    return (np.sqrt((grid**2).sum(0)) <= radius).astype(np.uint8)


def test_identical_masks_are_perfect():
    (row,) = array_metrics(cube(), cube(), (1.0, 1.0, 1.0))
    assert row["dice"] == row["iou"] == row["nsd"] == row["boundary_f1"] == 1.0
    assert row["hd95"] == row["assd"] == 0.0
    assert row["volume_diff_ml"] == 0.0


def test_shifted_cubes_overlap_and_anisotropic_hd95():
    # 5^3 cubes shifted by 2 voxels along x: overlap 3*5*5 = 75 of 125 voxels each.
    pred, ref = cube(start=(5, 5, 5)), cube(start=(7, 5, 5))
    (row,) = array_metrics(pred, ref, (3.0, 1.0, 1.0))
    assert row["dice"] == pytest.approx(2 * 75 / 250)
    assert row["iou"] == pytest.approx(75 / 175)
    assert row["precision"] == row["recall"] == pytest.approx(75 / 125)
    # The 25 voxels of pred's x=5 face (25 of 98 surface voxels, > 5%) lie 2 voxels * 3 mm from
    # ref's x=7 face, and no surface voxel is further away.
    assert row["hd95"] == pytest.approx(6.0)
    assert row["pixel_accuracy"] == pytest.approx(1 - 100 / 8000)
    assert row["volume_diff_ml"] == 0.0
    assert row["ref_volume_ml"] == pytest.approx(125 * 3 / 1000)


def test_tolerance_decides_nsd_and_boundary_f1():
    pred, ref = cube(start=(5, 5, 5)), cube(start=(6, 5, 5))
    # Shift 1 voxel of 1 mm: every surface voxel has a reference surface voxel within 1 mm.
    (row,) = array_metrics(pred, ref, (1.0, 1.0, 1.0), tolerance_mm=1.0)
    assert row["nsd"] == row["boundary_f1"] == 1.0
    assert row["hd95"] == pytest.approx(1.0)
    # With 3 mm voxels along x, 26 of pred's 98 surface voxels are out of tolerance: its x=5 face
    # (25 voxels, 3 mm from ref's x=6 face) and the centre of its x=9 face (2 mm from ref's side
    # faces, 3 mm from ref's x=10 face); by symmetry the same count holds from ref to pred.
    (row,) = array_metrics(pred, ref, (3.0, 1.0, 1.0), tolerance_mm=1.0)
    assert row["nsd"] == pytest.approx(1 - 52 / 196)
    assert row["boundary_f1"] == pytest.approx(1 - 26 / 98)


def test_concentric_spheres_are_two_mm_apart():
    (row,) = array_metrics(sphere(8), sphere(10), (1.0, 1.0, 1.0))
    assert abs(row["hd95"] - 2.0) <= 1.0  # one voxel of discretisation
    assert abs(row["assd"] - 2.0) <= 0.5
    assert row["recall"] < row["precision"] == 1.0


def test_empty_mask_conventions():
    empty = np.zeros((10, 10, 10), np.uint8)
    (both,) = array_metrics(empty, empty, (1, 1, 1), labels=[1])
    assert both["dice"] == both["iou"] == both["nsd"] == both["boundary_f1"] == 1.0
    assert both["hd95"] == both["assd"] == 0.0 and both["both_empty"] == 1
    for pred, ref in ((empty, cube((10, 10, 10), (2, 2, 2), 3)), (cube((10, 10, 10), (2, 2, 2), 3), empty)):
        (row,) = array_metrics(pred, ref, (1, 1, 1), labels=[1])
        assert row["dice"] == row["iou"] == row["nsd"] == row["boundary_f1"] == 0.0
        assert row["precision"] == row["recall"] == 0.0
        assert row["hd95"] == row["assd"] == pytest.approx(math.sqrt(300))  # the 10 x 10 x 10 mm image's diagonal
        assert row["both_empty"] == 0
        assert abs(row["volume_diff_ml"]) == pytest.approx(27 / 1000)


def test_ignore_index_is_left_out():
    ref = cube()
    ref[0:3] = 255  # unannotated slab
    pred = cube()
    pred[0:3] = 1  # predicted foreground there must not count as false positive
    (row,) = array_metrics(pred, ref, (1, 1, 1))
    assert row["label"] == 1 and row["dice"] == 1.0 and row["hd95"] == 0.0


def test_multiclass_and_dice_per_class():
    ref = cube(label=1) + cube(start=(12, 12, 12), size=4, label=2)
    pred = cube(start=(6, 5, 5), label=1) + cube(start=(12, 12, 12), size=4, label=2)
    rows = array_metrics(pred, ref, (1, 1, 1))
    assert [r["label"] for r in rows] == [1, 2]
    assert rows[0]["dice"] == pytest.approx(0.8) and rows[1]["dice"] == 1.0
    fast = dice_per_class(pred, ref, [1, 2, 3])
    assert fast == {1: pytest.approx(0.8), 2: 1.0, 3: 1.0}
    assert dice_per_class(torch.from_numpy(pred), torch.from_numpy(ref), [1]) == {1: pytest.approx(0.8)}


def test_different_grids_raise_one_clear_line():
    a = Volume(cube(), affine_from_geometry((1, 1, 1), (0, 0, 0), np.eye(3)))
    b = Volume(cube(), affine_from_geometry((1, 1, 2), (0, 0, 0), np.eye(3)))
    with pytest.raises(GeometryError, match="spacing") as info:
        case_metrics(a, b)
    assert "\n" not in str(info.value)
    rows = case_metrics(a, Volume(cube(), a.affine))
    assert list(rows[0])[: 1 + len(METRIC_COLUMNS)] == ["label", *METRIC_COLUMNS]


def test_probabilities_are_refused():
    with pytest.raises(InputError, match="integer label map"):
        array_metrics(cube() * 0.5, cube(), (1, 1, 1))


def test_summarise_skips_nan_and_counts_it():
    rows = [
        {"label": 1, "dice": 0.5, "iou": 0.25, "hd95": 2.0},
        {"label": 1, "dice": 1.0, "iou": 0.75, "hd95": float("nan")},
        {"label": 2, "dice": 0.0, "iou": 0.0, "hd95": float("nan")},
    ]
    summary = summarise(rows, metrics=("dice", "iou", "hd95"))
    one = summary["per_class"][1]
    assert one["dice"]["mean"] == 0.75 and one["dice"]["std"] == 0.25 and one["dice"]["median"] == 0.75
    assert one["hd95"]["mean"] == 2.0 and one["hd95"]["n_nan"] == 1
    assert math.isnan(summary["per_class"][2]["hd95"]["mean"])
    assert summary["miou"] == pytest.approx((0.5 + 0.0) / 2)
    assert summary["mean"]["hd95"] == 2.0
