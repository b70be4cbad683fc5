"""`medseg convert` / `medseg info` on bad DICOM input, run as a user would (a subprocess):
one line on stderr, exit code 1, no output file; and no patient data in what is printed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.io.dicom import read_dicom
from medseg.io.nifti import read_nifti


REPO = Path(__file__).resolve().parents[2]


def medseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def convert_fails(folder: Path, tmp_path: Path) -> str:
    """Run `medseg convert folder out.nii.gz`, check the failure contract, return the stderr line."""
    out = tmp_path / "out.nii.gz"
    result = medseg("convert", str(folder), str(out))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("medseg: error: ")
    assert not out.exists() and not list(tmp_path.glob("*.nii*"))
    return lines[0]


def copy_series(real_data: Path, name: str, dest: Path) -> Path:
    return Path(shutil.copytree(real_data / "dicom" / "tcia_mr_oblique" / name, dest))


def test_convert_reads_a_series(real_data, tmp_path):
    series = real_data / "dicom" / "tcia_mr_oblique" / "11_HCropVolume"
    result = medseg("convert", str(series), str(tmp_path / "out.nii.gz"))
    assert result.returncode == 0, result.stderr
    written, source = read_nifti(tmp_path / "out.nii.gz"), read_dicom(series)
    np.testing.assert_array_equal(written.array, source.array)
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)


def test_empty_folder(tmp_path):
    (tmp_path / "in").mkdir()
    assert "empty folder" in convert_fails(tmp_path / "in", tmp_path)


def test_folder_of_non_dicom_files(tmp_path):
    (tmp_path / "in").mkdir()
    for n in range(3):
        (tmp_path / "in" / f"page{n}.html").write_text("<html></html>")
    assert "none of its 3 files is DICOM" in convert_fails(tmp_path / "in", tmp_path)


def test_truncated_pixel_data(real_data, tmp_path):
    folder = copy_series(real_data, "11_HCropVolume", tmp_path / "in")
    victim = folder / "17.dcm"
    victim.write_bytes(victim.read_bytes()[:-100])
    line = convert_fails(folder, tmp_path)
    assert str(victim) in line and "pixel data" in line


def test_two_series_are_listed(real_data, tmp_path):
    folder = tmp_path / "in"
    copy_series(real_data, "11-T1post-18670", folder / "a")
    copy_series(real_data, "11_HCropVolume", folder / "b")
    (folder / "notes.txt").write_text("a non-DICOM file is skipped and counted, still one line on stderr")
    uids = [pydicom.dcmread(next((folder / s).iterdir()), stop_before_pixels=True).SeriesInstanceUID for s in "ab"]
    line = convert_fails(folder, tmp_path)
    assert "2 image series" in line and all(uid in line for uid in uids) and "--series" in line

    result = medseg("convert", str(folder), str(tmp_path / "b.nii.gz"), "--series", uids[1])
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(read_nifti(tmp_path / "b.nii.gz").array, read_dicom(folder / "b").array)


def test_4d_series(real_data, tmp_path):
    source = real_data / "dicom" / "tcia_mr_oblique" / "11_HCropVolume"
    folder = tmp_path / "in"
    folder.mkdir()
    for f in source.iterdir():  # the same positions twice, as a second time point of one series
        shutil.copy(f, folder / f.name)
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.AcquisitionNumber, ds.TemporalPositionIdentifier = 2, 2
        ds.save_as(folder / f"t2_{f.name}")
    line = convert_fails(folder, tmp_path)
    assert "4D acquisition: 80 images at only 40 slice positions" in line
    assert "AcquisitionNumber" in line


def test_info_lists_series_without_patient_data(real_data, tmp_path):
    folder = tmp_path / "in"
    copy_series(real_data, "11-T1post-18670", folder / "a")
    copy_series(real_data, "11_HCropVolume", folder / "b")
    headers = [pydicom.dcmread(next((folder / s).iterdir()), stop_before_pixels=True) for s in "ab"]
    for as_json in ([], ["--json"]):
        result = medseg("info", str(folder), *as_json)
        assert result.returncode == 0, result.stderr
        text = result.stdout + result.stderr
        assert all(ds.SeriesInstanceUID in result.stdout for ds in headers)
        assert "22 slices" in result.stdout or '"num_slices": 22' in result.stdout
        for ds in headers:
            for tag in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
                value = str(ds.get(tag, "") or "")
                if len(value) > 2:
                    assert value not in text, tag
