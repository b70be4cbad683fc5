"""Irregular (tilted, gapped) and 4D DICOM series: read onto a regular grid, masks written back
onto the acquisition's own slices, one volume of a 4D series chosen (tiny synthetic series)."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medseg.errors import DicomError, GeometryError, InputError
from medseg.io import read_volume, write_volume
from medseg.io.dicom import build_dicom_seg, build_rtstruct, load_dicom_series, source_datasets, source_grid, to_source_slices
from medseg.io.dicom.series import count_volumes
from medseg.volume import LPS_TO_RAS, Volume

ROWS, COLS = 12, 16
SPACING = (1.0, 1.0)  # (row, column) mm


def write_slice(path, position, pixels, series_uid, **tags):
    sop = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CTImageStorage, sop
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "1.2.3.4", series_uid, "1.2.3.5"
    ds.Modality, ds.SeriesNumber, ds.PatientName, ds.PatientID = "CT", 1, "Doe^Jane", "PID-4242"
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [1.0, 0, 0, 0, 1.0, 0]
    ds.PixelSpacing = list(SPACING)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def square(k, top=4, left=5):
    """(rows, cols): 100 in a 4x5 block whose corner moves with k, else 0."""
    pixels = np.zeros((ROWS, COLS), np.int16)
    pixels[top:top + 4, left + k % 2:left + k % 2 + 5] = 100
    return pixels


def write_series(folder, positions, **tags):
    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    for k, position in enumerate(positions):
        write_slice(folder / f"s{k:02d}.dcm", position, square(k), uid, InstanceNumber=k + 1, **tags)
    return folder


TILTED = [(0.0, 1.0 * k, 3.0 * k) for k in range(4)]  # each slice shifted 1 mm (one row) along the column axis
GAPPED = [(0.0, 0.0, z) for z in (0.0, 2.0, 4.0, 8.0, 10.0)]  # slice at z = 6 missing


def threshold_mask(volume: Volume) -> Volume:
    return Volume((np.asarray(volume.array) > 50).astype(np.uint8), volume.affine)


@pytest.mark.parametrize("positions", [TILTED, GAPPED], ids=["tilt", "gap"])
def test_mask_on_the_resampled_grid_goes_back_onto_every_source_slice(tmp_path, positions):
    series = load_dicom_series(write_series(tmp_path / "s", positions), resample_irregular=True)
    mask = threshold_mask(series.volume)
    back = to_source_slices(mask, series.datasets)
    assert back.array.shape == (COLS, ROWS, len(positions))
    grid = source_grid(series.datasets)
    assert not grid.regular and back.same_geometry(grid.as_volume())
    # independent check: each source pixel's centre, mapped into the regular grid, nearest voxel
    to_voxel = np.linalg.inv(series.volume.affine)
    ii, jj = np.meshgrid(np.arange(COLS), np.arange(ROWS), indexing="ij")
    for k, position in enumerate(positions):
        lps = np.array(position) + ii[..., None] * [1.0, 0, 0] + jj[..., None] * [0, 1.0, 0]
        ras = lps @ LPS_TO_RAS[:3, :3].T
        ijk = np.rint(np.c_[ras.reshape(-1, 3), np.ones(ii.size)] @ to_voxel[:3].T).astype(int)
        inside = np.all((ijk >= 0) & (ijk < mask.array.shape), axis=1)
        expected = np.zeros(ii.size, np.uint8)
        expected[inside] = mask.array[tuple(ijk[inside].T)]
        np.testing.assert_array_equal(back.array[..., k].ravel(), expected)
    # the thresholded source itself: each slice's own block comes back where it was acquired
    for k in range(len(positions)):
        np.testing.assert_array_equal(back.array[..., k].T, square(k) > 50)


@pytest.mark.parametrize("positions", [TILTED, GAPPED], ids=["tilt", "gap"])
def test_seg_and_rtstruct_reference_the_real_slices_at_their_positions(tmp_path, positions):
    series = load_dicom_series(write_series(tmp_path / "s", positions), resample_irregular=True)
    mask = threshold_mask(series.volume)
    with pytest.raises(GeometryError, match="irregular"):  # the resampled grid is not the source's
        build_dicom_seg(mask, series.datasets, {0: "background", 1: "block"})
    back = to_source_slices(mask, series.datasets)
    grid = source_grid(series.datasets)
    uids = [str(ds.SOPInstanceUID) for ds in source_datasets(grid.datasets)]

    seg = build_dicom_seg(back, series.datasets, {0: "background", 1: "block"})
    assert len(seg.PerFrameFunctionalGroupsSequence) == len(positions)
    seen = set()
    for frame, pixels in zip(seg.PerFrameFunctionalGroupsSequence, seg.pixel_array.reshape(-1, ROWS, COLS)):
        k = uids.index(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        np.testing.assert_allclose(frame.PlanePositionSequence[0].ImagePositionPatient, positions[k], atol=1e-4)
        np.testing.assert_array_equal(pixels > 0, square(k) > 50)
        seen.add(k)
    assert seen == set(range(len(positions)))

    rt = build_rtstruct(back, series.datasets, {0: "background", 1: "block"})
    contours = rt.ROIContourSequence[0].ContourSequence
    assert {uids.index(c.ContourImageSequence[0].ReferencedSOPInstanceUID) for c in contours} == set(range(len(positions)))
    for c in contours:
        k = uids.index(c.ContourImageSequence[0].ReferencedSOPInstanceUID)
        points = np.array(c.ContourData, float).reshape(-1, 3)
        np.testing.assert_allclose(points[:, 2], positions[k][2], atol=1e-3)  # in the slice's own plane
        cols, rows = points[:, 0] - positions[k][0], points[:, 1] - positions[k][1]  # pixel units (1 mm)
        block = np.argwhere(square(k) > 50)
        assert rows.min() >= block[:, 0].min() - 0.6 and rows.max() <= block[:, 0].max() + 0.6
        assert cols.min() >= block[:, 1].min() - 0.6 and cols.max() <= block[:, 1].max() + 0.6


def test_regular_series_and_foreign_masks_pass_through_unchanged(tmp_path):
    series = load_dicom_series(write_series(tmp_path / "r", [(0.0, 0.0, 2.0 * k) for k in range(3)]))
    mask = threshold_mask(series.volume)
    assert to_source_slices(mask, series.datasets) is mask
    assert source_grid(series.datasets).regular


def write_4d(folder):
    uid = generate_uid()
    folder.mkdir()
    for volume in (0, 1):  # AcquisitionNumber 2 first in file order: the tag, not the file, sets the volume
        for k in range(3):
            pixels = np.full((ROWS, COLS), 10 * (volume + 1) + k, np.int16)
            write_slice(folder / f"v{1 - volume}_{k}.dcm", (0.0, 0.0, 2.0 * k), pixels, uid,
                        AcquisitionNumber=volume + 1, InstanceNumber=3 * volume + k + 1)
    return folder


def test_4d_series_one_volume_by_index(tmp_path):
    folder = write_4d(tmp_path / "d")
    with pytest.raises(DicomError, match=r"\(differing in AcquisitionNumber\), 2 volumes; choose one with --volume N \(0 to 1\).*--split-volumes"):
        load_dicom_series(folder)
    assert count_volumes(folder) == 2
    for v in (0, 1):
        volume = read_volume(folder, volume=v)
        assert volume.array.shape == (COLS, ROWS, 3)
        np.testing.assert_array_equal(volume.array[0, 0, :], [10 * (v + 1) + k for k in range(3)])
    with pytest.raises(DicomError, match="--volume 2 is out of range; this 4D series holds volumes 0 to 1"):
        read_volume(folder, volume=2)
    regular = write_series(tmp_path / "r", [(0.0, 0.0, 2.0 * k) for k in range(3)])
    with pytest.raises(DicomError, match="the series is one 3D volume"):
        read_volume(regular, volume=1)


def test_dicom_options_on_an_image_file_are_errors(tmp_path):
    path = write_volume(Volume(np.zeros((4, 4, 4), np.float32), np.eye(4)), tmp_path / "scan.nii.gz")
    for options, named in (({"series": "3"}, "--series"), ({"resample_irregular": True}, "--resample-irregular"),
                           ({"volume": 0}, "--volume")):
        with pytest.raises(InputError, match=f"{named} applies only to DICOM input"):
            read_volume(path, **options)
