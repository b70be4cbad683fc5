"""The public Python API (medseg.read, load_model -> Predictor.segment, write, plan_and_preprocess, train,
evaluate) on tiny synthetic volumes and the tiny trained blob bundle of tests/inference."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from module_loader import load_module

import medseg
from medseg.errors import ConfigError, InputError, OutputError
from medseg.io import read_volume, write_volume
from medseg.volume import Volume

REPO = Path(__file__).resolve().parents[1]


_inference = load_module(REPO / "tests" / "inference" / "conftest.py", "_api_inference_fixtures")
_training = load_module(REPO / "tests" / "training" / "conftest.py", "_api_training_fixtures")


@pytest.fixture(scope="session")
def blob_bundle(tmp_path_factory):
    """The tiny blob segmenter (3 mm grid, patch 32x32x16), trained once for this module's tests."""
    return _inference.train_tiny_bundle(tmp_path_factory.mktemp("api_bundle") / "blobs")


def blob_image(shape=(40, 36, 20), centre=(20, 18, 10), radius=6.0, seed=0) -> np.ndarray:
    """A noisy scan holding one bright ball, what the blob model was trained to find."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    ball = np.linalg.norm(grid - np.array(centre), axis=-1) < radius
    return (rng.normal(0, 0.5, shape) + 2.5 * ball - 0.3).astype(np.float32), ball


def oblique_affine() -> np.ndarray:
    """An anisotropic, rotated and flipped grid (2.5 x 3 x 3.5 mm): inversion mistakes show."""
    c, s = np.cos(0.4), np.sin(0.4)
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, -1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.array([2.5, 3.0, 3.5])
    affine[:3, 3] = [-40.0, 12.0, 30.0]
    return affine


def synthetic_series(image: np.ndarray, spacing=(3.0, 3.0, 3.0)) -> list:
    """An in-memory MR series (pydicom Datasets with pixel data) whose voxel (i, j, k) = image[i, j, k]."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    pixels = np.round((image - image.min()) * 100).astype(np.int16)  # (cols, rows, slices) = (i, j, k)
    datasets = []
    for k in range(image.shape[2]):
        sop = generate_uid()
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Api", "API-1", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "20260101", "120000", "1", "", ""
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "MR", "synthetic blob", 1, k + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(k * spacing[2])]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing (j), column spacing (i)
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = image.shape[1], image.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()  # stored (rows, cols)
        datasets.append(ds)
    return datasets


# --- package import ------------------------------------------------------------------------------


