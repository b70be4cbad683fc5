"""`medseg infer` on real DICOM series: NIfTI on the exact input grid, SEG and RTSTRUCT that map back."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from cli_helpers import run
from medseg.io import read_volume
from medseg.io.dicom import load_dicom_series
from medseg.io.dicom import read_dicom_seg, source_datasets
from medseg.io.dicom import read_rtstruct

SERIES = [
    "tcia_mr_oblique/11-T1post-18670",
    "tcia_mr_oblique/11_HCropVolume",
    "totalsegmentator/ct_series_4slices",
    "dicom2nifti/philips/anatomical/001",
]


def dciodvfy_errors(path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy (Debian package dicom3tools) is not installed")
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.slow
@pytest.mark.parametrize("series", SERIES)
def test_infer_writes_masks_on_the_source_grid(real_data, tiny_bundle, tmp_path, series):
    folder = real_data / "dicom" / series
    src = load_dicom_series(folder)
    common = ["--model", tiny_bundle, "--device", "cpu", "--precision", "fp32"]
    assert run("infer", folder, "-o", tmp_path / "mask.nii.gz", *common) == 0
    mask = read_volume(tmp_path / "mask.nii.gz")
    assert mask.spatial_shape == src.volume.spatial_shape
    np.testing.assert_allclose(mask.affine, src.volume.affine, atol=1e-4)
    labels = np.asarray(mask.array)
    assert labels.any(), "the blob model found nothing; the SEG/RTSTRUCT checks below would be vacuous"

    assert run("infer", folder, "-o", tmp_path / "seg.dcm", "--format", "dicom-seg", *common) == 0
    back, names = read_dicom_seg(tmp_path / "seg.dcm", src.datasets)
    assert names == {1: "blob"} and np.array_equal(back, labels)
    import highdicom as hd

    seg = hd.seg.segread(str(tmp_path / "seg.dcm"))
    neoplasm = ("108369006", "SCT", "Neoplasm")  # the bundle's label code for "blob"
    assert tuple(str(v) for v in (seg.SegmentSequence[0].segmented_property_type.value, seg.SegmentSequence[0].segmented_property_type.scheme_designator,
                                  seg.SegmentSequence[0].segmented_property_type.meaning)) == neoplasm
    uids = [ds.SOPInstanceUID for ds in source_datasets(src.datasets)]
    for frame in seg.PerFrameFunctionalGroupsSequence:
        k = uids.index(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        position = np.array(frame.PlanePositionSequence[0].ImagePositionPatient, float)
        assert np.allclose(position, src.datasets[k].ImagePositionPatient, atol=1e-3) and labels[:, :, k].any()
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []

    assert run("infer", folder, "-o", tmp_path / "rt.dcm", "--format", "rtstruct", *common) == 0
    roi = read_rtstruct(tmp_path / "rt.dcm", src.volume)["blob"]
    observation = pydicom.dcmread(tmp_path / "rt.dcm").RTROIObservationsSequence[0]
    assert observation.RTROIIdentificationCodeSequence[0].CodeValue == neoplasm[0]
    assert observation.RTROIInterpretedType == ""  # not anatomy, and no type declared: no claim that it is a GTV
    assert 2 * (roi & (labels == 1)).sum() / (roi.sum() + (labels == 1).sum()) >= 0.95
    assert dciodvfy_errors(tmp_path / "rt.dcm") == []


@pytest.mark.slow
def test_infer_on_enhanced_multiframe_source(real_data, tiny_bundle, tmp_path, capsys):
    """A real Enhanced CT whose stored frame order runs against the slice normal: the SEG's frames sit
    on the NIfTI mask's voxels by position; RTSTRUCT is refused in one line."""
    import highdicom as hd

    source = real_data / "dicom" / "multiframe" / "eCT_Supplemental.dcm"
    common = ["--model", tiny_bundle, "--device", "cpu", "--precision", "fp32"]
    assert run("infer", source, "-o", tmp_path / "mask.nii.gz", *common) == 0
    assert run("infer", source, "-o", tmp_path / "seg.dcm", "--format", "dicom-seg", *common) == 0
    mask = read_volume(tmp_path / "mask.nii.gz")
    assert mask.array.any()
    seg = hd.seg.segread(str(tmp_path / "seg.dcm"))
    to_voxel = np.linalg.inv(mask.affine) @ np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS mm -> NIfTI voxel
    frames = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    back = np.zeros(mask.spatial_shape, np.uint8)
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ijk = to_voxel @ [*map(float, item.PlanePositionSequence[0].ImagePositionPatient), 1.0]
        k = int(round(ijk[2]))
        assert np.allclose(ijk[:3], [0, 0, k], atol=1e-3)
        back[:, :, k] = frames[f].T
    np.testing.assert_array_equal(back, mask.array)
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    capsys.readouterr()
    assert run("infer", source, "-o", tmp_path / "rt.dcm", "--format", "rtstruct", *common) == 1
    err = capsys.readouterr().err.strip()
    assert "multi-frame" in err and "dicom-seg" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "rt.dcm").exists()


def test_seg_from_nifti_and_bad_model_give_one_line(real_data, tiny_bundle, tmp_path, capsys):
    scan = real_data / "volumes" / "totalsegmentator" / "example_ct_sm.nii.gz"
    assert run("infer", scan, "--model", tiny_bundle, "--format", "dicom-seg", "-o", tmp_path / "s.dcm") == 1
    err = capsys.readouterr().err.strip()
    assert "needs a DICOM series" in err and len(err.splitlines()) == 1
    assert run("infer", scan, "--model", tmp_path / "no-bundle", "-o", tmp_path / "m.nii.gz") == 1
    err = capsys.readouterr().err.strip()
    assert "no such bundle folder" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s.dcm").exists() and not (tmp_path / "m.nii.gz").exists()


def test_many_scans_one_failing_are_reported_and_exit_nonzero(real_data, tiny_bundle, tmp_path, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    shutil.copy(real_data / "volumes" / "totalsegmentator" / "example_ct_sm.nii.gz", cases / "good.nii.gz")
    (cases / "broken.nii.gz").write_bytes(b"not a nifti")
    out = tmp_path / "out"
    code = run("infer", cases, "--model", tiny_bundle, "-o", out, "--device", "cpu", "--precision", "fp32")
    text = capsys.readouterr()
    assert code == 1
    assert (out / "good.nii.gz").exists() and not (out / "broken.nii.gz").exists()
    assert "1 ok, 1 failed" in text.out and "broken" in text.out and "peak memory" in text.out
    good = read_volume(out / "good.nii.gz")
    src = read_volume(cases / "good.nii.gz")
    assert good.spatial_shape == src.spatial_shape and np.allclose(good.affine, src.affine)
