"""Label codes: the built-in table, codes declared in dataset.json / manifests / the preprocess config,
carried into the plan and the bundle, and read back from the SEG (highdicom) and RTSTRUCT."""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from medseg.errors import ConfigError, InputError
from medseg.label_codes import _BUILTIN, GENERIC, builtin_code, load_code_table, parse_label_codes, resolve_label_codes

DECLARED = {
    "1": {"category": ["91723000", "SCT", "Anatomical Structure"], "type": ["64033007", "SCT", "Kidney"], "modifier": ["24028007", "SCT", "Right"]},
    "ball": {"category": {"value": "49755003", "scheme": "SCT", "meaning": "Morphologically Abnormal Structure"},
             "type": {"value": "4147007", "scheme": "SCT", "meaning": "Mass"}, "rt_type": "GTV"},
}


def _cid_values(cid) -> set[str]:
    return {getattr(cid, name).value for name in cid.dir()}


def test_builtin_table_uses_segmentation_cids_from_pydicom():
    categories, types, tissues = _cid_values(codes.cid7150), _cid_values(codes.cid7151), _cid_values(codes.cid7166)
    for name in _BUILTIN:
        code = builtin_code(name)
        assert code.category[0] in categories, name
        assert code.type[0] in (tissues if code.category[2] == "Tissue" else types), name
        assert code.category[1] == code.type[1] == "SCT"


def test_names_match_with_laterality_and_dataset_context():
    kidney = builtin_code("Kidney_Left")
    assert (kidney.category[2], kidney.type[2], kidney.modifier[2]) == ("Anatomical Structure", "Kidney", "Left")
    assert builtin_code("right lung").modifier[2] == "Right" and builtin_code("right lung").type[2] == "Lung"
    assert builtin_code("Anterior") is None  # a bare direction is not anatomy...
    anterior = builtin_code("Anterior", context="Task04_Hippocampus")  # ...but it is in the MSD Hippocampus set
    assert (anterior.type[2], anterior.modifier[2]) == ("Hippocampus", "Anterior")
    for brats in ("edema", "non-enhancing tumor", "enhancing tumour", "necrotic tumor core"):
        assert builtin_code(brats).category[0] == codes.cid7150.MorphologicallyAbnormalStructure.value, brats
    assert builtin_code("edema").type[0] == codes.SCT.Edema.value
    assert builtin_code("liver").interpreted_type() == "ORGAN" and builtin_code("tumour").interpreted_type() == ""
    assert builtin_code("no such organ") is None


def test_declared_codes_by_value_or_name_and_bad_entries_in_one_line(tmp_path):
    labels = {0: "background", 1: "kidney", 2: "ball"}
    parsed = parse_label_codes(DECLARED, labels, "dataset.json")
    assert parsed[1].modifier == ("24028007", "SCT", "Right") and parsed[2].type[2] == "Mass"
    assert parsed[2].interpreted_type() == "GTV"
    bad = [
        ({"7": DECLARED["1"]}, "label 7, which is not among"),
        ({"spleen": DECLARED["1"]}, "neither a label value nor a label name"),
        ({"1": {"category": ["1", "SCT"], "type": ["2", "SCT", "x"]}}, "label_codes\\['1'\\]"),
        ({"1": {**DECLARED["1"], "rt_type": "TUMOUR"}}, "not a DICOM RT ROI Interpreted Type"),
        ({"1": {**DECLARED["1"], "colour": "red"}}, "label_codes\\['1'\\]"),
    ]
    for raw, message in bad:
        with pytest.raises(InputError, match=message) as exc:
            parse_label_codes(raw, labels, "dataset.json")
        assert str(exc.value).startswith("dataset.json") and "\n" not in str(exc.value)
    (tmp_path / "table.yaml").write_text("Tumour Bed: {category: [91723000, SCT, Anatomical Structure], type: [1234, SCT, Bed]}\n")
    assert load_code_table(tmp_path / "table.yaml")["tumour bed"].type == ("1234", "SCT", "Bed")
    (tmp_path / "bad.yaml").write_text("x: {type: [1, SCT, y]}\n")
    with pytest.raises(ConfigError, match="bad.yaml: entry 'x'"):
        load_code_table(tmp_path / "bad.yaml")


def test_unknown_labels_are_left_out_with_one_warning_naming_them(caplog):
    with caplog.at_level(logging.WARNING):
        out = resolve_label_codes({0: "background", 1: "liver", 2: "gizmo", 3: "widget"})
    assert set(out) == {1}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "2 (gizmo)" in lines[0] and "3 (widget)" in lines[0]