def test_import_medseg_loads_no_torch_and_exposes_the_api():
    code = (
        "import sys, medseg\n"
        "names = [medseg.read, medseg.read_scan, medseg.load_model, medseg.write, medseg.plan_and_preprocess, medseg.train, medseg.evaluate, medseg.Segmentation]\n"
        "assert all(map(callable, names))\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert {"read", "load_model", "write", "plan_and_preprocess", "train", "evaluate", "Segmentation"} <= set(dir(medseg))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        medseg.nope  # noqa: B018


# --- read ----------------------------------------------------------------------------------------


def test_read_a_file_and_in_memory_datasets(tmp_path):
    image, _ = blob_image(shape=(6, 5, 4))
    write_volume(Volume(image, oblique_affine()), tmp_path / "scan.nii.gz")
    volume = medseg.read(tmp_path / "scan.nii.gz")
    np.testing.assert_array_equal(volume.array, image)
    np.testing.assert_allclose(volume.affine, oblique_affine(), atol=1e-5)

    datasets = synthetic_series(image, spacing=(2.0, 3.0, 4.0))
    from_memory = medseg.read(datasets[::-1])  # any order: sorted by position
    assert from_memory.spatial_shape == (6, 5, 4)
    np.testing.assert_allclose(from_memory.spacing, [2.0, 3.0, 4.0])
    expected = np.round((image - image.min()) * 100)
    np.testing.assert_array_equal(from_memory.array, expected)
    with pytest.raises(InputError, match="no such file"):
        medseg.read(tmp_path / "absent.nii.gz")


# --- load_model and segment ----------------------------------------------------------------------


def test_load_model_resolves_bundle_parent_and_folds(blob_bundle, tmp_path):
    parent = tmp_path / "models"
    for fold in (0, 1):
        shutil.copytree(blob_bundle, parent / f"fold_{fold}")
        meta = json.loads((parent / f"fold_{fold}" / "bundle.json").read_text())
        meta["fold"] = fold
        (parent / f"fold_{fold}" / "bundle.json").write_text(json.dumps(meta))
    assert [b.path.name for b in medseg.load_model(parent, device="cpu").bundles] == ["fold_0", "fold_1"]
    assert [b.path.name for b in medseg.load_model(parent, folds="1", device="cpu").bundles] == ["fold_1"]
    assert len(medseg.load_model([blob_bundle, parent / "fold_1"], device="cpu").bundles) == 2
    with pytest.raises(ConfigError, match="overlap"):
        medseg.load_model(blob_bundle, overlap=1.0)
    with pytest.raises(ConfigError, match="device"):
        medseg.load_model(blob_bundle, device="tpu")


def test_segment_every_input_kind_gives_labels_on_the_original_grid(blob_bundle, tmp_path):
    image, ball = blob_image()
    volume = Volume(image, oblique_affine())
    path = write_volume(volume, tmp_path / "scan.nii.gz")
    predictor = medseg.load_model(blob_bundle, device="cpu", precision="fp32")

    seg = predictor.segment(volume, probabilities=True)
    assert isinstance(seg, medseg.Segmentation)
    assert seg.labels.spatial_shape == volume.spatial_shape and seg.labels.same_geometry(volume)
    np.testing.assert_allclose(seg.labels.affine, volume.affine)
    dice = 2 * (seg.labels.array.astype(bool) & ball).sum() / (seg.labels.array.astype(bool).sum() + ball.sum())
    assert dice > 0.7, f"the blob model missed the ball (Dice {dice:.2f})"
    assert seg.probabilities.array.shape == (2, *volume.spatial_shape)
    np.testing.assert_allclose(seg.probabilities.array.sum(axis=0), 1.0, atol=1e-4)
    assert seg.label_names == {0: "background", 1: "blob"} and seg.label_codes[1]["type"][0] == "108369006"
    assert seg.datasets is None and seg.model_name == "unet3d"

    for other in (path, str(path), [path], [volume]):  # the same case, whatever form it comes in
        np.testing.assert_array_equal(predictor.segment(other).labels.array, seg.labels.array)
    np.testing.assert_array_equal(predictor.predict([volume]).labels.array, seg.labels.array)  # predict kept

    with pytest.raises(InputError, match="mixes"):
        predictor.segment([volume, path])
    with pytest.raises(InputError, match="1 NaN"):
        bad = image.copy()
        bad[0, 0, 0] = np.nan
        predictor.segment(Volume(bad, np.eye(4)))
    with pytest.raises(InputError, match="2 channel"):
        predictor.segment([volume, volume])


def test_in_memory_series_to_seg_and_rtstruct_datasets_without_the_file_system(blob_bundle, forbid_file_writes):
    from medseg.io.dicom import read_dicom_seg, read_rtstruct

    image, ball = blob_image(shape=(32, 32, 16), centre=(16, 14, 8))
    datasets = synthetic_series(image)
    predictor = medseg.load_model(blob_bundle, device="cpu", precision="fp32")
    seg = predictor.segment(datasets)
    assert seg.datasets is not None and len(seg.datasets) == 16
    assert seg.labels.array.astype(bool)[ball].mean() > 0.7

    dicom_seg = medseg.write(seg, format="dicom-seg")
    assert dicom_seg.Modality == "SEG" and dicom_seg.SegmentSequence[0].SegmentLabel == "blob"
    back, names = read_dicom_seg(dicom_seg, datasets)
    assert names == {1: "blob"}
    np.testing.assert_array_equal(back, seg.labels.array)

    rtstruct = medseg.write(seg, format="rtstruct")
    assert rtstruct.Modality == "RTSTRUCT"
    contours = read_rtstruct(rtstruct, seg.labels)
    overlap = (contours["blob"] & seg.labels.array.astype(bool)).sum() / seg.labels.array.astype(bool).sum()
    assert overlap > 0.8
    assert forbid_file_writes == []


def test_write_nifti_and_probabilities_atomically_and_refuse_what_cannot_be_written(blob_bundle, tmp_path):
    image, _ = blob_image(shape=(32, 32, 16), centre=(16, 16, 8))
    predictor = medseg.load_model(blob_bundle, device="cpu", precision="fp32")
    seg = predictor.segment(Volume(image, np.diag([3.0, 3.0, 3.0, 1.0])), probabilities=True)
    out = tmp_path / "out"
    out.mkdir()
    written = medseg.write(seg, out / "case.nii.gz")
    assert written == out / "case.nii.gz"
    assert sorted(p.name for p in out.iterdir()) == ["case.nii.gz", "case_probabilities.nii.gz"]  # no temp files left
    np.testing.assert_array_equal(read_volume(written).array, seg.labels.array)
    np.testing.assert_allclose(read_volume(out / "case_probabilities.nii.gz").array, seg.probabilities.array)
    medseg.write(seg, out / "mask_only.nii.gz", probabilities=False)
    assert not (out / "mask_only_probabilities.nii.gz").exists()

    with pytest.raises(OutputError, match="needs a path"):
        medseg.write(seg)
    with pytest.raises(OutputError, match="non-DICOM input"):
        medseg.write(seg, out / "x.dcm", format="dicom-seg")
    with pytest.raises(ConfigError, match="unknown"):
        medseg.write(seg, out / "x.nii.gz", format="png")
    with pytest.raises(OutputError, match="cannot write"):
        medseg.write(seg, out / "x.png")
    assert not any(p.name.startswith("x") for p in out.iterdir())


# --- evaluate ------------------------------------------------------------------------------------


def test_evaluate_in_memory_and_files_agree(tmp_path):
    ref = np.zeros((20, 20, 10), np.uint8)
    ref[5:15, 5:15, 2:8] = 1
    pred = np.zeros_like(ref)
    pred[5:15, 5:15, 4:8] = 1  # 4 of the 6 slices: Dice 2*400/(400+600) = 0.8
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    report = medseg.evaluate(Volume(pred, affine), Volume(ref, affine))
    assert report.rows[0]["dice"] == pytest.approx(0.8)
    assert medseg.evaluate(Volume(ref, affine), Volume(ref, affine)).rows[0]["dice"] == pytest.approx(1.0)

    for folder, array in (("pred", pred), ("ref", ref)):
        (tmp_path / folder).mkdir()
        write_volume(Volume(array, affine), tmp_path / folder / "c1.nii.gz")
    from_files = medseg.evaluate(tmp_path / "pred", tmp_path / "ref")
    assert from_files.rows[0]["dice"] == pytest.approx(0.8)
    assert from_files.rows[0]["hd95"] == pytest.approx(report.rows[0]["hd95"])
    segmentation = medseg.Segmentation(Volume(pred, affine), label_names={0: "background", 1: "box"})
    assert medseg.evaluate(segmentation, Volume(ref, affine)).label_names == {0: "background", 1: "box"}
    with pytest.raises(ConfigError, match="not one of each"):
        medseg.evaluate(Volume(pred, affine), tmp_path / "ref")


# --- preprocess and train ------------------------------------------------------------------------


def test_preprocess_a_dataset_folder(tmp_path):
    data = tmp_path / "data"
    (data / "imagesTr").mkdir(parents=True)
    (data / "labelsTr").mkdir()
    for i in range(3):
        image, ball = blob_image(shape=(20, 18, 12), centre=(10, 9, 6), radius=4, seed=i)
        write_volume(Volume(image, np.diag([1.5, 1.5, 2.0, 1.0])), data / "imagesTr" / f"case{i}_0000.nii.gz")
        write_volume(Volume(ball.astype(np.uint8), np.diag([1.5, 1.5, 2.0, 1.0])), data / "labelsTr" / f"case{i}.nii.gz")
    (data / "dataset.json").write_text(json.dumps({"name": "balls", "channel_names": {"0": "MR"}, "labels": {"background": 0, "ball": 1},
                                                   "file_ending": ".nii.gz", "numTraining": 3}))
    summary = medseg.plan_and_preprocess(data, tmp_path / "work")
    assert sorted(summary.processed) == ["case0", "case1", "case2"]
    assert summary.plan.labels == {0: "background", 1: "ball"}
    assert summary.plan.target_spacing == [1.5, 1.5, 2.0]
    assert (tmp_path / "work" / "plan.json").is_file()
    again = medseg.plan_and_preprocess(data, tmp_path / "work", workers=1)
    assert again.processed == [] and sorted(again.skipped_unchanged) == ["case0", "case1", "case2"]


@pytest.mark.slow
def test_train_a_fold_then_segment_with_its_bundle(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a tracking server where nothing listens: training logs nowhere, at once
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{s.getsockname()[1]}")
    work = _training._make_workdir(tmp_path / "work")
    result = medseg.train(work, REPO / "configs" / "unet3d.yaml", fold=0, overrides=_training.TINY_OVERRIDES)
    assert result.bundle_dir == work / "models" / "unet3d" / "fold_0" and result.epochs_done == 2
    assert len(result.train_losses) == 2 and set(result.val_dice) >= {"mean"}
    predictor = medseg.load_model(work / "models" / "unet3d", device="cpu")  # the parent: its fold_0
    image = np.random.default_rng(0).normal(size=(20, 20, 18)).astype(np.float32)
    seg = predictor.segment(Volume(image, np.eye(4)))
    assert seg.labels.spatial_shape == (20, 20, 18) and seg.label_names == {0: "background", 1: "ball", 2: "box"}

    from medseg.training.config import load_train_config

    config = load_train_config(REPO / "configs" / "unet3d.yaml", _training.TINY_OVERRIDES)
    with pytest.raises(ConfigError, match="preset_name"):
        medseg.train(work, config, fold=1)


# --- case discovery (medseg.data.cases, used by `medseg infer`) -----------------------------------


def test_discover_cases_groups_channel_files_as_the_manifest_does(tmp_path):
    from medseg.data.cases import discover_cases

    folder = tmp_path / "imagesTs"
    folder.mkdir()
    tiny = Volume(np.zeros((2, 2, 2), np.float32), np.eye(4))
    for name in ("b_0001", "b_0000", "a_0000"):
        write_volume(tiny, folder / f"{name}.nii.gz")
    cases, many = discover_cases(folder)
    assert many and cases == [("a", [folder / "a_0000.nii.gz"]), ("b", [folder / "b_0000.nii.gz", folder / "b_0001.nii.gz"])]
    write_volume(tiny, folder / "plain.nii.gz")  # not every file has the suffix: one case per file
    assert [c for c, _ in discover_cases(folder)[0]] == ["a_0000", "b_0000", "b_0001", "plain"]
    assert discover_cases(folder / "plain.nii.gz") == ([("plain", [folder / "plain.nii.gz"])], False)
    (tmp_path / "list.txt").write_text("# scans\nimagesTs/plain.nii.gz\n")
    assert discover_cases(tmp_path / "list.txt") == ([("plain", [tmp_path / "imagesTs" / "plain.nii.gz"])], True)
    series = tmp_path / "dicom"
    (series / "s1").mkdir(parents=True)
    (series / "s2").mkdir()
    assert discover_cases(series) == ([("s1", [series / "s1"]), ("s2", [series / "s2"])], True)
    with pytest.raises(InputError, match="no such file"):
        discover_cases(tmp_path / "absent")


# --- the commands as calls (medseg.commands: what each CLI command and pipeline step runs) ------------


def test_convert_and_info_commands_as_calls(tmp_path):
    from medseg.commands import convert_command, info_command

    image, _ = blob_image(shape=(6, 5, 4))
    write_volume(Volume(image, oblique_affine()), tmp_path / "scan.nii.gz")
    lines = []
    volume = convert_command(tmp_path / "scan.nii.gz", tmp_path / "scan.nrrd", echo=lambda line, err=False: lines.append(line))
    assert read_volume(tmp_path / "scan.nrrd").same_geometry(volume) and lines == [f"wrote {tmp_path / 'scan.nrrd'}: shape (6, 5, 4), orientation {volume.orientation}"]
    report = info_command(tmp_path / "scan.nrrd", echo=lambda line, err=False: lines.append(line))
    assert report["shape"] == [6, 5, 4] and report["spacing_mm"] == pytest.approx([2.5, 3.0, 3.5], abs=1e-5)
    assert f"shape: [6, 5, 4]" in lines and f"orientation: {volume.orientation}" in lines

    import pydicom

    series = tmp_path / "dicom"
    series.mkdir()
    for k, ds in enumerate(synthetic_series(image)):
        pydicom.dcmwrite(series / f"{k}.dcm", ds, enforce_file_format=True)
    out = []
    report = info_command(series, json=True, echo=lambda line, err=False: out.append(line))
    assert len(out) == 1 and json.loads(out[0]) == report
    assert len(report["series"]) == 1 and report["series"][0]["num_slices"] == 4 and report["shape"] == [6, 5, 4]
    assert "Test^Api" not in out[0] and "API-1" not in out[0]  # never the patient's name or ID


def _balls_dataset(root: Path, n: int = 3) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n):
        image, ball = blob_image(shape=(20, 18, 12), centre=(10, 9, 6), radius=4, seed=i)
        write_volume(Volume(image, np.diag([1.5, 1.5, 2.0, 1.0])), root / "imagesTr" / f"case{i}_0000.nii.gz")
        write_volume(Volume(ball.astype(np.uint8), np.diag([1.5, 1.5, 2.0, 1.0])), root / "labelsTr" / f"case{i}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"name": "balls", "channel_names": {"0": "MR"}, "labels": {"background": 0, "ball": 1},
                                                   "file_ending": ".nii.gz", "numTraining": n}))
    return root


