"""DICOM writers against the source geometry: enhanced multi-frame sources (frames stored out of
slice order), one-frame enhanced objects, and masks in another voxel order refused."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from medseg.errors import GeometryError, InputError
from medseg.io import read_volume, write_volume
from medseg.io.dicom import load_dicom_series
from medseg.io.dicom import read_dicom_seg, write_dicom_seg
from medseg.io.dicom import write_rtstruct
from medseg.volume import LPS_TO_RAS, Volume

from test_dicom_seg import dciodvfy_errors

SLICE_MM, PIXEL_MM = 1.2, (0.9, 1.1)  # (between rows, between columns)
SHUFFLED = [3, 0, 7, 1, 9, 5, 2, 8, 6, 4]  # slice position of stored frame f


def _rotation(a: float, b: float) -> np.ndarray:
    ca, sa, cb, sb = np.cos(a), np.sin(a), np.cos(b), np.sin(b)
    return np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]]) @ np.array([[cb, -sb, 0], [sb, cb, 0], [0, 0, 1]])


def enhanced_mr(real_data, path, slots=SHUFFLED, keep: int | None = None):
    """emri_small.dcm (a real Enhanced MR, 10 frames of 64x64, shipped without any geometry) given an
    oblique geometry in functional groups, stored frame f lying at slice position slots[f].
    keep: write only that frame (a one-frame enhanced object). Returns (path, pixels (F, rows, cols))."""
    ds = pydicom.dcmread(real_data / "dicom" / "multiframe" / "emri_small.dcm")
    pixels = ds.pixel_array.copy()
    rot = np.round(_rotation(0.35, 0.2), 8)
    row, col = rot[:, 0], rot[:, 1]
    normal = np.cross(row, col)
    shared = Dataset()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
    measures.PixelSpacing = list(PIXEL_MM)
    measures.SliceThickness = SLICE_MM
    measures.SpacingBetweenSlices = SLICE_MM
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = range(len(slots)) if keep is None else [keep]
    per_frame = []
    for f in frames:
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = [f"{v:.6f}" for v in np.array([-30.0, 20.0, 15.0]) + normal * SLICE_MM * slots[f]]
        item.PlanePositionSequence = [position]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    if keep is not None:
        ds.NumberOfFrames = 1
        ds.PixelData = pixels[keep].tobytes()
        pixels = pixels[keep : keep + 1]
    ds.save_as(path)
    return path, pixels


def two_label_mask(shape) -> np.ndarray:
    """Labels 1 and 4 with no symmetry, on the first and last slices too (shapes with 2 slices)."""
    x, y, z = shape
    labels = np.zeros(shape, np.uint8)
    labels[1 : x // 2, 2 : y // 3, : max(1, z // 2)] = 1
    labels[x // 2 : x - 1, y // 2 : y - 3, z // 2 :] = 4
    labels[x - 1, y - 1, z - 1] = 4
    return labels


def test_enhanced_frames_placed_by_position_and_one_frame_object_reads_its_frame(real_data, tmp_path):
    path, pixels = enhanced_mr(real_data, tmp_path / "emr.dcm")
    volume = load_dicom_series(path).volume
    assert volume.spatial_shape == (64, 64, 10)
    for f, slot in enumerate(SHUFFLED):
        np.testing.assert_array_equal(volume.array[:, :, slot], pixels[f].T)
    for keep in (0, 6):
        one, frame = enhanced_mr(real_data, tmp_path / f"one_{keep}.dcm", keep=keep)
        loaded = load_dicom_series(one).volume
        assert loaded.spatial_shape == (64, 64, 1)
        np.testing.assert_array_equal(loaded.array[:, :, 0], frame[0].T)  # the whole frame, not its first row
        np.testing.assert_allclose(loaded.affine @ [0, 0, 0, 1], volume.affine @ [0, 0, SHUFFLED[keep], 1], atol=1e-4)
    labels = np.zeros(loaded.spatial_shape, np.uint8)
    labels[10:30, 5:20, 0] = 2
    out = write_dicom_seg(loaded.with_array(labels), load_dicom_series(one).datasets, tmp_path / "seg.dcm", {0: "bg", 2: "liver"})
    back, names = read_dicom_seg(out, load_dicom_series(one).datasets)
    assert names == {2: "liver"} and np.array_equal(back, labels)
    assert dciodvfy_errors(out) == []


def seg_on_nifti_grid(seg_path, nifti) -> np.ndarray:
    """Read a SEG with highdicom and put each frame where its ImagePositionPatient falls on the
    NIfTI mask's grid: (X, Y, Z) label values (from TrackingID "label <value>")."""
    import highdicom as hd

    seg = hd.seg.segread(str(seg_path))
    value = {int(d.SegmentNumber): int(str(d.TrackingID).split()[-1]) for d in seg.SegmentSequence}
    to_voxel = np.linalg.inv(nifti.affine) @ LPS_TO_RAS
    frames = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    out = np.zeros(nifti.spatial_shape, np.uint8)
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ijk = to_voxel @ [*map(float, item.PlanePositionSequence[0].ImagePositionPatient), 1.0]
        k = int(round(ijk[2]))
        assert np.allclose(ijk[:3], [0, 0, k], atol=1e-3), f"frame {f + 1} is not on a slice of the mask's grid"
        identification = item.get("SegmentIdentificationSequence") or seg.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence
        number = int(identification[0].ReferencedSegmentNumber)
        assert not out[:, :, k][frames[f].T > 0].any()
        out[:, :, k][frames[f].T > 0] = value[number]
    return out


