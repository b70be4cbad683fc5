"""`medseg infer --format nifti,dicom-seg,rtstruct`: one inference, every format, the same voxels."""

from __future__ import annotations

import numpy as np
import pytest

from cli_helpers import run
from medseg.inference.predictor import Predictor
from medseg.io import read_volume
from medseg.io.dicom import load_dicom_series, read_dicom_seg, read_rtstruct

SERIES = "totalsegmentator/ct_series_4slices"


@pytest.mark.slow
def test_one_inference_writes_every_format_on_the_same_voxels(real_data, tiny_bundle, tmp_path, monkeypatch):
    folder = real_data / "dicom" / SERIES
    calls = []
    segment = Predictor.segment
    monkeypatch.setattr(Predictor, "segment", lambda self, *a, **k: calls.append(1) or segment(self, *a, **k))
    out = tmp_path / "out"
    code = run("infer", folder, "--model", tiny_bundle, "-o", out, "--format", "nifti,dicom-seg,rtstruct",
               "--device", "cpu", "--precision", "fp32")
    assert code == 0
    case = folder.name
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{case}.nii.gz", f"{case}_seg.dcm", f"{case}_rtstruct.dcm"])
    assert len(calls) == 1, "each format must come from the same single inference"

    src = load_dicom_series(folder)
    labels = np.asarray(read_volume(out / f"{case}.nii.gz").array)
    assert labels.any(), "the blob model found nothing; the comparison below would be vacuous"
    seg, _ = read_dicom_seg(out / f"{case}_seg.dcm", src.datasets)
    assert np.array_equal(seg, labels)
    rois = read_rtstruct(out / f"{case}_rtstruct.dcm", src.volume)
    assert list(rois) == ["blob"]
    drawn = rois["blob"]
    overlap = 2 * (drawn & (labels > 0)).sum() / (drawn.sum() + (labels > 0).sum())
    assert overlap > 0.9


def test_several_formats_refuse_a_file_output_and_write_nothing(real_data, tiny_bundle, tmp_path, capsys):
    folder = real_data / "dicom" / SERIES
    assert run("infer", folder, "--model", tiny_bundle, "-o", tmp_path / "mask.nii.gz", "--format", "nifti,dicom-seg") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names a file" in err[0] and "2 formats" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_many_scans_refuse_a_file_output(tiny_bundle, tmp_path, capsys):
    from test_infer_cli import blob_scan

    scans = tmp_path / "scans"
    scans.mkdir()
    blob_scan(scans / "a.nii.gz", 0)
    blob_scan(scans / "b.nii.gz", 1)
    assert run("infer", scans, "--model", tiny_bundle, "-o", tmp_path / "rt_mask.nii.gz") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names a file" in err[0] and "2 scans" in err[0]
    assert not (tmp_path / "rt_mask.nii.gz").exists()


@pytest.mark.parametrize("formats, message", [("nifti,png", "unknown format 'png'"), ("nifti,nifti", "named twice")])
def test_bad_format_lists_are_refused(tiny_bundle, tmp_path, capsys, formats, message):
    from test_infer_cli import blob_scan

    scan = blob_scan(tmp_path / "a.nii.gz", 0)
    assert run("infer", scan, "--model", tiny_bundle, "-o", tmp_path / "out", "--format", formats) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()