def test_preprocess_command_checks_first_and_says_what_it_did(tmp_path):
    from medseg.commands import preprocess_command

    data = _balls_dataset(tmp_path / "data")
    with pytest.raises(ConfigError, match="workers 0"):
        preprocess_command(data, out=tmp_path / "work", workers=0)
    manifest = tmp_path / "m" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text("{}")
    with pytest.raises(OutputError, match="would replace the dataset manifest"):
        preprocess_command(manifest, out=manifest.parent)
    assert not (tmp_path / "work").exists() and manifest.read_text() == "{}"
    lines = []
    summary = preprocess_command(data, out=tmp_path / "work", echo=lambda line, err=False: lines.append(line))
    assert sorted(summary.processed) == ["case0", "case1", "case2"]
    assert lines[0] == "labels (declared):" and "ball" in lines[2] and "in 3 case(s)" in lines[2]
    assert lines[-1].startswith("3 case(s) preprocessed, 0 unchanged; target spacing [1.5, 1.5, 2.0] mm")


def test_train_command_refuses_bad_options_before_training(tmp_path):
    from medseg.commands import train_command

    config = REPO / "configs" / "unet3d_cpu.yaml"
    for kwargs, message in [({"fold": "7"}, "--fold '7'"), ({"epochs": 0}, "epochs 0"), ({"precision": "fp8"}, "precision 'fp8'"),
                            ({"max_minutes": -1}, "max_minutes -1")]:
        with pytest.raises(ConfigError, match=message):
            train_command(tmp_path / "nowhere", config=config, **kwargs)
    with pytest.raises(ConfigError, match="no such config file"):
        train_command(tmp_path / "nowhere", config=tmp_path / "absent.yaml")
    assert not (tmp_path / "nowhere").exists()


