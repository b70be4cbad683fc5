"""Label values with a gap (BraTS's {0, 1, 2, 4}) through the whole CLI: preprocess, train, infer
(NIfTI, DICOM SEG, RTSTRUCT) and evaluate come back with exactly those values on the source grid."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from cli_helpers import run

NAMES = {0: "background", 1: "necrosis", 2: "edema", 4: "enhancing"}
SHAPE = (24, 20, 16)
SPACING = (1.5, 1.5, 2.0)
INTENSITY = {0: 100.0, 1: 250.0, 2: 175.0, 4: 400.0}  # easy to tell apart: a tiny net learns it in a few steps


def brats_like_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, label uint8) of SHAPE: an edema ball (2) holding an enhancing shell (4) around a
    necrotic core (1), as BraTS labels them; a zero border that cropping removes."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform([8, 8, 7], [16, 12, 9])
    dist = np.linalg.norm(np.indices(SHAPE).transpose(1, 2, 3, 0) - centre, axis=-1)
    label = np.zeros(SHAPE, np.uint8)
    label[dist < 6.5] = 2
    label[dist < 4.5] = 4
    label[dist < 3] = 1
    image = np.vectorize(INTENSITY.get)(label) + rng.normal(0, 8, SHAPE)
    image[:2] = 0
    return image.astype(np.float32), label


def source_affine() -> np.ndarray:
    """A flipped, shifted grid: the masks must come back on exactly this one."""
    affine = np.diag([-SPACING[0], SPACING[1], SPACING[2], 1.0])
    affine[:3, 3] = [40.0, -25.0, 12.0]
    return affine


def write_msd(root: Path, n_cases: int) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(n_cases):
        image, label = brats_like_case(i)
        nib.save(nib.Nifti1Image(image, source_affine()), str(root / "imagesTr" / f"case_{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label, source_affine()), str(root / "labelsTr" / f"case_{i}.nii.gz"))
        training.append({"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"})
    meta = {"name": "BratsLike", "modality": {"0": "MR"}, "labels": {str(k): v for k, v in NAMES.items()}, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def write_dicom_series(folder: Path, image: np.ndarray) -> None:
    """`image` (X, Y, Z) as an MR series: columns along X, rows along Y, slice k at z = 2 k mm."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True)
    series, frame = generate_uid(), generate_uid()
    for k in range(image.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID = MRImageStorage
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.1", series, frame
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 1, k + 1
        ds.PatientName, ds.PatientID, ds.StudyDate = "Test^Label", "LV-1", "20260101"
        ds.ImagePositionPatient = [10.0, -20.0, 30.0 + SPACING[2] * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [SPACING[1], SPACING[0]]  # row spacing (along Y), column spacing (along X)
        ds.SliceThickness = SPACING[2]
        ds.Rows, ds.Columns = image.shape[1], image.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(np.round(image[:, :, k].T), dtype=np.int16).tobytes()
        ds.save_as(folder / f"im{k:03d}.dcm", enforce_file_format=True)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


@pytest.fixture
def no_tracking_server(monkeypatch):
    """MLFLOW_TRACKING_URI at a loopback port where nothing listens: tracking goes quiet at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")


@pytest.mark.slow
def test_labels_0_1_2_4_go_through_preprocess_train_infer_and_evaluate(tmp_path, no_tracking_server, capsys):
    dataset = write_msd(tmp_path / "BratsLike", 6)
    work = tmp_path / "work"
    pre_cfg = tmp_path / "preprocess.yaml"
    pre_cfg.write_text(yaml.safe_dump({"overrides": {"configurations": {"3d": {
        "patch_size": [16, 16, 16], "batch_size": 2, "features_per_stage": [8, 16],
        "strides": [[1, 1, 1], [2, 2, 2]], "kernel_sizes": [[3, 3, 3], [3, 3, 3]]}}}}))
    assert run("preprocess", dataset, "--out", work, "--config", pre_cfg) == 0
    out = capsys.readouterr().out
    assert "labels (declared)" in out and all(f"{name:<24} in 6 case(s)" in out for name in NAMES.values())
    plan = json.loads((work / "plan.json").read_text())
    assert {int(k): v for k, v in plan["labels"].items()} == NAMES
    cached = np.load(work / "preprocessed" / "case_0" / "label.npy")
    assert set(np.unique(cached).tolist()) == {0, 1, 2, 3}  # channels: value 4 is channel 3

    train_cfg = yaml.safe_load(Path("configs/unet3d_cpu.yaml").read_text())
    train_cfg.update(epochs=4, iterations_per_epoch=40, validate_every=1, num_workers=0, precision="fp32",
                     foreground_oversampling=0.6, augment={k: 0.0 for k in train_cfg["augment"]})
    train_cfg["optimizer"].update(lr=1e-2, warmup_epochs=0)
    train_cfg["model"]["options"] = {"deep_supervision": False}
    train_cfg["model"]["width"] = 1.0  # the plan's 8-16 features: at half, 160 steps do not learn every label
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train_cfg))
    assert run("train", work, "--config", tmp_path / "train.yaml", "--fold", "0") == 0
    out = capsys.readouterr().out
    assert "val Dice" in out  # validation scored channels 1..3 under the labels' names
    bundle = work / "models" / "train" / "fold_0"
    meta = json.loads((bundle / "bundle.json").read_text())
    assert {int(k): v for k, v in meta["labels"].items()} == NAMES

    # a new case, never trained on, as NIfTI
    image, truth = brats_like_case(99)
    (tmp_path / "in").mkdir()
    (tmp_path / "ref").mkdir()
    nib.save(nib.Nifti1Image(image, source_affine()), str(tmp_path / "in" / "new.nii.gz"))
    nib.save(nib.Nifti1Image(truth, source_affine()), str(tmp_path / "ref" / "new.nii.gz"))
    (tmp_path / "pred").mkdir()
    assert run("infer", tmp_path / "in" / "new.nii.gz", "--model", bundle, "-o", tmp_path / "pred" / "new.nii.gz",
               "--device", "cpu", "--precision", "fp32") == 0
    pred = nib.load(str(tmp_path / "pred" / "new.nii.gz"))
    values = np.asarray(pred.dataobj)
    assert values.shape == SHAPE and np.allclose(pred.affine, source_affine(), atol=1e-5)
    assert set(np.unique(values).tolist()) == {0, 1, 2, 4}
    for v in (1, 2, 4):
        assert dice(values == v, truth == v) > 0.5, v

    (tmp_path / "eval").mkdir()
    assert run("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "-o", tmp_path / "eval" / "metrics.csv",
               "--workdir", work) == 0
    summary = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert summary["labels"] == {"1": "necrosis", "2": "edema", "4": "enhancing"}
    assert sorted(summary["per_class"]) == ["1", "2", "4"]
    assert all(summary["per_class"][k]["dice"]["mean"] > 0.5 for k in ("1", "2", "4"))

    # the same scan as a DICOM series: NIfTI, SEG and RTSTRUCT outputs all hold values 1, 2, 4 under their names
    import highdicom as hd

    from medseg.io.dicom import load_dicom_series
    from medseg.io.dicom import read_rtstruct

    write_dicom_series(tmp_path / "dicom", image)
    series = load_dicom_series(tmp_path / "dicom")
    for fmt, name in (("nifti", "dcm_pred.nii.gz"), ("dicom-seg", "seg.dcm"), ("rtstruct", "rt.dcm")):
        assert run("infer", tmp_path / "dicom", "--model", bundle, "-o", tmp_path / name, "--format", fmt,
                   "--device", "cpu", "--precision", "fp32") == 0, fmt
    on_dicom = np.asarray(nib.load(str(tmp_path / "dcm_pred.nii.gz")).dataobj)
    assert on_dicom.shape == series.volume.spatial_shape and set(np.unique(on_dicom).tolist()) == {0, 1, 2, 4}
    for v in (1, 2, 4):  # the series holds the scan's voxels in the same (X, Y, Z) order
        assert dice(on_dicom == v, truth == v) > 0.5, v

    seg = hd.seg.segread(str(tmp_path / "seg.dcm"))
    segments = {int(d.SegmentNumber): (str(d.SegmentLabel), str(d.TrackingID)) for d in seg.SegmentSequence}
    assert sorted(segments.values()) == [("edema", "label 2"), ("enhancing", "label 4"), ("necrosis", "label 1")]
    number = next(n for n, (label, _) in segments.items() if label == "enhancing")
    uids = [str(ds.SOPInstanceUID) for ds in series.datasets]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[number],
                                               ignore_spatial_locations=True)  # (slices, rows, cols, 1)
    np.testing.assert_array_equal(frames[..., 0].transpose(2, 1, 0) > 0, on_dicom == 4)

    masks = read_rtstruct(tmp_path / "rt.dcm", series.volume)
    assert sorted(masks) == ["edema", "enhancing", "necrosis"]
    for v, roi in ((1, "necrosis"), (2, "edema"), (4, "enhancing")):
        assert dice(masks[roi], on_dicom == v) > 0.7, roi


@pytest.mark.slow
def test_a_stray_undeclared_value_becomes_a_label_and_a_stale_cache_is_named(tmp_path, no_tracking_server, capsys):
    """The issue's case: a CSV without labels whose one mask holds a stray 7. Preprocess shows 7 in
    one case, training runs with it as a fifth class; a cache that no longer fits the plan is refused
    before training, naming the case."""
    root = tmp_path / "csv"
    root.mkdir()
    rows = ["case_id,image,label"]
    for i in range(5):
        image, label = brats_like_case(i)
        if i == 3:
            label[label == 1] = 7
        nib.save(nib.Nifti1Image(image, source_affine()), str(root / f"img{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label, source_affine()), str(root / f"lab{i}.nii.gz"))
        rows.append(f"c{i},img{i}.nii.gz,lab{i}.nii.gz")
    (root / "cases.csv").write_text("\n".join(rows) + "\n")
    work = tmp_path / "work"
    pre_cfg = tmp_path / "preprocess.yaml"
    pre_cfg.write_text(yaml.safe_dump({"overrides": {"configurations": {"3d": {
        "patch_size": [16, 16, 16], "batch_size": 2, "features_per_stage": [4, 8],
        "strides": [[1, 1, 1], [2, 2, 2]], "kernel_sizes": [[3, 3, 3], [3, 3, 3]]}}}}))
    assert run("preprocess", root / "cases.csv", "--out", work, "--config", pre_cfg) == 0
    out = capsys.readouterr().out
    assert "not declared" in out
    counts = {line.split()[0]: line.split()[-2] for line in out.splitlines() if line.startswith("  ")}
    assert counts == {"0": "5", "1": "4", "2": "5", "4": "5", "7": "1"}  # the stray value shows: 1 case

    train_cfg = yaml.safe_load(Path("configs/unet3d_cpu.yaml").read_text())
    train_cfg.update(epochs=1, iterations_per_epoch=2, num_workers=0, precision="fp32")
    train_cfg["model"]["options"] = {"deep_supervision": False}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train_cfg))
    assert run("train", work, "--config", tmp_path / "train.yaml", "--fold", "none") == 0
    bundle = json.loads((work / "models" / "train" / "fold_none" / "bundle.json").read_text())
    assert sorted(int(k) for k in bundle["labels"]) == [0, 1, 2, 4, 7]
    capsys.readouterr()

    plan = json.loads((work / "plan.json").read_text())
    plan["labels"] = {"0": "background", "1": "label_1", "2": "label_2", "4": "label_4"}  # 7 dropped by hand
    (work / "plan.json").write_text(json.dumps(plan))
    assert run("train", work, "--config", tmp_path / "train.yaml", "--fold", "none", "--overwrite") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "case c0" in err[0] and "rerun `medseg preprocess`" in err[0] and "Traceback" not in err[0]
