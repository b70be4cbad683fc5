"""Strict round trips: write, read back, compare array and affine exactly."""

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.errors import InputError, OutputError
from medseg.io import read_volume, write_volume
from medseg.volume import Volume, affine_from_geometry


def oblique_flipped_affine():
    angle = 0.4
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ np.diag([1, -1, -1])
    return affine_from_geometry((0.7, 1.3, 2.5), (-12.5, 40.25, 3.0), rotation)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_round_trip_is_exact(tmp_path, suffix, dtype):
    rng = np.random.default_rng(1)
    array = (rng.random((7, 6, 5)) * 100).astype(dtype)
    volume = Volume(array, oblique_flipped_affine())
    path = write_volume(volume, tmp_path / f"scan{suffix}")
    back = read_volume(path)
    assert back.array.dtype == dtype
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_multichannel_round_trip(tmp_path, suffix):
    array = np.arange(2 * 4 * 3 * 5, dtype=np.float32).reshape(2, 4, 3, 5)
    volume = Volume(array, oblique_flipped_affine())
    back = read_volume(write_volume(volume, tmp_path / f"mc{suffix}"))
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-5)


def test_nifti_qform_and_sform_both_hold_the_affine(tmp_path):
    volume = Volume(np.zeros((3, 4, 5), np.int16), oblique_flipped_affine())
    path = write_volume(volume, tmp_path / "x.nii.gz")
    image = nib.load(str(path))
    np.testing.assert_allclose(image.get_sform(), volume.affine, atol=1e-12)
    np.testing.assert_allclose(image.get_qform(), volume.affine, atol=1e-5)
    assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1


def test_nifti_and_itk_agree_on_geometry(tmp_path):
    """An independent reader (SimpleITK) sees our NIfTI at the same place in LPS."""
    volume = Volume(np.zeros((3, 4, 5), np.int16), oblique_flipped_affine())
    path = write_volume(volume, tmp_path / "x.nii.gz")
    image = sitk.ReadImage(str(path))
    origin_lps = np.array(image.GetOrigin())
    np.testing.assert_allclose(origin_lps, volume.origin * [-1, -1, 1], atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), volume.spacing, atol=1e-5)


def test_truncated_nifti_is_a_clear_error(tmp_path):
    noise = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    good = write_volume(Volume(noise, np.eye(4)), tmp_path / "good.nii.gz")
    data = good.read_bytes()
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="bad.nii.gz"):
        read_volume(bad)


def test_missing_file_and_unknown_output_suffix(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_volume(tmp_path / "nope.nii.gz")
    volume = Volume(np.zeros((2, 2, 2)), np.eye(4))
    with pytest.raises(OutputError, match=r"\.png"):
        write_volume(volume, tmp_path / "x.png")
    with pytest.raises(OutputError, match="does not exist"):
        write_volume(volume, tmp_path / "missing" / "x.nii.gz")


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import medseg.io.nifti as nifti

    def broken_save(image, filename):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError):
        nifti.write_nifti(Volume(np.zeros((2, 2, 2)), np.eye(4)), tmp_path / "out.nii.gz")
    assert list(tmp_path.iterdir()) == []