def test_evaluate_command_writes_the_reports_and_no_store_without_a_workdir(tmp_path, monkeypatch):
    from medseg.commands import evaluate_command, parse_labels

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ref = np.zeros((20, 20, 10), np.uint8)
    ref[5:15, 5:15, 2:8] = 1
    pred = np.zeros_like(ref)
    pred[5:15, 5:15, 4:8] = 1  # Dice 0.8
    for folder, array in (("pred", pred), ("ref", ref)):
        (tmp_path / folder).mkdir()
        write_volume(Volume(array, np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / folder / "c1.nii.gz")
    out, problems = [], []
    (tmp_path / "scores").mkdir()
    report = evaluate_command(pred=tmp_path / "pred", ref=tmp_path / "ref", output=tmp_path / "scores" / "m.csv",
                              echo=lambda line, err=False: (problems if err else out).append(line))
    assert report.rows[0]["dice"] == pytest.approx(0.8)
    assert (tmp_path / "scores" / "m.csv").is_file() and json.loads((tmp_path / "scores" / "m.json").read_text())
    assert any("wrote" in line for line in out) and any("not logged to MLflow" in line for line in problems)
    assert not list(tmp_path.rglob("mlruns.db"))  # no store without a workdir or MLFLOW_TRACKING_URI
    with pytest.raises(ConfigError, match="exclude each other"):
        evaluate_command(pred=tmp_path / "pred", ref=tmp_path / "ref", run="0" * 32, experiment="x")
    assert parse_labels("1, 2") == [1, 2] and parse_labels([3]) == [3] and parse_labels(None) is None
    with pytest.raises(ConfigError, match="positive label"):
        parse_labels("0")


@pytest.mark.slow
def test_a_pipeline_infers_and_evaluates_through_the_api(blob_bundle, tmp_path, monkeypatch):
    """The infer step is `medseg.api.infer` (options mapped onto it and `load_model`, --no-postprocess
    negated), the evaluate step `medseg.commands.evaluate_command`; no command line is parsed."""
    import yaml

    import medseg.api
    import medseg.cli.main
    from medseg.pipelines import load_pipeline, run_pipeline

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(medseg.cli.main, "run_argv", lambda argv: pytest.fail(f"argv chained: {argv}"))
    real_load_model, asked = medseg.api.load_model, []

    @functools.wraps(real_load_model)  # its signature: the infer step's model options are checked against it
    def load_model(*args, **kwargs):
        asked.append(kwargs)
        return real_load_model(*args, **kwargs)

    monkeypatch.setattr(medseg.api, "load_model", load_model)
    for folder in ("scans", "refs"):
        (tmp_path / folder).mkdir()
    for i in range(2):
        image, ball = blob_image(seed=i)
        write_volume(Volume(image, np.diag([3.0, 3.0, 3.0, 1.0])), tmp_path / "scans" / f"b{i}.nii.gz")
        write_volume(Volume(ball.astype(np.uint8), np.diag([3.0, 3.0, 3.0, 1.0])), tmp_path / "refs" / f"b{i}.nii.gz")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({
        "name": "blobs", "variables": {"dir": str(tmp_path)},
        "steps": [
            {"command": "infer", "args": ["${dir}/scans"],
             "options": {"model": str(blob_bundle), "output": "${dir}/masks", "device": "cpu", "precision": "fp32", "no-postprocess": True}},
            {"command": "evaluate", "options": {"pred": "${dir}/masks", "ref": "${dir}/refs", "output": "${dir}/masks/metrics.csv"}},
        ],
    }))
    lines = []
    run_pipeline(load_pipeline(tmp_path / "p.yaml"), lambda line="", err=False: lines.append(line))
    assert asked and asked[0]["postprocess"] is False and asked[0]["device"] == "cpu" and asked[0]["precision"] == "fp32"
    assert sorted(p.name for p in (tmp_path / "masks").glob("*.nii.gz")) == ["b0.nii.gz", "b1.nii.gz"]
    assert any(line.startswith("2 ok, 0 failed") for line in lines)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "masks" / "metrics.csv")))
    assert len(rows) == 2 and min(float(r["dice"]) for r in rows) > 0.8
