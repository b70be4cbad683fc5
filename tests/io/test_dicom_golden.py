"""medseg.io.dicom on the real series in ../shared/data/dicom, against independent references:
dicom2nifti's expected NIfTIs, dcm2niix's conversions, TotalSegmentator's reference grid and
highdicom's enhanced multi-frame conversion."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medseg.errors import DicomError
from medseg.io.dicom import list_series, load_dicom_series, read_dicom
from medseg.io.nifti import read_nifti
from medseg.volume import Volume

# the dicom2nifti cases shipped in tests/data (tests/data/ATTRIBUTION.md says which were left out and why)
DICOM2NIFTI_CASES = [
    "ge/anatomical/001_single_slice",
    "generic/compressed_j2k/001",
    "generic/compressed_jpeg/001",
    "philips/anatomical/001",
]
TCIA_SERIES = ["11-T1post-18670", "11_HCropVolume"]


def assert_same_volume(ours: Volume, reference: Volume, exact: bool = True) -> None:
    """Voxels and affine agree once both are in RAS orientation (transposes and flips only)."""
    a, b = ours.reoriented("RAS"), reference.reoriented("RAS")
    assert a.spatial_shape == b.spatial_shape
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-3)
    if exact:
        np.testing.assert_array_equal(a.array, b.array)


def dcm2niix(series_dir: Path, out_dir: Path) -> dict[str, Volume]:
    """dcm2niix's conversions of `series_dir`, by output file name, with its scaling applied."""
    if shutil.which("dcm2niix") is None:
        pytest.skip("dcm2niix is not installed (apt-get install dcm2niix)")
    out_dir.mkdir()
    subprocess.run(["dcm2niix", "-z", "y", "-f", "out", "-o", str(out_dir), str(series_dir)], check=True, capture_output=True)
    volumes = {}
    for path in out_dir.glob("*.nii.gz"):
        image = nib.load(path)
        volumes[path.name] = Volume(image.get_fdata(), image.affine)
    return volumes


def test_every_dicom2nifti_case_is_tested(real_data):
    root = real_data / "dicom" / "dicom2nifti"
    found = sorted(str(p.relative_to(root)).replace("_ground_truth.nii.gz", "") for p in root.rglob("*_ground_truth.nii.gz"))
    assert sorted(DICOM2NIFTI_CASES + ["failing/slicecount/001"]) == found


@pytest.mark.parametrize("case", DICOM2NIFTI_CASES)
def test_dicom2nifti_series_match_ground_truth(real_data, case):
    root = real_data / "dicom" / "dicom2nifti"
    assert_same_volume(read_dicom(root / case), read_nifti(root / f"{case}_ground_truth.nii.gz"))


def test_dicom2nifti_failing_two_slice_series_converts_correctly(real_data):
    root = real_data / "dicom" / "dicom2nifti" / "failing" / "slicecount"
    assert_same_volume(read_dicom(root / "001"), read_nifti(root / "001_ground_truth.nii.gz"))


def test_dicom2nifti_failing_gantry_tilt_refused_then_matches_dcm2niix(real_data, tmp_path):
    series = real_data / "dicom" / "dicom2nifti" / "failing" / "gantrytilting" / "001"
    with pytest.raises(DicomError, match=r"gantry tilt of 14\.00 degrees.*--resample-irregular"):
        read_dicom(series)
    ours = read_dicom(series, resample_irregular=True).reoriented("RAS")
    # dcm2niix writes the tilt-corrected volume on the same grid, 9 rows longer along j
    theirs = dcm2niix(series, tmp_path / "out")["out_Tilt_1.nii.gz"].reoriented("RAS")
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-3)
    overlap = theirs.array[:, : ours.array.shape[1], :]
    assert overlap.shape == ours.array.shape
    np.testing.assert_allclose(ours.array, overlap, atol=0.5)  # dcm2niix rounds to integers


def test_totalsegmentator_jpeg2000_series_lands_on_the_reference_grid(real_data):
    root = real_data / "dicom" / "totalsegmentator"
    volume = read_dicom(root / "ct_series_4slices")
    reference = read_nifti(root / "ct_series_4slices_reference_seg.nii.gz")
    # the reference is stored LAS (rows flipped); our array follows the DICOM rows (LPS)
    assert volume.reoriented(reference.orientation).geometry_differences(reference) == []
    np.testing.assert_allclose(volume.reoriented(reference.orientation).affine, reference.affine, atol=1e-3)
    assert volume.array.dtype == np.int16 and volume.array.min() == -1024  # RescaleIntercept applied
    assert volume.meta.modality == "CT" and volume.meta.series_uid is None  # its SeriesInstanceUID is empty


