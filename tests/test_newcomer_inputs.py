"""Issue 23 (a newcomer's first hour), input side: nothing reinterpreted silently.

Swapped image and label are caught by validation (nothing written; with --skip-invalid the case is
named and left out), a folder mixing DICOM and NIfTI is refused, preprocess reads tilted DICOM
with --resample-irregular, convert splits a 4D series, Typer usage errors exit 1 in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medseg.cli.main import main
from medseg.data.cases import discover_cases
from medseg.errors import InputError
from medseg.io import read_volume, write_volume
from medseg.volume import Volume

REPO = Path(__file__).resolve().parents[1]
TILTED = REPO / "tests" / "data" / "dicom" / "dicom2nifti" / "failing" / "gantrytilting" / "001"


def cli(*args) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def case(root: Path, name: str) -> tuple[Path, Path]:
    """An integer-valued MR-like image (uint16, many values) and its two-label mask."""
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    label = np.zeros((16, 16, 12), np.uint8)
    label[4:9, 4:9, 3:7], label[10:13, 10:13, 5:8] = 1, 2
    image = (rng.integers(100, 1500, label.shape) + 400 * label.astype(np.int64)).astype(np.uint16)
    return (write_volume(Volume(image, np.eye(4)), root / f"{name}.nii.gz"),
            write_volume(Volume(label, np.eye(4)), root / f"{name}_seg.nii.gz"))


def manifest(root: Path, rows) -> Path:
    path = root / "manifest.csv"
    path.write_text("case_id,image,label\n" + "".join(f"{c},{i},{l}\n" for c, i, l in rows))
    return path


def test_swapped_image_and_label_fail_validation_and_nothing_is_written(tmp_path, capsys):
    rows = [(f"c{i}", *case(tmp_path, f"c{i}")) for i in range(3)]
    rows[1] = (rows[1][0], rows[1][2], rows[1][1])  # c1: image and label swapped
    csv = manifest(tmp_path, rows)
    assert cli("preprocess", csv, "--out", tmp_path / "work") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "case c1" in err[0] and "image and label look swapped" in err[0] and "3 integer values" in err[0]
    assert not (tmp_path / "work").exists()

    assert cli("preprocess", csv, "--out", tmp_path / "work", "--skip-invalid") == 0
    captured = capsys.readouterr()
    assert "c1" in captured.err and "left out 1 invalid case(s)" in captured.err
    plan = json.loads((tmp_path / "work" / "plan.json").read_text())
    assert sorted(int(k) for k in plan["labels"]) == [0, 1, 2]
    assert sorted(p.name for p in (tmp_path / "work" / "preprocessed").iterdir()) == ["c0", "c2"]


def test_a_label_with_hundreds_of_values_is_refused_even_when_the_image_looks_normal(tmp_path, capsys):
    image, _ = case(tmp_path, "a")
    other, _ = case(tmp_path, "b")  # the label column names another scan
    assert cli("preprocess", manifest(tmp_path, [("a", image, other)]), "--out", tmp_path / "work") == 1
    err = capsys.readouterr().err
    assert "distinct values; a label map holds a few" in err and not (tmp_path / "work").exists()


def test_a_folder_mixing_a_dicom_series_and_nifti_is_refused_listing_both(tmp_path):
    folder = shutil.copytree(TILTED, tmp_path / "mixed")
    case(folder, "scan")
    with pytest.raises(InputError, match=r"holds both DICOM files \(4, e\.g\. IM-0001-0001\.dcm\) and 2 other scan\(s\) \(scan\.nii\.gz, scan_seg"):
        discover_cases(folder)
    cases, many = discover_cases(TILTED)  # the series alone: one case
    assert not many and cases[0][1] == [TILTED]


@pytest.mark.slow
def test_preprocess_reads_a_tilted_dicom_series_with_resample_irregular(tmp_path, capsys):
    regular = read_volume(TILTED, resample_irregular=True)
    label = np.zeros(regular.spatial_shape, np.uint8)
    label[200:300, 200:300, 1:3] = 1
    mask = write_volume(Volume(label, regular.affine), tmp_path / "tilted_seg.nii.gz")
    csv = manifest(tmp_path, [("tilted", TILTED, mask)])
    assert cli("preprocess", csv, "--out", tmp_path / "refused") == 1
    assert "--resample-irregular" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    assert cli("preprocess", csv, "--out", tmp_path / "work", "--resample-irregular") == 0
    properties = json.loads((tmp_path / "work" / "preprocessed" / "tilted" / "properties.json").read_text())
    assert properties  # the case went through
    config = tmp_path / "pre.yaml"
    config.write_text("resample_irregular: true\n")
    assert cli("preprocess", csv, "--out", tmp_path / "work2", "--config", config) == 0


def test_convert_splits_a_4d_series_one_file_per_volume(tmp_path):
    from module_loader import load_module

    folder = load_module(REPO / "tests" / "io" / "test_irregular.py", "_newcomer_irregular").write_4d(tmp_path / "d")
    assert cli("convert", folder, tmp_path / "out.nii.gz", "--split-volumes") == 0
    written = sorted(p.name for p in tmp_path.glob("out_v*.nii.gz"))
    assert written == ["out_v000.nii.gz", "out_v001.nii.gz"]
    for v, name in enumerate(written):
        np.testing.assert_array_equal(read_volume(tmp_path / name).array[0, 0, :], [10 * (v + 1) + k for k in range(3)])
    assert cli("convert", folder, tmp_path / "one.nrrd", "--volume", "1") == 0
    np.testing.assert_array_equal(read_volume(tmp_path / "one.nrrd").array[0, 0, :], [20, 21, 22])


def test_usage_errors_exit_1_in_one_line(tmp_path, capsys):
    assert cli("train", tmp_path, "--no-such-option") == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "--no-such-option" in err[0]
    assert cli("infer") == 1  # a missing argument
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1


def test_a_run_id_with_workdir_looks_only_there_and_leaves_no_store_behind(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "work").mkdir()
    scan = write_volume(Volume(np.zeros((8, 8, 8), np.float32), np.eye(4)), tmp_path / "scan.nii.gz")
    assert cli("infer", scan, "--model", "0123456789abcdef0123456789abcdef", "--workdir", tmp_path / "work", "-o", tmp_path / "m.nii.gz") == 1
    assert "has no MLflow store" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["scan.nii.gz", "work"]


def test_info_says_its_coordinates_are_ras(tmp_path, capsys):
    lps_like = np.diag([-1.0, -1.0, 2.0, 1.0])
    scan = write_volume(Volume(np.zeros((4, 4, 4), np.int16), lps_like), tmp_path / "scan.nii.gz")
    assert cli("info", scan) == 0
    out = capsys.readouterr().out
    assert "coordinates: RAS+ mm" in out and "origin_ras_mm: [0.0, 0.0, 0.0]" in out and "orientation: LPS" in out
