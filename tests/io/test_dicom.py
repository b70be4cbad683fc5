"""medseg.io.dicom on tiny synthetic series whose right answer is known by construction."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SegmentationStorage, generate_uid

from medseg.errors import DicomError, SeriesSelectionError
from medseg.io.dicom import list_series, load_dicom_series, read_dicom

ROWS, COLS = 3, 4  # deliberately unequal so a swapped i/j shows


def write_slice(path, position, pixels, series_uid, orientation=(1, 0, 0, 0, 1, 0), spacing=(0.5, 0.8), **tags):
    """One CT slice; `pixels` is (rows, cols) as stored; `tags` override or add header fields."""
    sop = tags.pop("SOPInstanceUID", None) or generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", series_uid
    ds.Modality, ds.SeriesDescription, ds.SeriesNumber = "CT", "synthetic", 1
    ds.PatientName, ds.PatientID = "Doe^Jane", "PID-4242"
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in spacing]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def slice_pixels(k):
    """(rows, cols) with a value saying where each pixel came from: 100 k + 10 row + col."""
    rows, cols = np.meshgrid(np.arange(ROWS), np.arange(COLS), indexing="ij")
    return 100 * k + 10 * rows + cols


def write_series(folder, offsets, orientation=(1, 0, 0, 0, 1, 0), uid=None, names=None, **tags):
    """Slices at `offsets` mm along the normal; file k holds slice_pixels(k)."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = uid or generate_uid()
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, col)
    origin = np.array([10.0, -20.0, 30.0])
    for k, offset in enumerate(offsets):
        name = names[k] if names else f"s{k:03d}.dcm"
        write_slice(folder / name, origin + offset * normal, slice_pixels(k), uid, orientation, InstanceNumber=k + 1, **tags)
    return uid


def test_voxel_convention_and_oblique_affine(tmp_path):
    # oblique: rows run along (cos, sin, 0), columns along (0, 0, -1)
    c, s = np.cos(0.3), np.sin(0.3)
    orientation = (c, s, 0, 0, 0, -1)
    write_series(tmp_path, [0, 2, 4], orientation)
    volume = read_dicom(tmp_path)

    assert volume.array.shape == (COLS, ROWS, 3)  # (i = column, j = row, k)
    for i, j, k in [(0, 0, 0), (3, 1, 2), (2, 2, 1)]:
        assert volume.array[i, j, k] == 100 * k + 10 * j + i
    row, col = np.array([c, s, 0]), np.array([0, 0, -1.0])
    normal = np.cross(row, col)
    expected_lps = np.eye(4)
    expected_lps[:3, 0], expected_lps[:3, 1], expected_lps[:3, 2] = row * 0.8, col * 0.5, normal * 2
    expected_lps[:3, 3] = [10, -20, 30]
    np.testing.assert_allclose(volume.affine, np.diag([-1, -1, 1, 1]) @ expected_lps, atol=1e-9)
    assert volume.meta.modality == "CT" and volume.meta.series_description == "synthetic"


def test_slices_sorted_by_position_not_name_or_instance_number(tmp_path):
    # file names and InstanceNumbers in reverse order of position
    offsets = [8, 6, 4, 2, 0]
    write_series(tmp_path, offsets, names=[f"{n}.dcm" for n in range(5)])
    series = load_dicom_series(tmp_path)
    # sorted by ascending offset: file 4 (offset 0) first, so slice k holds slice_pixels(4 - k)
    assert [int(series.volume.array[0, 0, k]) for k in range(5)] == [400, 300, 200, 100, 0]
    assert series.volume.affine[2, 2] == pytest.approx(2.0)
    # datasets come in k order, without pixel data
    assert [int(ds.InstanceNumber) for ds in series.datasets] == [5, 4, 3, 2, 1]
    assert all("PixelData" not in ds for ds in series.datasets)


