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


def _csv_dataset(root, write_nifti, values_per_case):
    """A CSV manifest (no labels declared) with one case per entry; case i's mask holds its values."""
    root.mkdir(parents=True)
    rows = ["case_id,image,label"]
    rng = np.random.default_rng(0)
    for i, values in enumerate(values_per_case):
        label = np.zeros((12, 10, 8), np.uint8)
        for j, v in enumerate(values):
            label[2 + 2 * j : 4 + 2 * j, 2:8, 2:6] = v
        write_nifti((rng.normal(50, 10, label.shape) + 5 * label).astype(np.float32), root / f"img{i}.nii.gz")
        write_nifti(label, root / f"lab{i}.nii.gz")
        rows.append(f"c{i},img{i}.nii.gz,lab{i}.nii.gz")
    (root / "cases.csv").write_text("\n".join(rows) + "\n")
    return root / "cases.csv"


def test_undeclared_labels_become_the_values_found_and_the_cli_counts_their_cases(tmp_path, write_nifti, capsys):
    from medseg.cli.main import main
    from medseg.preprocess.cache import load_case

    csv = _csv_dataset(tmp_path / "ds", write_nifti, [(1, 2), (1, 2, 255), (1, 7)])  # a stray 7 in one case
    # success returns (exit code 0 from the console script); errors raise SystemExit(1)
    main(["preprocess", str(csv), "--out", str(tmp_path / "work")])
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "not declared" in out
    assert lines["7"].split()[1] == "label_7" and lines["7"].endswith("in 1 case(s)")
    assert lines["1"].endswith("in 3 case(s)") and lines["0"].endswith("in 3 case(s)")
    assert "ignored" in lines["255"] and lines["255"].endswith("in 1 case(s)")
    plan = json.loads((tmp_path / "work" / "plan.json").read_text())
    assert sorted(int(k) for k in plan["labels"]) == [0, 1, 2, 7]  # 255 is unannotated, not a class
    cached = load_case(tmp_path / "work", "c2")
    assert set(np.unique(cached.label).tolist()) == {0, 1, 3}  # value 7 is channel 3
    assert set(np.unique(load_case(tmp_path / "work", "c1").label).tolist()) == {0, 1, 2, 255}
    assert sorted(cached.locations) == [1, 3]


@pytest.mark.parametrize("declared_in", ["config", "json manifest"])
def test_declared_labels_refuse_other_values_naming_case_and_values(tmp_path, write_nifti, declared_in):
    from medseg.preprocess.run import PreprocessConfig

    csv = _csv_dataset(tmp_path / "ds", write_nifti, [(1, 2, 4), (1, 3, 4, 9)])
    labels = {0: "background", 1: "necrosis", 2: "edema", 4: "enhancing"}
    if declared_in == "config":
        config = PreprocessConfig(labels=labels)
    else:  # the same cases as a JSON manifest that declares the labels itself
        config = None
        cases = [{"case_id": f"c{i}", "images": [f"img{i}.nii.gz"], "label": f"lab{i}.nii.gz"} for i in range(2)]
        csv = tmp_path / "ds" / "cases.json"
        csv.write_text(json.dumps({"labels": {str(k): v for k, v in labels.items()}, "cases": cases}))
    with pytest.raises(ValidationFailed) as err:
        run_preprocess(csv, tmp_path / "work", config)
    [problem] = err.value.problems
    assert problem.case == "c1" and "[3, 9]" in problem.problem and "[0, 1, 2, 4]" in problem.problem
    summary = run_preprocess(csv, tmp_path / "work2", config, skip_invalid=True)
    assert summary.processed == ["c0"] and summary.plan.label_values == [0, 1, 2, 4]
    assert summary.cases_per_label == {0: 1, 1: 1, 2: 1, 4: 1} and summary.labels_declared


def test_msd_dataset_json_with_brats_values(msd_factory, write_nifti, tmp_path):
    root = msd_factory(2)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"0": "background", "1": "box", "4": "ball"}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValidationFailed) as err:  # the masks hold 1 and 2; 2 is undeclared
        run_preprocess(root, tmp_path / "work")
    assert {p.case for p in err.value.problems} == {"case_000", "case_001"}
    assert all("[2]" in p.problem for p in err.value.problems)


def test_training_refuses_a_cache_written_with_other_label_values(tmp_path, write_nifti):
    from medseg.errors import InputError
    from medseg.preprocess.case import check_cached_labels
    from medseg.preprocess.plan import Plan

    csv = _csv_dataset(tmp_path / "ds", write_nifti, [(1, 2), (1, 4)])
    summary = run_preprocess(csv, tmp_path / "work")
    check_cached_labels(tmp_path / "work", ["c0", "c1"], summary.plan)  # consistent: no error
    other = Plan.from_dict({**summary.plan.model_dump(), "labels": {0: "bg", 1: "a", 2: "b", 3: "c", 4: "d"}})
    with pytest.raises(InputError, match=r"case c0: cached with label values \[0, 1, 2, 4\]"):
        check_cached_labels(tmp_path / "work", ["c0", "c1"], other)
    # a cache from before the map (no label_values, raw values 0, 1, 4 in label.npy) is named too
    props_path = tmp_path / "work" / "preprocessed" / "c1" / "properties.json"
    props = json.loads(props_path.read_text())
    del props["label_values"]
    props_path.write_text(json.dumps(props))
    with pytest.raises(InputError, match=r"case c1: .*values \[4\]"):
        check_cached_labels(tmp_path / "work", ["c0", "c1"], summary.plan)


def test_non_integer_negative_or_nan_label_values_are_named(tmp_path, write_nifti):
    csv = _csv_dataset(tmp_path / "ds", write_nifti, [(1, 2), (1, 2), (1, 2)])
    for i, bad in enumerate((1.5, -3.0, np.nan)):
        label = np.zeros((12, 10, 8), np.float32)
        label[2:5, 2:5, 2:5] = bad
        write_nifti(label, tmp_path / "ds" / f"lab{i}.nii.gz")
    with pytest.raises(ValidationFailed) as err:
        run_preprocess(csv, tmp_path / "work")
    problems = {p.case: p.problem for p in err.value.problems}
    assert sorted(problems) == ["c0", "c1", "c2"]
    assert "1.5" in problems["c0"] and "-3.0" in problems["c1"] and "nan" in problems["c2"]
    assert all("not integers in 0..65535" in p for p in problems.values())
