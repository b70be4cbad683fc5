"""Manifest parsing: MSD folder, nnU-Net v2 channels (_0000/_0001), CSV and JSON manifests."""

from __future__ import annotations

import json

import pytest

from medseg.data.manifest import Manifest, load_manifest
from medseg.errors import InputError


def test_msd_hippocampus(shared_data):
    m = load_manifest(shared_data / "hippocampus")
    assert len(m.cases) == 208 and m.name == "Hippocampus"
    assert m.labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert m.modalities == ["MRI"]
    case = m.cases[0]
    assert case.case_id == "hippocampus_001" and case.images[0].endswith("imagesTr/hippocampus_001.nii.gz")
    assert case.label.endswith("labelsTr/hippocampus_001.nii.gz")


def test_nnunet_v2_multichannel(tmp_path):
    root = tmp_path / "Dataset001_X"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for cid in ("a_001", "a_002"):
        for ch in ("0000", "0001"):
            (root / "imagesTr" / f"{cid}_{ch}.nii.gz").write_bytes(b"")
        (root / "labelsTr" / f"{cid}.nii.gz").write_bytes(b"")
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "prostate": 1}, "file_ending": ".nii.gz", "numTraining": 2})
    )
    m = load_manifest(root)
    assert [c.case_id for c in m.cases] == ["a_001", "a_002"]
    assert [p.rsplit("/", 1)[1] for p in m.cases[1].images] == ["a_002_0000.nii.gz", "a_002_0001.nii.gz"]
    assert m.channel_names == ["T2", "ADC"] and m.labels == {0: "background", 1: "prostate"}


def test_csv_with_channels_split_modality(tmp_path):
    (tmp_path / "scans").mkdir()
    (tmp_path / "m.csv").write_text(
        "case_id,image_t1,image_t2,label,split,modality\n"
        "p1,scans/p1_t1.nii.gz,scans/p1_t2.nii.gz,scans/p1_seg.nii.gz,train,MR;MR\n"
        "p2,/abs/dicom_folder,scans/p2_t2.nii.gz,,test,MR;MR\n"
    )
    m = load_manifest(tmp_path / "m.csv")
    assert m.channel_names == ["t1", "t2"] and m.modalities == ["MR", "MR"]
    assert m.cases[0].images == [str(tmp_path / "scans/p1_t1.nii.gz"), str(tmp_path / "scans/p1_t2.nii.gz")]
    assert m.cases[0].split == "train" and m.cases[1].label is None and m.cases[1].images[0] == "/abs/dicom_folder"


def test_json_manifest_and_schema_example(tmp_path):
    data = {
        "name": "liver",
        "channel_names": ["ct"],
        "modalities": ["CT"],
        "labels": {"0": "background", "1": "liver"},
        "cases": [{"case_id": "c1", "images": ["ct/c1"], "label": "seg/c1.nii.gz", "split": "train"}],
    }
    (tmp_path / "m.json").write_text(json.dumps(data))
    m = load_manifest(tmp_path / "m.json")
    assert m.labels == {0: "background", 1: "liver"} and m.cases[0].images == [str(tmp_path / "ct/c1")]
    data["cases"][0]["imgs"] = []
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="imgs"):
        load_manifest(tmp_path / "bad.json")


def test_shipped_examples_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "data_manifest"
    assert len(load_manifest(root / "example.csv").cases) == 2
    assert len(load_manifest(root / "example.json").cases) == 2
    schema = json.loads((root / "schema.json").read_text())
    assert schema == Manifest.model_json_schema()


def test_errors(tmp_path):
    (tmp_path / "dup.csv").write_text("case_id,image\na,x.nii.gz\na,y.nii.gz\n")
    with pytest.raises(InputError, match="more than once"):
        load_manifest(tmp_path / "dup.csv")
    (tmp_path / "cols.csv").write_text("id,path\na,x.nii.gz\n")
    with pytest.raises(InputError, match="case_id"):
        load_manifest(tmp_path / "cols.csv")
    with pytest.raises(InputError, match="dataset.json"):
        load_manifest(tmp_path)


def test_label_values_with_gaps_are_kept_as_declared(tmp_path):
    root = tmp_path / "Dataset002_BraTS"
    (root / "imagesTr").mkdir(parents=True)
    (root / "imagesTr" / "b_001_0000.nii.gz").write_bytes(b"")
    (root / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "T1"}, "labels": {"background": 0, "necrosis": 1, "edema": 2, "enhancing": 4}, "file_ending": ".nii.gz"}))
    assert load_manifest(root).labels == {0: "background", 1: "necrosis", 2: "edema", 4: "enhancing"}
    data = {"labels": {"0": "background", "1000": "vertebra"}, "cases": [{"case_id": "c1", "images": ["a.nii.gz"]}]}
    (tmp_path / "m.json").write_text(json.dumps(data))
    assert load_manifest(tmp_path / "m.json").labels == {0: "background", 1000: "vertebra"}