def _msd(root, label_codes=None, nnunet_v2=False, n_cases=2):
    """`n_cases` 24x20x16 cases with labels 1 (kidney), 2 (ball), 3 (spleen), 5 (gizmo)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    training = []
    for i in range(n_cases):
        label = np.zeros((24, 20, 16), np.uint8)
        label[3:9, 4:10, 3:8], label[12:18, 4:10, 3:8], label[3:9, 12:18, 8:13], label[14:20, 12:18, 8:13] = 1, 2, 3, 5
        image = (rng.normal(50, 10, label.shape) + 20 * label).astype(np.float32)
        for folder, array in (("imagesTr", image), ("labelsTr", label)):
            name = f"case_{i}_0000.nii.gz" if nnunet_v2 and folder == "imagesTr" else f"case_{i}.nii.gz"
            nib.save(nib.Nifti1Image(array, np.eye(4)), str(root / folder / name))
        training.append({"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"})
    names = {0: "background", 1: "kidney", 2: "ball", 3: "spleen", 5: "gizmo"}
    if nnunet_v2:
        meta = {"name": "Synthetic", "channel_names": {"0": "MR"}, "labels": {v: k for k, v in names.items()}, "file_ending": ".nii.gz", "numTraining": n_cases}
    else:
        meta = {"name": "Synthetic", "modality": {"0": "MRI"}, "labels": {str(k): v for k, v in names.items()}, "training": training}
    if label_codes is not None:
        meta["label_codes"] = label_codes
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_manifests_read_declared_codes(tmp_path):
    from medseg.data.manifest import Manifest, load_manifest

    assert load_manifest(_msd(tmp_path / "msd", DECLARED)).label_codes[2].type[2] == "Mass"
    v2 = load_manifest(_msd(tmp_path / "v2", {"kidney": DECLARED["1"]}, nnunet_v2=True))
    assert v2.labels[1] == "kidney" and v2.label_codes[1].modifier[2] == "Right"
    # a JSON manifest, and the resolved manifest medseg writes, read back the same codes
    manifest = {"name": "m", "labels": {"0": "background", "1": "kidney", "2": "ball"}, "label_codes": DECLARED,
                "cases": [{"case_id": "a", "images": ["a.nii.gz"]}]}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    loaded = load_manifest(tmp_path / "m.json")
    assert loaded.label_codes[1].type[2] == "Kidney" and loaded.label_codes[2].rt_type == "GTV"
    (tmp_path / "resolved.json").write_text(loaded.model_dump_json())
    assert load_manifest(tmp_path / "resolved.json").label_codes == loaded.label_codes
    assert "label_codes" in Manifest.model_json_schema()["properties"]


def test_preprocess_puts_codes_in_the_plan(tmp_path, caplog):
    from medseg.preprocess.plan import Plan
    from medseg.preprocess.run import load_preprocess_config, run_preprocess

    dataset = _msd(tmp_path / "msd", {"1": DECLARED["1"]})
    (tmp_path / "table.json").write_text(json.dumps({"ball": {"category": ["91723000", "SCT", "Anatomical Structure"], "type": ["4147007", "SCT", "Mass"]}}))
    (tmp_path / "preprocess.yaml").write_text("label_code_table: table.json\nlabel_codes: {spleen: {category: [91723000, SCT, Anatomical Structure], type: [78961009, SCT, Spleen], rt_type: AVOIDANCE}}\n")
    with caplog.at_level(logging.WARNING):
        run_preprocess(dataset, tmp_path / "work", load_preprocess_config(tmp_path / "preprocess.yaml"))
    plan = Plan.load(tmp_path / "work" / "plan.json")
    assert set(plan.label_codes) == {1, 2, 3}
    assert plan.label_codes[1].modifier[2] == "Right"  # from dataset.json
    assert plan.label_codes[2].type[2] == "Mass"  # from the user table
    assert plan.label_codes[3].rt_type == "AVOIDANCE"  # from the preprocess config
    assert any("5 (gizmo)" in r.getMessage() for r in caplog.records)
    # built-in names when nothing is declared
    run_preprocess(_msd(tmp_path / "plain"), tmp_path / "work2")
    plan = Plan.load(tmp_path / "work2" / "plan.json")
    assert plan.label_codes[1].type[0] == codes.SCT.Kidney.value and plan.label_codes[3].type[0] == codes.SCT.Spleen.value


def test_seg_segments_and_rtstruct_rois_carry_the_codes(real_data, tmp_path, caplog):
    import highdicom as hd

    from medseg.io.dicom import load_dicom_series
    from medseg.io.dicom import write_dicom_seg
    from medseg.io.dicom import write_rtstruct

    src = load_dicom_series(real_data / "dicom" / "tcia_mr_oblique" / "11_HCropVolume")
    labels = np.zeros(src.volume.spatial_shape, np.uint8)
    labels[2:12, 3:15, 4:20], labels[16:30, 20:40, 10:30], labels[5:15, 30:45, 25:38] = 1, 2, 7
    names = {0: "background", 1: "kidney", 2: "ball", 7: "gizmo"}
    given = {k: c.as_json() for k, c in parse_label_codes(DECLARED, names, "dataset.json").items()}
    mask = src.volume.with_array(labels)
    with caplog.at_level(logging.WARNING):
        seg_path = write_dicom_seg(mask, src.datasets, tmp_path / "seg.dcm", names, given)
    assert any("7 (gizmo)" in r.getMessage() for r in caplog.records)

    seg = hd.seg.segread(str(seg_path))
    read = {}
    for d in seg.SegmentSequence:
        modifiers = d.SegmentedPropertyTypeCodeSequence[0].get("SegmentedPropertyTypeModifierCodeSequence", [])
        read[str(d.SegmentLabel)] = (
            tuple(str(v) for v in (d.segmented_property_category.value, d.segmented_property_category.scheme_designator, d.segmented_property_category.meaning)),
            tuple(str(v) for v in (d.segmented_property_type.value, d.segmented_property_type.scheme_designator, d.segmented_property_type.meaning)),
            tuple((m.CodeValue, m.CodingSchemeDesignator, m.CodeMeaning) for m in modifiers),
        )
    assert read["kidney"] == (("91723000", "SCT", "Anatomical Structure"), ("64033007", "SCT", "Kidney"), (("24028007", "SCT", "Right"),))
    assert read["ball"] == (("49755003", "SCT", "Morphologically Abnormal Structure"), ("4147007", "SCT", "Mass"), ())
    assert read["gizmo"] == (GENERIC.category, GENERIC.type, ())

    rt_path = write_rtstruct(mask, src.datasets, tmp_path / "rt.dcm", names, given)
    ds = pydicom.dcmread(rt_path)
    roi_names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    observed = {roi_names[int(o.ReferencedROINumber)]: (o.RTROIInterpretedType, o.RTROIIdentificationCodeSequence[0].CodeValue)
                for o in ds.RTROIObservationsSequence}
    assert observed == {"kidney": ("ORGAN", "64033007"), "ball": ("GTV", "4147007"), "gizmo": ("", GENERIC.type[0])}

    from test_dicom_seg import dciodvfy_errors

    assert dciodvfy_errors(seg_path) == [] and dciodvfy_errors(rt_path) == []


@pytest.mark.slow
def test_trained_bundle_carries_the_plan_codes(tmp_path, monkeypatch):
    """dataset.json -> plan.json -> training -> bundle.json: the codes a SEG written with the bundle uses."""
    from medseg.bundle import load_bundle
    from medseg.preprocess.plan import Plan
    from medseg.preprocess.run import run_preprocess
    from medseg.training.config import load_train_config
    from medseg.training.loop import train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    run_preprocess(_msd(tmp_path / "msd", {"1": DECLARED["1"]}, n_cases=5), tmp_path / "work")
    config = load_train_config("configs/unet3d.yaml", {"epochs": 1, "iterations_per_epoch": 1, "num_workers": 0, "precision": "fp32",
                                                 "batch_size": 1, "patch_size": [16, 16, 16]})
    result = train(tmp_path / "work", config, preset_name="unet3d", fold=None)
    plan = Plan.load(tmp_path / "work" / "plan.json")
    bundle = load_bundle(result.bundle_dir)
    assert json.loads((result.bundle_dir / "bundle.json").read_text())["label_codes"]["1"]["modifier"] == ["24028007", "SCT", "Right"]
    assert {k: v for k, v in bundle.label_codes.items()} == {k: c.as_json() for k, c in plan.label_codes.items()}
    assert set(bundle.label_codes) == {1, 3}  # kidney declared, spleen built in; "ball" and "gizmo" have none
