"""evaluate(): case matching, report files and plots, on synthetic volumes and real hippocampus labels."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medseg.errors import GeometryError, InputError
from medseg.evaluation import (
    CSV_COLUMNS,
    evaluate,
    format_report,
    plot_boxplots,
    plot_overlays,
    worst_cases,
    write_csv,
    write_json,
)
from medseg.io import read_volume, write_volume
from medseg.metrics import dice_per_class
from medseg.metrics.case import array_metrics
from medseg.volume import Volume, affine_from_geometry

AFFINE = affine_from_geometry((1.0, 1.0, 2.0), (0, 0, 0), np.eye(3))


def labels_with_shift(shift: int) -> np.ndarray:
    array = np.zeros((16, 16, 8), np.uint8)
    array[4:10, 4:10, 2:6] = 1
    array[11:14, 11:14, 2:6] = 2
    return np.roll(array, shift, axis=0)


@pytest.fixture
def folders(tmp_path):
    pred, ref, images = tmp_path / "pred", tmp_path / "ref", tmp_path / "images"
    for folder in (pred, ref, images):
        folder.mkdir()
    for i in range(3):
        write_volume(Volume(labels_with_shift(0), AFFINE), ref / f"case{i}.nii.gz")
        write_volume(Volume(labels_with_shift(i), AFFINE), pred / f"case{i}.nii.gz")
        write_volume(Volume(np.random.default_rng(i).random((16, 16, 8)).astype(np.float32), AFFINE), images / f"case{i}_0000.nii.gz")
    write_volume(Volume(labels_with_shift(0), AFFINE), ref / "only_ref.nrrd")
    write_volume(Volume(labels_with_shift(0), AFFINE), pred / "only_pred.mha")
    return pred, ref, images


def test_folders_are_matched_and_reported(folders, tmp_path):
    pred, ref, images = folders
    report = evaluate(pred, ref, tolerance_mm=1.0)
    assert sorted(report.pairs) == ["case0", "case1", "case2"]
    assert report.unmatched_references == ["only_ref"] and report.unmatched_predictions == ["only_pred"]
    assert len(report.rows) == 6
    by_case = {(r["case_id"], r["label"]): r for r in report.rows}
    assert by_case[("case0", 1)]["dice"] == 1.0
    # label 1 shifted by 1 voxel: overlap 5 of 6 columns
    assert by_case[("case1", 1)]["dice"] == pytest.approx(5 / 6)
    assert worst_cases(report, 1) == ["case2"]

    csv_path = write_csv(report, tmp_path / "metrics.csv")
    with open(csv_path) as f:
        rows = list(csv.reader(f))
    assert rows[0][:11] == ["case_id", "label", "dice", "iou", "precision", "recall", "hd95", "assd", "nsd", "boundary_f1", "volume_diff_ml"]
    assert rows[0] == CSV_COLUMNS and len(rows) == 7
    assert rows[1][:2] == ["case0", "1"]

    summary = json.loads(write_json(report, tmp_path / "summary.json").read_text())
    assert summary["num_cases"] == 3 and summary["unmatched_references"] == ["only_ref"]
    dices = [by_case[(c, 2)]["dice"] for c in ("case0", "case1", "case2")]
    assert summary["per_class"]["2"]["dice"]["mean"] == pytest.approx(np.mean(dices))
    assert summary["miou"] == pytest.approx(report.summary["miou"])
    assert "mIoU" in format_report(report)

    boxes = plot_boxplots(report, tmp_path / "plots")
    overlays = plot_overlays(report, tmp_path / "plots", images=images)
    assert [p.name for p in boxes] == ["boxplot_label_1.png", "boxplot_label_2.png"]
    assert [p.name for p in overlays][0] == "worst_1_case2.png" and len(overlays) == 3
    for path in boxes + overlays:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_files_and_empty_class(tmp_path):
    ref = write_volume(Volume(labels_with_shift(0), AFFINE), tmp_path / "ref.nii.gz")
    only_one = labels_with_shift(0)
    only_one[only_one == 2] = 0
    pred = write_volume(Volume(only_one, AFFINE), tmp_path / "pred.nii.gz")
    report = evaluate(pred, ref, labels=[1, 2, 3])
    rows = {r["label"]: r for r in report.rows}
    diagonal = (16**2 + 16**2 + (8 * 2.0) ** 2) ** 0.5  # 16 x 16 x 8 voxels of 1 x 1 x 2 mm: 27.71 mm
    assert rows[1]["dice"] == 1.0 and rows[2]["dice"] == 0.0 and rows[2]["hd95"] == pytest.approx(diagonal)
    assert rows[3]["dice"] == 1.0 and rows[3]["hd95"] == 0.0 and rows[3]["both_empty"] == 1  # absent from both
    summary = json.loads(write_json(report, tmp_path / "s.json").read_text())
    assert summary["per_class"]["2"]["hd95"]["mean"] == pytest.approx(diagonal)  # missed: penalised, not dropped
    assert summary["per_class"]["3"]["dice"]["mean"] is None and summary["per_class"]["3"]["dice"]["n_empty"] == 1
    assert summary["mean"]["dice"] == pytest.approx(0.5)  # (1 + 0) / 2: label 3 left out, not a free 1.0
    assert summary["mean"]["hd95"] == pytest.approx(diagonal / 2)
    counted = evaluate(pred, ref, labels=[1, 2, 3], count_empty=True, distance_penalty_mm=374.0)
    assert counted.summary["mean"]["dice"] == pytest.approx(2 / 3)
    assert counted.summary["mean"]["hd95"] == pytest.approx(374.0 / 3)
    text = format_report(report)
    assert "1 label(s) absent from both" in text and "--count-empty" in text and "image diagonal" in text


def test_errors_name_the_case(tmp_path):
    (tmp_path / "p").mkdir(), (tmp_path / "r").mkdir()
    write_volume(Volume(labels_with_shift(0), AFFINE), tmp_path / "r" / "a.nii.gz")
    write_volume(Volume(labels_with_shift(0), affine_from_geometry((1, 1, 3), (0, 0, 0), np.eye(3))), tmp_path / "p" / "a.nii.gz")
    with pytest.raises(GeometryError, match="case a .*spacing"):
        evaluate(tmp_path / "p", tmp_path / "r")
    write_volume(Volume(labels_with_shift(0), AFFINE), tmp_path / "p" / "b.nii.gz")
    (tmp_path / "r" / "a.nii.gz").rename(tmp_path / "r" / "c.nii.gz")
    with pytest.raises(InputError, match="no case ids in common"):
        evaluate(tmp_path / "p", tmp_path / "r")


def test_real_hippocampus_labels(shared_data, tmp_path):
    labels_dir = shared_data / "hippocampus" / "labelsTr"
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    refs = sorted(p for p in labels_dir.glob("hippocampus_*.nii.gz"))[:3]
    for path in refs:
        ref = read_volume(path)
        write_volume(ref.with_array(np.roll(ref.array, 1, axis=1)), pred_dir / path.name)
    report = evaluate(pred_dir, labels_dir)
    assert len(report.pairs) == 3 and len(report.unmatched_references) == len(list(labels_dir.glob("*.nii.gz"))) - 3
    assert report.label_names == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert report.dataset_name and "hippocampus" in report.dataset_name.lower()
    for path in refs:
        ref = read_volume(path)
        expected = dice_per_class(np.roll(ref.array, 1, axis=1), ref.array, [1, 2])
        got = {r["label"]: r["dice"] for r in report.rows if r["case_id"] == path.name[:-7]}
        assert got == pytest.approx(expected)
        assert 0.5 < got[1] < 1.0


@pytest.mark.parametrize("values", [(1, 2), (4, 1000), (300, 65535)])
def test_raw_label_values_are_scored_as_they_are(tmp_path, values):
    """Values with gaps or beyond 255 score exactly like 1 and 2: only the values present are counted."""
    lut = np.array([0, *values], dtype=np.uint16)
    ref = write_volume(Volume(lut[labels_with_shift(0)], AFFINE), tmp_path / "ref.nii.gz")
    pred = write_volume(Volume(lut[labels_with_shift(1)], AFFINE), tmp_path / "pred.nii.gz")
    report = evaluate(pred, ref)
    rows = {r["label"]: r for r in report.rows}
    assert sorted(rows) == sorted(values)
    assert rows[values[0]]["dice"] == pytest.approx(5 / 6)  # as label 1 in test_folders_are_matched_and_reported
    plain = {r["label"]: r for r in array_metrics(labels_with_shift(1), labels_with_shift(0), (1.0, 1.0, 2.0))}
    for k, v in enumerate(values, start=1):
        for metric in ("dice", "iou", "hd95", "nsd", "volume_diff_ml"):
            assert rows[v][metric] == pytest.approx(plain[k][metric], nan_ok=True)


def test_labels_and_names_default_from_the_plan(tmp_path):
    """A label of the plan absent from every case is still scored (Dice 1, both empty), under its name."""
    lut = np.array([0, 1, 4], dtype=np.uint8)
    ref = write_volume(Volume(lut[labels_with_shift(0)], AFFINE), tmp_path / "ref.nii.gz")
    report = evaluate(ref, ref, label_names={0: "background", 1: "necrosis", 2: "edema", 4: "enhancing"})
    assert sorted(r["label"] for r in report.rows) == [1, 2, 4]
    assert {r["label"]: r["dice"] for r in report.rows} == {1: 1.0, 2: 1.0, 4: 1.0}
    summary = json.loads(write_json(report, tmp_path / "s.json").read_text())
    assert summary["labels"] == {"1": "necrosis", "2": "edema", "4": "enhancing"}
