"""Validation reports every problem of every case in one run, then stops (or skips them)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.preprocess.run import run_preprocess
from medseg.preprocess.validate import ValidationFailed


@pytest.fixture
def broken_dataset(msd_factory, write_nifti):
    root = msd_factory(7)
    label = np.zeros((24, 20, 16), np.uint8)
    label[5:8, 5:8, 5:8] = 1
    write_nifti(label, root / "labelsTr" / "case_001.nii.gz", spacing=(1.0, 1.0, 2.0))  # other spacing
    label[1, 1, 1] = 5
    write_nifti(label, root / "labelsTr" / "case_002.nii.gz")  # undeclared value 5
    image = np.ones((24, 20, 16), np.float32)
    image[3, 3, 3] = np.nan
    write_nifti(image, root / "imagesTr" / "case_003.nii.gz")  # NaN
    (root / "imagesTr" / "case_004.nii.gz").unlink()  # missing
    (root / "imagesTr" / "case_005.nii.gz").write_bytes(b"not a nifti file at all")  # unreadable
    return root


def test_all_problems_reported_in_one_run(broken_dataset, tmp_path):
    with pytest.raises(ValidationFailed) as err:
        run_preprocess(broken_dataset, tmp_path / "work")
    problems = {p.case: p for p in err.value.problems}
    assert sorted(problems) == ["case_001", "case_002", "case_003", "case_004", "case_005"]
    assert "spacing" in problems["case_001"].problem and problems["case_001"].file.endswith("labelsTr/case_001.nii.gz")
    assert "[5]" in problems["case_002"].problem
    assert "NaN" in problems["case_003"].problem
    assert "missing" in problems["case_004"].problem
    assert "unreadable" in problems["case_005"].problem
    assert all(p.fix for p in problems.values())
    assert "\n" not in str(err.value) and "5 problem(s) in 5 case(s)" in str(err.value)
    assert not (tmp_path / "work" / "preprocessed").exists()  # stopped before heavy work


def test_skip_invalid_goes_on_without_them(broken_dataset, tmp_path):
    summary = run_preprocess(broken_dataset, tmp_path / "work", skip_invalid=True)
    assert summary.processed == ["case_000", "case_006"]
    assert len(summary.invalid) == 5
    manifest = json.loads((tmp_path / "work" / "manifest.json").read_text())
    assert [c["case_id"] for c in manifest["cases"]] == ["case_000", "case_006"]
    assert all(len(h) == 64 for c in manifest["cases"] for h in c["sha256"].values())


def test_cli_prints_table_and_exits_1(broken_dataset, tmp_path, capsys):
    from medseg.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["preprocess", str(broken_dataset), "--out", str(tmp_path / "work")])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "how to fix" in err and "case_004" in err and "medseg: error: 5 problem(s)" in err
