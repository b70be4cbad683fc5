"""Issue 23, item 6 (convert half): `medseg convert MASK OUT --to dicom-seg|rtstruct --reference DICOM_DIR
[--labels ...]` and `medseg.mask_to_dicom`, on the real CT and oblique MR series shipped in tests/data:
dciodvfy accepts the objects, each reads back to the mask, a mask off the series' grid is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

import medseg
from medseg.cli.main import run_argv
from medseg.errors import ConfigError
from medseg.io import read_volume, write_volume
from medseg.io.dicom import load_dicom_series, read_dicom_seg, read_rtstruct
from medseg.volume import Volume

from test_dicom_seg import dciodvfy_errors

REPO = Path(__file__).resolve().parents[2]
CT = "totalsegmentator/ct_series_4slices"
MR = "tcia_mr_oblique/11-T1post-18670"


def test_a_tool_s_ct_mask_to_seg_and_rtstruct(real_data, tmp_path):
    """TotalSegmentator's mask of the CT, written in LAS for the LPS series (the same voxels, rows
    flipped): reoriented exactly, then a SEG and an RTSTRUCT of three of its organs."""
    series = real_data / "dicom" / CT
    mask = read_volume(real_data / "dicom" / "totalsegmentator" / "ct_series_4slices_reference_seg.nii.gz")
    src = load_dicom_series(series)
    assert mask.orientation != src.volume.orientation  # the case being tested
    on_grid = mask.reoriented(src.volume.orientation)
    assert on_grid.same_geometry(src.volume)
    values = [int(v) for v in np.unique(on_grid.array) if v][:3]
    kept = np.where(np.isin(on_grid.array, values), on_grid.array, 0).astype(np.uint8)
    masked = tmp_path / "three_organs.nii.gz"
    write_volume(mask.with_array(np.where(np.isin(mask.array, values), mask.array, 0).astype(np.uint8)), masked)
    names = ",".join(f"{v}=organ {v}" for v in values)

    run_argv(["convert", str(masked), str(tmp_path / "seg.dcm"), "--to", "dicom-seg", "--reference", str(series), "--labels", names])
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    back, labels = read_dicom_seg(tmp_path / "seg.dcm", src.datasets)
    np.testing.assert_array_equal(back, kept)
    assert labels == {v: f"organ {v}" for v in values}
    referenced = {str(r.ReferencedSOPInstanceUID) for r in pydicom.dcmread(tmp_path / "seg.dcm").ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert len(referenced) == 4  # every slice of the series

    run_argv(["convert", str(masked), str(tmp_path / "rt.dcm"), "--to", "rtstruct", "--reference", str(series), "--labels", names])
    assert dciodvfy_errors(tmp_path / "rt.dcm") == []
    rois = read_rtstruct(tmp_path / "rt.dcm", src.volume)
    for v in values:
        np.testing.assert_array_equal(rois[f"organ {v}"], kept == v)  # boundary contours: the exact voxels


def test_mask_on_the_oblique_mr_via_the_library(real_data, tmp_path):
    series = real_data / "dicom" / MR
    image = medseg.read(series)
    labels = (image.array > np.percentile(image.array, 80)).astype(np.uint8)
    labels[:20] = 0
    labels[:, :, :9] = labels[:, :, 13:] = 0  # four slices keep it quick
    labels[labels.shape[0] // 2 :][labels[labels.shape[0] // 2 :] == 1] = 2
    path = write_volume(image.with_array(labels), tmp_path / "mask.nii.gz")
    seg = medseg.mask_to_dicom(path, series)  # no path: the Dataset, nothing written
    assert seg.Modality == "SEG" and [s.SegmentLabel for s in seg.SegmentSequence] == ["label 1", "label 2"]
    written = medseg.mask_to_dicom(path, series, tmp_path / "rt.dcm", format="rtstruct", label_names={1: "left", 2: "right"})
    assert dciodvfy_errors(written) == []
    rois = read_rtstruct(written, image)
    np.testing.assert_array_equal(rois["left"], labels == 1)
    np.testing.assert_array_equal(rois["right"], labels == 2)
    with pytest.raises(ConfigError, match=r"holds label value\(s\) \[2\] that --labels does not name"):
        medseg.mask_to_dicom(path, series, tmp_path / "no.dcm", label_names={1: "left"})
    assert not (tmp_path / "no.dcm").exists()


def test_a_mask_off_the_series_grid_is_refused_in_one_line(real_data, tmp_path):
    series = real_data / "dicom" / MR
    image = medseg.read(series)
    affine = image.affine.copy()
    affine[:3, 3] += 2.0  # 2 mm off
    shifted = Volume(np.ones(image.spatial_shape, np.uint8), affine)
    path = write_volume(shifted, tmp_path / "shifted.nii.gz")
    out = tmp_path / "seg.dcm"
    result = subprocess.run([sys.executable, "-m", "medseg", "convert", str(path), str(out), "--to", "dicom-seg", "--reference", str(series)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "shifted.nii.gz: not on the grid of the reference series" in lines[0] and "origin" in lines[0]
    assert not out.exists() and not list(tmp_path.glob("*.dcm*"))


def test_to_and_reference_go_together(tmp_path):
    with pytest.raises(ConfigError, match="--to, --reference"):
        run_argv(["convert", "mask.nii.gz", str(tmp_path / "x.dcm"), "--to", "rtstruct"])
    with pytest.raises(ConfigError, match="leave them out"):
        run_argv(["convert", "mask.nii.gz", str(tmp_path / "x.dcm"), "--to", "rtstruct", "--reference", ".", "--volume", "1"])
    with pytest.raises(ConfigError, match="VALUE=NAME"):
        run_argv(["convert", "mask.nii.gz", str(tmp_path / "x.dcm"), "--to", "rtstruct", "--reference", ".", "--labels", "liver"])