def test_totalsegmentator_series_voxels_match_dcm2niix(real_data, tmp_path):
    series = real_data / "dicom" / "totalsegmentator" / "ct_series_4slices"
    (theirs,) = dcm2niix(series, tmp_path / "out").values()
    assert_same_volume(read_dicom(series), theirs)


@pytest.mark.parametrize("name", TCIA_SERIES)
def test_tcia_oblique_series_match_dcm2niix(real_data, tmp_path, name):
    series = real_data / "dicom" / "tcia_mr_oblique" / name
    (theirs,) = dcm2niix(series, tmp_path / "out").values()
    ours = read_dicom(series)
    assert_same_volume(ours, theirs)

    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    files = sorted(series.iterdir())
    names = [f"x{n:04d}" for n in range(len(files))]
    random.Random(name).shuffle(names)
    for f, new in zip(files, names):
        shutil.copy(f, shuffled / new)
    again = read_dicom(shuffled)
    np.testing.assert_array_equal(again.array, ours.array)
    np.testing.assert_array_equal(again.affine, ours.affine)


def test_enhanced_multiframe_equals_its_legacy_source(real_data, tmp_path):
    import highdicom as hd

    series = real_data / "dicom" / "tcia_mr_oblique" / "11-T1post-18670"
    legacy = [pydicom.dcmread(f) for f in sorted(series.iterdir())]
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=legacy,
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=99,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
    )
    enhanced.save_as(tmp_path / "enhanced.dcm")
    loaded = load_dicom_series(tmp_path / "enhanced.dcm")
    assert_same_volume(loaded.volume, read_dicom(series))
    np.testing.assert_allclose(loaded.volume.affine, read_dicom(series).affine, atol=1e-6)
    assert len(loaded.datasets) == 1 and loaded.datasets[0].SOPInstanceUID == enhanced.SOPInstanceUID


@pytest.mark.parametrize("syntax", [pydicom.uid.RLELossless, pydicom.uid.JPEGLSLossless, pydicom.uid.JPEG2000Lossless])
def test_recompressed_real_series_decodes_to_the_same_voxels(real_data, tmp_path, syntax):
    series = real_data / "dicom" / "tcia_mr_oblique" / "11_HCropVolume"
    for f in series.iterdir():
        ds = pydicom.dcmread(f)
        ds.compress(syntax)
        ds.save_as(tmp_path / f.name)
    assert pydicom.dcmread(tmp_path / "1.dcm", stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    assert_same_volume(read_dicom(tmp_path), read_dicom(series))


def test_datasets_follow_k_and_reference_source_instances(real_data):
    series = real_data / "dicom" / "tcia_mr_oblique" / "11-T1post-18670"
    loaded = load_dicom_series(series)
    assert len(loaded.datasets) == loaded.volume.spatial_shape[2]
    lps = np.diag([-1, -1, 1, 1]) @ loaded.volume.affine
    for k, ds in enumerate(loaded.datasets):
        np.testing.assert_allclose(lps @ [0, 0, k, 1], [*map(float, ds.ImagePositionPatient), 1], atol=1e-3)
    assert len({ds.SOPInstanceUID for ds in loaded.datasets}) == len(loaded.datasets)


def test_mixed_folder_lists_image_series_only(real_data, tmp_path):
    # the rtstruct mock folder holds CT slices and three RTSTRUCTs: one image series
    summaries = list_series(real_data / "dicom" / "rtstruct" / "mock_data")
    assert [(s.modality, s.num_slices) for s in summaries] == [("CT", 2)]
    # a SEG beside its CT slices is not an image series either
    shutil.copytree(real_data / "dicom" / "dcmqi" / "ct-3slice", tmp_path / "ct")
    shutil.copy(real_data / "dicom" / "dcmqi" / "liver.dcm", tmp_path / "liver.dcm")
    assert read_dicom(tmp_path).spatial_shape == (512, 512, 3)
