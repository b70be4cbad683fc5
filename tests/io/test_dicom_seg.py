"""DICOM SEG: frames placed by geometry on the source slices; read back equals the mask; label codes
read back with highdicom; masks off the source grid (even with the same shape) refused; dciodvfy
finds no errors."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from medseg.errors import GeometryError, OutputError
from medseg.io.dicom import load_dicom_series
from medseg.io.dicom import read_dicom_seg, source_datasets, write_dicom_seg
from medseg.volume import Volume


def dciodvfy_errors(path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy (Debian package dicom3tools) is not installed")
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def asymmetric_mask(shape) -> np.ndarray:
    """Two labels with no symmetry, so any axis swap or flip would change the read-back."""
    labels = np.zeros(shape, np.uint8)
    x, y, z = shape
    labels[1 : x // 2, 2 : y // 3, 1 : z // 2] = 1
    labels[x // 2 : x - 1, y // 2 : y - 3, z // 3 : z - 2] = 2
    labels[x - 1, y - 1, z - 1] = 2
    return labels


@pytest.mark.parametrize("series", ["tcia_mr_oblique/11_HCropVolume", "totalsegmentator/ct_series_4slices"])
def test_round_trip_and_validation(real_data, tmp_path, series):
    src = load_dicom_series(real_data / "dicom" / series)
    labels = asymmetric_mask(src.volume.spatial_shape)
    # headers in any order: frames are placed by position
    out = write_dicom_seg(src.volume.with_array(labels), src.datasets[::-1], tmp_path / "seg.dcm", {0: "bg", 1: "first", 2: "second", 3: "absent"},
                          label_codes={2: {"category": ["49755003", "SCT", "Morphologically Altered Structure"], "type": ["108369006", "SCT", "Neoplasm"]}},
                          model_name="tiny")
    back, names = read_dicom_seg(out, src.datasets)
    assert names == {1: "first", 2: "second"}  # the empty label is omitted
    assert np.array_equal(back, labels)
    assert dciodvfy_errors(out) == []

    import highdicom as hd

    seg = hd.seg.segread(str(out))
    assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "tiny"
    # every frame references the source instance at its own k
    uids = [ds.SOPInstanceUID for ds in source_datasets(src.datasets)]
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = uids.index(ref)
        number = frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        position = np.array(frame.PlanePositionSequence[0].ImagePositionPatient, float)
        assert np.allclose(position, src.datasets[k].ImagePositionPatient, atol=1e-3)
        assert (labels[:, :, k] == number).any()


def test_mask_off_the_source_grid_and_empty_mask_are_refused(real_data, tmp_path):
    src = load_dicom_series(real_data / "dicom" / "tcia_mr_oblique" / "11_HCropVolume")
    with pytest.raises(GeometryError, match="not on the source series' voxel grid"):
        write_dicom_seg(Volume(np.zeros((3, 3, 3), np.uint8), src.volume.affine), src.datasets, tmp_path / "s.dcm", {1: "a"})
    with pytest.raises(GeometryError, match="must be a medseg Volume"):
        write_dicom_seg(np.zeros(src.volume.spatial_shape, np.uint8), src.datasets, tmp_path / "s.dcm", {0: "bg", 1: "a"})
    with pytest.raises(OutputError, match="empty"):
        write_dicom_seg(src.volume.with_array(np.zeros(src.volume.spatial_shape, np.uint8)), src.datasets, tmp_path / "s.dcm", {0: "bg", 1: "a"})
    assert not list(tmp_path.iterdir())
