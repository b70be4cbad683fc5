"""`medseg evaluate --instances`: semantic maps or nnDetection instance maps in, per-case CSV,
JSON summary and table out, each protocol scored as `medseg.metrics.instances` scores it."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from cli_helpers import run
from medseg.io import write_volume
from medseg.metrics.instances import brats2023_lesion_scores, instance_scores, instances_from_labels
from medseg.volume import Volume

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])




def cases(tmp_path):
    """Two cases: lesions of class 1 (one touching pair in the reference, merged in the prediction)
    and class 2 (one found, one missed, one false)."""
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    arrays = {}
    for k in range(2):
        ref = np.zeros((30, 30, 20), np.uint8)
        pred = np.zeros_like(ref)
        ref[2:6, 2:6, 2:6] = 1
        ref[8:12, 2:6, 2:6] = 1          # a separate class-1 lesion, 2 voxels away
        pred[2:12, 2:6, 2:6] = 1         # merged into one
        ref[20:25, 20:25, 10:15] = 2
        pred[20 + k:25, 20:25, 10:15] = 2
        ref[2:5, 20:23, 15:18] = 2       # missed
        pred[14:17, 14:17, 2:5] = 2      # false
        write_volume(Volume(pred, AFFINE), pred_dir / f"case{k}.nii.gz")
        write_volume(Volume(ref, AFFINE), ref_dir / f"case{k}.nii.gz")
        arrays[f"case{k}"] = (pred, ref)
    return pred_dir, ref_dir, arrays


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_panoptic_rows_match_the_metrics_per_class(tmp_path, capsys):
    pred_dir, ref_dir, arrays = cases(tmp_path)
    out = tmp_path / "report" / "instances.csv"
    out.parent.mkdir()
    assert run("evaluate", "--instances", "--pred", pred_dir, "--ref", ref_dir, "-o", out, "--things", "1,2") == 0
    rows = read_rows(out)
    assert [(r["case_id"], r["group"]) for r in rows] == [("case0", "1"), ("case0", "2"), ("case1", "1"), ("case1", "2")]
    for row in rows:
        pred, ref = arrays[row["case_id"]]
        value = int(row["group"])
        p, _ = instances_from_labels(pred, [value])
        r, _ = instances_from_labels(ref, [value])
        expected = instance_scores(p, r, (1.5, 1.5, 2.0))
        assert float(row["pq"]) == pytest.approx(expected.pq) and int(row["tp"]) == expected.tp
        assert float(row["fn_volume_ml"]) == pytest.approx(expected.fn_volume_ml)
    class2 = [r for r in rows if r["group"] == "2"]
    assert all((int(r["tp"]), int(r["fp"]), int(r["fn"])) == (1, 1, 1) for r in class2)
    summary = json.loads((out.parent / "instances.json").read_text())
    assert summary["settings"]["protocol"] == "panoptic" and summary["num_cases"] == 2
    assert summary["per_group"]["2"]["rq"] == pytest.approx(0.5)
    assert "pq" in capsys.readouterr().out


def test_nndetection_instance_maps_and_brats_protocol(tmp_path):
    pred_dir, ref_dir, arrays = cases(tmp_path)
    # case0's reference as an instance map with nnDetection's JSON: ids 5 and 9 of class 1, 7 of class 2
    ref = np.zeros((30, 30, 20), np.uint16)
    ref[2:6, 2:6, 2:6] = 5
    ref[8:12, 2:6, 2:6] = 9
    ref[20:25, 20:25, 10:15] = 7
    (ref_dir / "case0.nii.gz").unlink()
    write_volume(Volume(ref, AFFINE), ref_dir / "case0.nii.gz")
    (ref_dir / "case0.json").write_text(json.dumps({"instances": {"5": 1, "9": 1, "7": 2}}))
    out = tmp_path / "brats.csv"
    assert run("evaluate", "--instances", "--protocol", "brats2023", "--pred", pred_dir, "--ref", ref_dir,
               "-o", out, "--regions", "TC=1+2,ET=2") == 0
    rows = {(r["case_id"], r["group"]): r for r in read_rows(out)}
    pred, _ = arrays["case0"]
    expected = brats2023_lesion_scores(np.isin(pred, [2]), ref == 7, (1.5, 1.5, 2.0))
    assert float(rows[("case0", "ET")]["lesion_dice"]) == pytest.approx(expected["lesion_dice"])
    assert int(rows[("case0", "ET")]["fp"]) == expected["fp"]


def test_autopet_protocol_and_bad_sidecar(tmp_path, capsys):
    pred_dir, ref_dir, _ = cases(tmp_path)
    out = tmp_path / "autopet.csv"
    assert run("evaluate", "--instances", "--protocol", "autopet", "--pred", pred_dir, "--ref", ref_dir, "-o", out) == 0
    rows = read_rows(out)
    voxel_ml = 1.5 * 1.5 * 2.0 / 1000
    assert all(float(r["fn_volume_ml"]) == pytest.approx(27 * voxel_ml) for r in rows)  # the missed 3x3x3 lesion
    assert all(float(r["fp_volume_ml"]) == pytest.approx(27 * voxel_ml) for r in rows)  # the false one
    capsys.readouterr()

    (ref_dir / "case1.json").write_text(json.dumps({"objects": []}))
    assert run("evaluate", "--instances", "--pred", pred_dir, "--ref", ref_dir, "-o", tmp_path / "x.csv") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "case1.json" in err[0] and "nnDetection" in err[0]
    assert not (tmp_path / "x.csv").exists()
    assert run("evaluate", "--instances", "--protocol", "coco", "--pred", pred_dir, "--ref", ref_dir) == 1
    assert "--protocol 'coco' is unknown" in capsys.readouterr().err
