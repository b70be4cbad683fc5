"""Which labels are countable ("things"): declared in dataset.json or a JSON manifest, by value or
name, checked against the labels, and carried into the plan for instance and panoptic outputs."""

from __future__ import annotations

import json

import pytest

from medseg.data.manifest import load_manifest, parse_things
from medseg.errors import InputError

LABELS = {0: "background", 1: "lesion", 2: "organ", 4: "node"}


def test_things_by_value_or_name_are_sorted_values():
    assert parse_things([4, "lesion"], LABELS, "dataset.json") == [1, 4]
    assert parse_things(None, LABELS, "dataset.json") is None


@pytest.mark.parametrize("things, found", [([3], "3"), (["tumour"], "tumour"), ([0], "0"), ("lesion", "list")])
def test_undeclared_things_are_refused_in_one_line(things, found):
    with pytest.raises(InputError) as info:
        parse_things(things, LABELS, "dataset.json")
    message = str(info.value)
    assert "dataset.json" in message and found in message and "\n" not in message


def test_dataset_json_and_json_manifest_carry_things(tmp_path):
    root = tmp_path / "Dataset002_Lesions"
    (root / "imagesTr").mkdir(parents=True)
    (root / "imagesTr" / "a_0000.nii.gz").write_bytes(b"")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR"}, "labels": {"background": 0, "lesion": 1, "organ": 2}, "things": ["lesion"]}))
    assert load_manifest(root).things == [1]
    manifest = {"name": "x", "labels": {"0": "background", "1": "lesion", "2": "organ"}, "things": [2, 1],
                "cases": [{"case_id": "c1", "images": ["c1.nii.gz"]}]}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    assert load_manifest(tmp_path / "m.json").things == [1, 2]