@pytest.mark.parametrize("source", ["synthetic oblique emri_small, frames shuffled", "real eCT_Supplemental"])
def test_seg_on_multiframe_source_reads_back_onto_the_nifti_voxels(real_data, tmp_path, source):
    import highdicom as hd

    if source.startswith("real"):
        path = real_data / "dicom" / "multiframe" / "eCT_Supplemental.dcm"  # stored frame order is against the normal
    else:
        path, _ = enhanced_mr(real_data, tmp_path / "emr.dcm")
    src = load_dicom_series(path)
    mask = src.volume.with_array(two_label_mask(src.volume.spatial_shape))
    write_volume(mask, tmp_path / "mask.nii.gz")
    out = write_dicom_seg(mask, src.datasets, tmp_path / "seg.dcm", {0: "bg", 1: "liver", 4: "tumour"})
    nifti = read_volume(tmp_path / "mask.nii.gz")
    np.testing.assert_array_equal(seg_on_nifti_grid(out, nifti), nifti.array)
    back, names = read_dicom_seg(out, src.datasets)
    assert names == {1: "liver", 4: "tumour"} and np.array_equal(back, mask.array)

    # each SEG frame references the source frame at its own position, whatever the stored order
    seg = hd.seg.segread(str(out))
    source_ds = pydicom.dcmread(path, stop_before_pixels=True)
    positions = [np.array(p.PlanePositionSequence[0].ImagePositionPatient, float) for p in source_ds.PerFrameFunctionalGroupsSequence]
    for item in seg.PerFrameFunctionalGroupsSequence:
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == source_ds.SOPInstanceUID
        np.testing.assert_allclose(positions[int(ref.ReferencedFrameNumber) - 1], item.PlanePositionSequence[0].ImagePositionPatient, atol=1e-4)
    assert dciodvfy_errors(out) == []


def _flipped(volume: Volume, axis: int) -> Volume:
    """The same physical mask stored in another voxel order: flipped along `axis`, affine to match."""
    flip = np.eye(4)
    flip[axis, axis], flip[axis, 3] = -1, volume.spatial_shape[axis] - 1
    return Volume(np.flip(volume.array, axis).copy(), volume.affine @ flip)


@pytest.mark.parametrize("writer", ["seg", "rtstruct"])
def test_mask_in_another_voxel_order_or_shifted_is_refused(real_data, tmp_path, writer):
    src = load_dicom_series(real_data / "dicom" / "tcia_mr_oblique" / "11_HCropVolume")
    mask = src.volume.with_array(two_label_mask(src.volume.spatial_shape))
    names = {0: "bg", 1: "a", 4: "b"}
    write = write_dicom_seg if writer == "seg" else write_rtstruct
    shifted = np.array(mask.affine)
    shifted[:3, 3] += 0.5 * mask.affine[:3, 2] / np.linalg.norm(mask.affine[:3, 2])
    for bad, problem in [(_flipped(mask, 0), "origin"), (_flipped(mask, 2), "direction"), (Volume(mask.array, shifted), "origin")]:
        assert bad.spatial_shape == mask.spatial_shape
        with pytest.raises(GeometryError, match="not on the source series' voxel grid") as exc:
            write(bad, src.datasets, tmp_path / "out.dcm", names)
        assert problem in str(exc.value) and "\n" not in str(exc.value)
    assert not list(tmp_path.iterdir())
    write(mask, src.datasets, tmp_path / "out.dcm", names)  # the same mask on the source grid is written
    assert (tmp_path / "out.dcm").is_file()


def test_rtstruct_on_multiframe_source_is_refused_in_one_line(real_data, tmp_path):
    path, _ = enhanced_mr(real_data, tmp_path / "emr.dcm")
    src = load_dicom_series(path)
    mask = src.volume.with_array(two_label_mask(src.volume.spatial_shape))
    with pytest.raises(InputError, match="multi-frame object .*write a DICOM SEG") as exc:
        write_rtstruct(mask, src.datasets, tmp_path / "rt.dcm", {0: "bg", 1: "a", 4: "b"})
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "rt.dcm").exists()


def test_single_segment_seg_on_multiframe_source_reads_back(real_data, tmp_path):
    """One segment: highdicom moves the segment identification into the shared functional groups."""
    src = load_dicom_series(real_data / "dicom" / "multiframe" / "eCT_Supplemental.dcm")
    labels = np.zeros(src.volume.spatial_shape, np.uint8)
    labels[100:300, 50:120, 1] = 3  # only on sorted slice 1, which is stored frame 1 (frames run against the normal)
    mask = src.volume.with_array(labels)
    out = write_dicom_seg(mask, src.datasets, tmp_path / "seg.dcm", {0: "bg", 3: "spleen"})
    back, names = read_dicom_seg(out, src.datasets)
    assert names == {3: "spleen"} and np.array_equal(back, labels)
    write_volume(mask, tmp_path / "mask.nii.gz")
    np.testing.assert_array_equal(seg_on_nifti_grid(out, read_volume(tmp_path / "mask.nii.gz")), labels)