@pytest.mark.parametrize(
    ("slope", "intercept", "dtype", "scale"),
    [("1", "-1024", np.int16, lambda v: v - 1024), ("2", "0", np.int16, lambda v: 2 * v), ("0.5", "1.5", np.float32, lambda v: 0.5 * v + 1.5)],
)
def test_rescale_applied_with_fitting_dtype(tmp_path, slope, intercept, dtype, scale):
    write_series(tmp_path, [0, 1], RescaleSlope=slope, RescaleIntercept=intercept)
    volume = read_dicom(tmp_path)
    assert volume.array.dtype == dtype
    assert volume.array[3, 2, 1] == pytest.approx(scale(123))


@pytest.mark.parametrize(("offsets", "missing"), [([0, 2, 6, 8], 1), ([0, 2, 6], 1), ([0, 2, 8], 2)])
def test_missing_slices_refused_then_interpolated(tmp_path, offsets, missing):
    write_series(tmp_path, offsets)
    with pytest.raises(DicomError, match=rf"{missing} missing slice.*where the other slices are 2 mm apart.*--resample-irregular"):
        read_dicom(tmp_path)
    volume = read_dicom(tmp_path, resample_irregular=True)
    assert volume.array.shape == (COLS, ROWS, offsets[-1] // 2 + 1) and volume.array.dtype == np.float32
    assert volume.affine[2, 2] == pytest.approx(2.0)
    for k, offset in enumerate(offsets):  # real slices stay exact
        np.testing.assert_allclose(volume.array[..., offset // 2], slice_pixels(k).T)
    # the first missing slice (offset 4) lies between source slices 1 (offset 2) and 2 (offset 6 or 8)
    w = 2 / (offsets[2] - 2)
    np.testing.assert_allclose(volume.array[..., 2], (1 - w) * slice_pixels(1).T + w * slice_pixels(2).T)


def test_uneven_spacing_refused_then_resampled_to_median_step(tmp_path):
    write_series(tmp_path, [0, 1, 2, 4.5, 5.5])  # steps 1, 1, 2.5, 1 -> median 1, grid 0..5.5 in 12 steps
    with pytest.raises(DicomError, match="non-uniform slice spacing: steps from 1 to 2.5 mm"):
        read_dicom(tmp_path)
    volume = read_dicom(tmp_path, resample_irregular=True)
    step = 5.5 / 6
    assert volume.array.shape[2] == 7 and volume.affine[2, 2] == pytest.approx(step)
    target = 3 * step  # between offsets 2 (file 2) and 4.5 (file 3)
    w = (target - 2) / 2.5
    np.testing.assert_allclose(volume.array[..., 3], (1 - w) * slice_pixels(2).T + w * slice_pixels(3).T, rtol=1e-5)
    np.testing.assert_allclose(volume.array[..., -1], slice_pixels(4).T)


def test_gantry_tilt_refused_then_slices_shifted_onto_normal(tmp_path):
    uid = generate_uid()
    for k in range(3):  # each slice 0.8 mm (one column) further along the row direction
        write_slice(tmp_path / f"{k}.dcm", (0.8 * k, 0, 2.0 * k), slice_pixels(0), uid)
    with pytest.raises(DicomError, match="gantry tilt of 21.80 degrees"):
        read_dicom(tmp_path)
    volume = read_dicom(tmp_path, resample_irregular=True)
    np.testing.assert_allclose(volume.affine[:3, 2], [0, 0, 2.0])
    # slice k's content sits k columns further along i on the perpendicular grid
    np.testing.assert_allclose(volume.array[2:, :, 2], slice_pixels(0).T[:2])
    np.testing.assert_allclose(volume.array[:2, :, 2], 0)  # outside the source: the series minimum


def test_4d_series_is_refused_naming_it(tmp_path):
    uid = generate_uid()
    for acquisition in (1, 2):
        write_series(tmp_path / str(acquisition), [0, 1, 2], uid=uid, AcquisitionNumber=acquisition)
    with pytest.raises(DicomError, match=r"4D acquisition: 6 images at only 3 slice positions \(differing in AcquisitionNumber\)"):
        read_dicom(tmp_path)


def test_duplicate_copies_of_a_series_are_read_once(tmp_path):
    write_series(tmp_path / "a", [0, 1, 2])
    (tmp_path / "b").mkdir()
    for f in (tmp_path / "a").iterdir():
        (tmp_path / "b" / f.name).write_bytes(f.read_bytes())
    assert read_dicom(tmp_path).array.shape == (COLS, ROWS, 3)


def test_several_series_need_a_choice(tmp_path):
    first = write_series(tmp_path / "one", [0, 1, 2], SeriesNumber=1)
    second = write_series(tmp_path / "two", [0, 1], SeriesNumber=2, SeriesDescription="second")
    summaries = list_series(tmp_path)
    assert [(s.index, s.uid, s.num_slices, s.description) for s in summaries] == [
        (0, first, 3, "synthetic"),
        (1, second, 2, "second"),
    ]
    with pytest.raises(SeriesSelectionError) as info:
        read_dicom(tmp_path)
    message = str(info.value)
    assert "\n" not in message and first in message and second in message and "--series" in message
    assert "Doe" not in message and "PID-4242" not in message
    assert read_dicom(tmp_path, series="1").array.shape[2] == 2
    assert read_dicom(tmp_path, series=first).array.shape[2] == 3
    with pytest.raises(SeriesSelectionError, match="no image series with UID or index '7'"):
        read_dicom(tmp_path, series="7")


def test_non_dicom_and_non_image_objects_are_skipped(tmp_path, caplog):
    write_series(tmp_path, [0, 1])
    (tmp_path / "notes.txt").write_text("not dicom")
    (tmp_path / "DICOMDIR.bak").write_bytes(b"\0" * 300)
    seg = Dataset()  # a SEG in the same folder is not an image series
    seg.file_meta = FileMetaDataset()
    seg.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    seg.file_meta.MediaStorageSOPClassUID = SegmentationStorage
    seg.file_meta.MediaStorageSOPInstanceUID = seg.SOPInstanceUID = generate_uid()
    seg.SOPClassUID, seg.Modality, seg.SeriesInstanceUID, seg.Rows, seg.Columns = SegmentationStorage, "SEG", generate_uid(), 3, 4
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    with caplog.at_level("INFO", logger="medseg.io.dicom"):
        volume = read_dicom(tmp_path)
    assert volume.array.shape == (COLS, ROWS, 2)
    assert "skipped 2 of 5 files that are not readable DICOM" in caplog.text


def test_sop_class_only_in_file_meta(tmp_path):
    write_series(tmp_path, [0, 1])
    for f in tmp_path.iterdir():
        ds = pydicom.dcmread(f)
        del ds.SOPClassUID
        ds.save_as(f, enforce_file_format=True)
    assert read_dicom(tmp_path).array.shape == (COLS, ROWS, 2)


def test_single_file_reads_one_slice_with_its_thickness(tmp_path):
    write_series(tmp_path, [0, 1], SliceThickness="3")
    volume = read_dicom(tmp_path / "s001.dcm")
    assert volume.array.shape == (COLS, ROWS, 1) and volume.array[0, 0, 0] == 100
    assert volume.spacing[2] == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "empty folder"),
        (lambda p: [(p / f"{n}.txt").write_text("hello") for n in range(3)], "none of its 3 files is DICOM"),
    ],
)
def test_bad_folders(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(DicomError, match=message):
        read_dicom(tmp_path)


def test_truncated_pixel_data_names_the_file(tmp_path):
    write_series(tmp_path, [0, 1, 2])
    victim = tmp_path / "s001.dcm"
    victim.write_bytes(victim.read_bytes()[:-7])
    with pytest.raises(DicomError) as info:
        read_dicom(tmp_path)
    assert str(victim) in str(info.value) and "pixel data" in str(info.value) and "\n" not in str(info.value)


def test_irregular_geometry_is_refused_before_any_pixel_is_decoded(tmp_path):
    write_series(tmp_path, [0, 2, 6])
    victim = tmp_path / "s001.dcm"
    victim.write_bytes(victim.read_bytes()[:-7])  # decoding would fail on this file
    with pytest.raises(DicomError, match="1 missing slice"):
        read_dicom(tmp_path)
