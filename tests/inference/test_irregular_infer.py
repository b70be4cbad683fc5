"""`medseg infer --resample-irregular` on a real gantry-tilted CT: the SEG and the RTSTRUCT are
written on the acquisition's own slices, reference its real instances and pass dciodvfy."""

from __future__ import annotations

import numpy as np
import pytest

from cli_helpers import run
from test_golden_dicom import dciodvfy_errors
from medseg.io import read_volume
from medseg.io.dicom import load_dicom_series, source_datasets, source_grid, to_source_slices

TILTED = ("dicom", "dicom2nifti", "failing", "gantrytilting", "001")  # 4 CT slices, 14 degrees of tilt


@pytest.mark.slow
def test_infer_on_a_tilted_ct_writes_seg_and_rtstruct_on_its_own_slices(real_data, tiny_bundle, tmp_path, capsys):
    import highdicom as hd
    import pydicom

    folder = real_data.joinpath(*TILTED)
    common = ["--model", tiny_bundle, "--device", "cpu", "--precision", "fp32"]
    assert run("infer", folder, "-o", tmp_path / "refused.nii.gz", *common) == 1
    assert "--resample-irregular" in capsys.readouterr().err  # the hint names an option infer has
    assert run("infer", folder, "-o", tmp_path / "out", "--resample-irregular", "--format", "nifti,dicom-seg,rtstruct", *common) == 0

    series = load_dicom_series(folder, resample_irregular=True)
    mask = read_volume(next((tmp_path / "out").glob("*.nii.gz")))
    assert mask.same_geometry(series.volume) and np.asarray(mask.array).any()
    grid = source_grid(series.datasets)
    expected = np.asarray(to_source_slices(mask, series.datasets).array)
    uids = [str(ds.SOPInstanceUID) for ds in source_datasets(grid.datasets)]
    original = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in folder.iterdir()}
    assert set(uids) == original

    seg_path, rt_path = sorted((tmp_path / "out").glob("*.dcm"), key=lambda p: pydicom.dcmread(p).Modality)[::-1]
    assert dciodvfy_errors(seg_path) == [] and dciodvfy_errors(rt_path) == []
    seg = hd.seg.segread(str(seg_path))
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    for frame, frame_pixels in zip(seg.PerFrameFunctionalGroupsSequence, pixels):
        k = uids.index(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        np.testing.assert_allclose(frame.PlanePositionSequence[0].ImagePositionPatient, grid.positions[k], atol=1e-3)
        np.testing.assert_array_equal(frame_pixels.T > 0, expected[..., k] > 0)

    rt = pydicom.dcmread(rt_path)
    orientation = np.asarray(grid.datasets[0].ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    referenced = set()
    for contour in rt.ROIContourSequence[0].ContourSequence:
        uid = str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)
        k = uids.index(uid)
        points = np.asarray(contour.ContourData, float).reshape(-1, 3)
        np.testing.assert_allclose((points - grid.positions[k]) @ normal, 0, atol=1e-2)  # on that slice's own plane
        referenced.add(uid)
    assert referenced <= original and referenced
