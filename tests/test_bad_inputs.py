"""The bad-input catalogue (issue 14, "Hostile or broken input"): every bad input a user can give is
refused with medseg's one-line error.

Each row builds its input in a fresh folder, runs `medseg ...` as a user types it (in this process,
through `medseg.cli.main.main`, stderr captured at the file-descriptor level so loader workers and
libraries count too) and checks: exit code 1; exactly one stderr line, starting with "medseg: error:"
and naming what the row expects; no traceback; and not one file created, changed or removed in the
folder (the current directory during the run), the inputs included.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import default_sigint
from module_loader import load_module
import yaml

from medseg.cli.main import main
from medseg.io import write_volume
from medseg.volume import Volume

REPO = Path(__file__).resolve().parents[1]


_inference = load_module(REPO / "tests" / "inference" / "conftest.py", "_bad_inputs_inference_fixtures")
_training = load_module(REPO / "tests" / "training" / "conftest.py", "_bad_inputs_training_fixtures")


# --- the tiny inputs ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _bundle_template(tmp_path_factory):
    """A tiny 3D bundle (2 training steps: what it predicts does not matter here)."""
    return _inference.train_tiny_bundle(tmp_path_factory.mktemp("bad_bundle") / "bundle", steps=2)


@pytest.fixture(scope="session")
def _workdir_template(tmp_path_factory):
    return _training._make_workdir(tmp_path_factory.mktemp("bad_work") / "work", n_cases=3)


def scan(path: Path, value=None, shape=(20, 20, 12)) -> Path:
    """A small float32 MR-like scan on a 3 mm grid; `value` is written into one voxel."""
    array = np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)
    if value is not None:
        array[3, 4, 5] = value
    return write_volume(Volume(array, np.diag([3.0, 3.0, 3.0, 1.0])), path)


def labelled_case(root: Path, name: str, image_shape=(16, 16, 12)) -> tuple[Path, Path]:
    """An image and its mask (a box of label 1) for preprocess manifests; image 4D when shape has 4 axes."""
    import nibabel as nib

    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    image = rng.normal(0, 1, image_shape).astype(np.float32)
    label = np.zeros(image_shape[:3], np.uint8)
    label[4:9, 4:9, 3:7] = 1
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / f"{name}.nii.gz"))
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / f"{name}_seg.nii.gz"))
    return root / f"{name}.nii.gz", root / f"{name}_seg.nii.gz"


def csv_manifest(root: Path, rows: list[tuple[str, Path, Path | None]], name="manifest.csv") -> Path:
    lines = ["case_id,image,label"] + [f"{cid},{img},{lab or ''}" for cid, img, lab in rows]
    (root / name).write_text("\n".join(lines) + "\n")
    return root / name


def unwritable_folder(path: Path) -> Path:
    """A folder nobody may create files in: mode 0555, and immutable when run as root (root ignores modes)."""
    path.mkdir()
    path.chmod(0o555)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=False, capture_output=True)
    try:
        (path / ".probe").touch()
    except OSError:
        return path
    (path / ".probe").unlink()
    pytest.fail(f"cannot make {path} unwritable on this machine (not by mode, not by chattr +i)")


def release(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], check=False, capture_output=True)
    path.chmod(0o755)


# --- the rows: each returns (argv, text the error line must contain) ---------------------------


def infer_nan(d, bundle, work):
    return ["infer", scan(d / "scan.nii.gz", np.nan), "-m", bundle, "-o", d / "mask.nii.gz"], "NaN"


def infer_inf(d, bundle, work):
    return ["infer", scan(d / "scan.nii.gz", np.inf), "-m", bundle, "-o", d / "mask.nii.gz"], "Inf"


def infer_case_id_climbing(d, bundle, work):
    (d / "scans").mkdir()
    manifest = csv_manifest(d / "scans", [("ok", scan(d / "scans" / "a.nii.gz"), None), ("../../x", scan(d / "scans" / "b.nii.gz"), None)])
    return ["infer", manifest, "-m", bundle, "-o", d / "out"], "'../../x'"


def infer_case_id_absolute(d, bundle, work):
    (d / "scans").mkdir()
    target = d / "elsewhere" / "x"
    manifest = csv_manifest(d / "scans", [(str(target), scan(d / "scans" / "a.nii.gz"), None)])
    return ["infer", manifest, "-m", bundle, "-o", d / "out"], "case_id"


def infer_output_is_the_input(d, bundle, work):
    source = scan(d / "scan.nii.gz")
    return ["infer", source, "-m", bundle, "-o", source], "also an input"


def infer_output_folder_is_the_input_folder(d, bundle, work):
    (d / "scans").mkdir()
    scan(d / "scans" / "a.nii.gz")
    scan(d / "scans" / "b.nii.gz")
    return ["infer", d / "scans", "-m", bundle, "-o", d / "scans"], "also an input"


def infer_output_in_unwritable_folder(d, bundle, work):
    locked = unwritable_folder(d / "locked")
    return ["infer", scan(d / "scan.nii.gz"), "-m", bundle, "-o", locked / "mask.nii.gz"], "not writable"


def infer_output_below_a_file(d, bundle, work):
    (d / "notafolder").write_text("x")
    return ["infer", scan(d / "scan.nii.gz"), "-m", bundle, "-o", d / "notafolder" / "mask.nii.gz"], "is a file"


def infer_output_inside_the_dicom_folder(d, bundle, work):
    (d / "series").mkdir()
    (d / "series" / "IM0001.dcm").write_bytes(b"\0" * 132)  # refused before anything is read
    return ["infer", d / "series", "-m", bundle, "-o", d / "series" / "mask.nii.gz"], "inside the input DICOM folder"


def infer_4d_image(d, bundle, work):
    import nibabel as nib

    array = np.random.default_rng(0).normal(0, 1, (20, 20, 12, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(array, np.diag([3.0, 3.0, 3.0, 1.0])), str(d / "series.nii.gz"))
    return ["infer", d / "series.nii.gz", "-m", bundle, "-o", d / "mask.nii.gz"], "series.nii.gz: a 4D image of shape (20, 20, 12, 3)"


def _scan_with_sform(path: Path, sform: np.ndarray) -> Path:
    import nibabel as nib

    array = np.random.default_rng(0).normal(0, 1, (20, 20, 12)).astype(np.float32)
    header = nib.Nifti1Image(array, np.diag([3.0, 3.0, 3.0, 1.0])).header
    header.set_sform(sform, code=1)
    header.set_qform(None, code=0)
    nib.save(nib.Nifti1Image(array, None, header=header), str(path))
    return path


def infer_zero_voxel_spacing(d, bundle, work):
    source = _scan_with_sform(d / "flat.nii.gz", np.diag([0.0, 3.0, 3.0, 1.0]))
    return ["infer", source, "-m", bundle, "-o", d / "mask.nii.gz"], "flat.nii.gz: its voxel spacing (0, 3, 3) mm has a zero axis"


def infer_nan_in_the_affine(d, bundle, work):
    sform = np.diag([3.0, 3.0, 3.0, 1.0])
    sform[0, 3] = np.nan
    source = _scan_with_sform(d / "lost.nii.gz", sform)
    return ["infer", source, "-m", bundle, "-o", d / "mask.nii.gz"], "lost.nii.gz: its affine holds NaN"


def infer_overlap_one(d, bundle, work):
    return ["infer", scan(d / "scan.nii.gz"), "-m", bundle, "--overlap", "1.0", "-o", d / "mask.nii.gz"], "--overlap 1.0"


def infer_overlap_negative(d, bundle, work):
    return ["infer", scan(d / "scan.nii.gz"), "-m", bundle, "--overlap", "-0.25", "-o", d / "mask.nii.gz"], "[0, 1)"


def infer_output_folder_is_a_file(d, bundle, work):
    (d / "scans").mkdir()
    scan(d / "scans" / "a.nii.gz")
    scan(d / "scans" / "b.nii.gz")
    (d / "out").write_text("not a folder")
    return ["infer", d / "scans", "-m", bundle, "-o", d / "out"], "is a file"


def infer_output_folder_unwritable(d, bundle, work):
    (d / "scans").mkdir()
    scan(d / "scans" / "a.nii.gz")
    scan(d / "scans" / "b.nii.gz")
    locked = unwritable_folder(d / "locked")
    return ["infer", d / "scans", "-m", bundle, "-o", locked / "out"], "not writable"


def _edit_bundle(bundle: Path, file: str, edit) -> None:
    path = bundle / file
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def bundle_patch_size_zero(d, bundle, work):
    _edit_bundle(bundle, "plan.json", lambda p: p["configurations"]["3d"].update(patch_size=[0, 32, 16]))
    return ["infer", scan(d / "scan.nii.gz"), "-m", bundle, "-o", d / "mask.nii.gz"], "plan.json"


def bundle_negative_batch(d, bundle, work):
    _edit_bundle(bundle, "plan.json", lambda p: p["configurations"]["3d"].update(batch_size=-2))
    return ["infer", scan(d / "scan.nii.gz"), "-m", bundle, "-o", d / "mask.nii.gz"], "batch_size"


def bundle_zero_stride(d, bundle, work):
    _edit_bundle(bundle, "plan.json", lambda p: p["configurations"]["3d"].update(strides=[[1, 1, 1], [2, 0, 2]]))
    return ["infer", scan(d / "scan.nii.gz"), "-m", bundle, "-o", d / "mask.nii.gz"], "strides"


def bundle_patch_of_two_axes_for_3d(d, bundle, work):
    _edit_bundle(bundle, "plan.json", lambda p: p["configurations"]["3d"].update(patch_size=[32, 32]))
    return ["infer", scan(d / "scan.nii.gz"), "-m", bundle, "-o", d / "mask.nii.gz"], "spatial_dims 3 needs 3"


def bundle_zero_features(d, bundle, work):
    _edit_bundle(bundle, "plan.json", lambda p: p["configurations"]["3d"].update(features_per_stage=[4, 0]))
    return ["infer", scan(d / "scan.nii.gz"), "-m", bundle, "-o", d / "mask.nii.gz"], "features_per_stage"


def bundle_labels_not_a_mapping(d, bundle, work):
    _edit_bundle(bundle, "bundle.json", lambda m: m.update(labels=["background", "blob"]))
    return ["infer", scan(d / "scan.nii.gz"), "-m", bundle, "-o", d / "mask.nii.gz"], 'bundle.json: "labels" is list'


def bundle_model_options_not_a_mapping(d, bundle, work):
    _edit_bundle(bundle, "bundle.json", lambda m: m.update(model_options="deep"))
    return ["infer", scan(d / "scan.nii.gz"), "-m", bundle, "-o", d / "mask.nii.gz"], '"model_options" is str'


def bundle_from_the_future(d, bundle, work):
    _edit_bundle(bundle, "bundle.json", lambda m: m.update(bundle_version=99))
    return ["infer", scan(d / "scan.nii.gz"), "-m", bundle, "-o", d / "mask.nii.gz"], "pip install -U medseg"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def train_truncated_image_cache(d, bundle, work):
    _truncate(work / "preprocessed" / "case_01" / "image.npy")
    config = d / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_TRAIN))
    return ["train", work, "--config", config, "--fold", "none"], "case_01/image.npy"


def train_truncated_label_cache_never_sampled(d, bundle, work):
    # one iteration of one patch samples one case; the truncated one must still be found at the start
    _truncate(work / "preprocessed" / "case_02" / "label.npy")
    config = d / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY_TRAIN, "iterations_per_epoch": 1, "batch_size": 1}))
    return ["train", work, "--config", config, "--fold", "none"], "rerun `medseg preprocess`"


def train_truncated_locations(d, bundle, work):
    _truncate(work / "preprocessed" / "case_00" / "locations.npz")
    config = d / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_TRAIN))
    return ["train", work, "--config", config, "--fold", "none"], "case_00/locations.npz"


def preprocess_4d_image(d, bundle, work):
    image, label = labelled_case(d, "four_d", (16, 16, 12, 3))
    return ["preprocess", csv_manifest(d, [("four_d", image, label)]), "--out", d / "work"], "shape (16, 16, 12, 3)"


def preprocess_case_id_climbing(d, bundle, work):
    (d / "data").mkdir()
    image, label = labelled_case(d / "data", "a")
    return ["preprocess", csv_manifest(d / "data", [("../../escaped", image, label)]), "--out", d / "work"], "'../../escaped'"


def preprocess_case_id_absolute(d, bundle, work):
    image, label = labelled_case(d, "a")
    return ["preprocess", csv_manifest(d, [(str(d / "abs" / "case"), image, label)]), "--out", d / "work"], "case_id"


def _preprocess_with_config(d, config_fields):
    """`medseg preprocess` of two labelled cases with a preprocess.yaml holding `config_fields`."""
    rows = [(f"c{i}", *labelled_case(d, f"c{i}")) for i in range(2)]
    config = d / "preprocess.yaml"
    config.write_text(yaml.safe_dump(config_fields))
    return ["preprocess", csv_manifest(d, rows), "--out", d / "work", "--config", config]


def _preprocess_with_overrides(d, overrides):
    return _preprocess_with_config(d, {"overrides": {"configurations": {"3d": overrides}}})


def preprocess_zero_patch_size(d, bundle, work):
    return _preprocess_with_overrides(d, {"patch_size": [0, 16, 16]}), "preprocess.yaml"


def preprocess_negative_batch(d, bundle, work):
    return _preprocess_with_overrides(d, {"batch_size": -1}), "batch_size"


def preprocess_zero_base_features(d, bundle, work):
    return _preprocess_with_config(d, {"planner": {"base_features": 0}}), "planner.base_features"


def preprocess_manifest_is_an_output(d, bundle, work):
    image, label = labelled_case(d, "a")
    manifest = d / "manifest.json"
    manifest.write_text(json.dumps({"cases": [{"case_id": "a", "images": [str(image)], "label": str(label)}]}))
    return ["preprocess", manifest, "--out", d], "manifest.json"


def preprocess_no_normalization_for_the_channel(d, bundle, work):
    return _preprocess_with_config(d, {"overrides": {"normalization": []}}), "0 normalization entries"


def preprocess_plan_version_override(d, bundle, work):
    return _preprocess_with_config(d, {"overrides": {"version": 2}}), "field 'version'"


def preprocess_complex_image(d, bundle, work):
    import nibabel as nib

    image, label = labelled_case(d, "c0")
    array = np.asanyarray(nib.load(str(image)).dataobj).astype(np.complex64) * (1 + 1j)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(image))
    return ["preprocess", csv_manifest(d, [("c0", image, label)]), "--out", d / "work"], "complex-valued voxels"


def preprocess_out_is_a_file(d, bundle, work):
    rows = [("c0", *labelled_case(d, "c0"))]
    (d / "work").write_text("a file")
    return ["preprocess", csv_manifest(d, rows), "--out", d / "work"], "is a file"


def preprocess_out_unwritable(d, bundle, work):
    rows = [("c0", *labelled_case(d, "c0"))]
    locked = unwritable_folder(d / "locked")
    return ["preprocess", csv_manifest(d, rows), "--out", locked / "work"], "not writable"


def run_step_unknown_option(d, bundle, work):
    pipeline = d / "pipe.yaml"
    pipeline.write_text(yaml.safe_dump({
        "name": "typo",
        "steps": [{"command": "infer", "args": [str(scan(d / "scan.nii.gz"))],
                   "options": {"model": str(bundle), "output": str(d / "mask.nii.gz"), "overlapp": 0.5}}],
    }))
    return ["run", pipeline], "pipe.yaml: step 1 (infer): unknown option 'overlapp'"


def run_step_bad_value(d, bundle, work):
    pipeline = d / "pipe.yaml"
    pipeline.write_text(yaml.safe_dump({
        "name": "typo",
        "steps": [{"command": "infer", "args": [str(scan(d / "scan.nii.gz"))],
                   "options": {"model": str(bundle), "output": str(d / "mask.nii.gz"), "overlap": "half"}}],
    }))
    return ["run", pipeline], "pipe.yaml: step 1 (infer): Invalid value for '--overlap'"


def run_pipeline_running_itself(d, bundle, work):
    pipeline = d / "loop.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "loop", "steps": [{"command": "run", "args": [str(pipeline)]}]}))
    return ["run", pipeline], "loop.yaml: step 1 (run): pipelines do not nest"


def run_variables_in_a_cycle(d, bundle, work):
    pipeline = d / "cycle.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "cycle", "variables": {"a": "${b}/x", "b": "${a}/y"},
                                        "steps": [{"command": "info", "args": ["${a}"]}]}))
    return ["run", pipeline], "variables a, b refer to each other in a cycle"


def run_unknown_set_variable(d, bundle, work):
    return ["run", REPO / "pipelines" / "demo.yaml", "--set", "minuts=1"], "minutes"


# --- rows for items other parts of issue 14 built (training state, training config, labels, folds, tracking) ---


class _Planted:
    """Unpickling this runs a shell command: what a planted training_state.pt would do."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def train_resume_malicious_state(d, bundle, work):
    import torch

    config = d / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_TRAIN))
    fold = work / "models" / "tiny" / "fold_none"
    fold.mkdir(parents=True)
    torch.save({"epoch": 0, "rng": _Planted()}, fold / "training_state.pt")  # PWNED in the cwd would be a new file
    return ["train", work, "--config", config, "--fold", "none", "--resume"], "training_state.pt: refused to load"


def train_negative_lr(d, bundle, work):
    config = d / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY_TRAIN, "optimizer": {"name": "adamw", "lr": -1}}))
    return ["train", work, "--config", config, "--fold", "none"], "optimizer.lr"


def train_zero_patch_size(d, bundle, work):
    config = d / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY_TRAIN, "patch_size": [0, 16, 16]}))
    return ["train", work, "--config", config, "--fold", "none"], "patch_size"


def preprocess_undeclared_label_7(d, bundle, work):
    import nibabel as nib

    rows = [(f"c{i}", *labelled_case(d, f"c{i}")) for i in range(2)]
    mask = nib.load(str(rows[1][2]))
    values = np.asarray(mask.dataobj).copy()
    values[1, 1, 1] = 7
    nib.save(nib.Nifti1Image(values, mask.affine), str(rows[1][2]))
    config = d / "preprocess.yaml"
    config.write_text(yaml.safe_dump({"labels": {0: "background", 1: "box"}}))
    return ["preprocess", csv_manifest(d, rows), "--out", d / "work", "--config", config], "c1_seg.nii.gz: case c1: label values [7]"


def infer_unknown_model_reference(d, bundle, work):  # and no mlruns.db appears in the cwd (the snapshot)
    return ["infer", scan(d / "scan.nii.gz"), "-m", "nosuchmodel", "-o", d / "mask.nii.gz"], "nosuchmodel"


def infer_bundle_fold_not_a_number(d, bundle, work):
    _edit_bundle(bundle, "bundle.json", lambda m: m.update(fold="seven"))
    return ["infer", scan(d / "scan.nii.gz"), "-m", bundle, "--folds", "0", "-o", d / "mask.nii.gz"], "\"fold\" is 'seven'"


# --- issue 23 (nothing reinterpreted or overwritten silently) ----------------------------------


def _integer_scan(path: Path) -> Path:
    """An MR-like scan stored as integers (uint16, hundreds of distinct values), as scanners write them."""
    array = np.random.default_rng(1).integers(0, 2000, (16, 16, 12)).astype(np.uint16)
    return write_volume(Volume(array, np.eye(4)), path)


def preprocess_image_and_label_swapped(d, bundle, work):
    image, label = labelled_case(d, "a")
    _integer_scan(image)
    return ["preprocess", csv_manifest(d, [("a", label, image)]), "--out", d / "work"], "image and label look swapped"


def infer_folder_mixing_dicom_and_nifti(d, bundle, work):
    (d / "mixed").mkdir()
    (d / "mixed" / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)  # the DICOM preamble, no suffix
    scan(d / "mixed" / "a.nii.gz")
    scan(d / "mixed" / "a_seg.nii.gz")
    return ["infer", d / "mixed", "-m", bundle, "-o", d / "out"], "holds both DICOM files (1, e.g. IM0001) and 2 other scan(s)"


def infer_series_on_a_nifti(d, bundle, work):
    return ["infer", scan(d / "scan.nii.gz"), "-m", bundle, "--series", "3", "-o", d / "mask.nii.gz"], "--series applies only to DICOM input"


def convert_volume_on_a_nifti(d, bundle, work):
    return ["convert", scan(d / "scan.nii.gz"), d / "out.nrrd", "--volume", "1"], "--volume applies only to DICOM input"


CROP = REPO / "tests" / "data" / "dicom" / "tcia_mr_oblique" / "11_HCropVolume"  # 34 x 50 x 40, read only


def convert_mask_off_the_reference_grid(d, bundle, work):
    labels = np.zeros((20, 20, 12), np.uint8)
    labels[5:9, 5:9, 3:6] = 1
    mask = write_volume(Volume(labels, np.diag([3.0, 3.0, 3.0, 1.0])), d / "mask.nii.gz")  # a 3 mm grid, not the crop's
    return (["convert", mask, d / "seg.dcm", "--to", "dicom-seg", "--reference", CROP],
            "mask.nii.gz: not on the grid of the reference series")


def convert_mask_with_an_unnamed_label(d, bundle, work):
    from medseg.io import read_volume

    grid = read_volume(CROP)
    labels = np.zeros(grid.spatial_shape, np.uint8)
    labels[5:10, 5:10, 5:10], labels[20:25, 20:25, 20:25] = 1, 2
    mask = write_volume(grid.with_array(labels), d / "mask.nii.gz")
    return (["convert", mask, d / "rt.dcm", "--to", "rtstruct", "--reference", CROP, "--labels", "1=liver"],
            "holds label value(s) [2] that --labels does not name")


def train_over_an_existing_bundle(d, bundle, work):
    config = d / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_TRAIN))
    shutil.copytree(bundle, work / "models" / "tiny" / "fold_none")
    return ["train", work, "--config", config, "--fold", "none"], "a trained model is already there (bundle.json)"


TINY_TRAIN = {
    "version": 1,
    "model": {"name": "unet3d", "configuration": "3d", "options": {"deep_supervision": False}},
    "loss": {"name": "dice_ce"},
    "optimizer": {"name": "adamw", "lr": 0.001},
    "epochs": 1, "iterations_per_epoch": 2, "validate_every": 1, "num_workers": 1, "precision": "fp32",
}

ROWS = [
    infer_nan, infer_inf, infer_case_id_climbing, infer_case_id_absolute, infer_output_is_the_input,
    infer_output_folder_is_the_input_folder, infer_output_inside_the_dicom_folder, infer_4d_image, infer_zero_voxel_spacing, infer_nan_in_the_affine, infer_overlap_one, infer_overlap_negative,
    infer_output_folder_is_a_file, infer_output_folder_unwritable, infer_output_in_unwritable_folder, infer_output_below_a_file,
    bundle_patch_size_zero, bundle_negative_batch, bundle_zero_stride, bundle_patch_of_two_axes_for_3d,
    bundle_zero_features, bundle_labels_not_a_mapping, bundle_model_options_not_a_mapping, bundle_from_the_future,
    train_truncated_image_cache, train_truncated_label_cache_never_sampled, train_truncated_locations,
    preprocess_4d_image, preprocess_case_id_climbing, preprocess_case_id_absolute,
    preprocess_zero_patch_size, preprocess_negative_batch, preprocess_zero_base_features, preprocess_manifest_is_an_output,
    preprocess_no_normalization_for_the_channel, preprocess_plan_version_override, preprocess_complex_image,
    preprocess_out_is_a_file, preprocess_out_unwritable,
    run_step_unknown_option, run_step_bad_value, run_pipeline_running_itself, run_variables_in_a_cycle, run_unknown_set_variable,
    # built by other parts of issue 14
    train_resume_malicious_state, train_negative_lr, train_zero_patch_size, preprocess_undeclared_label_7,
    infer_unknown_model_reference, infer_bundle_fold_not_a_number,
    # issue 23
    preprocess_image_and_label_swapped, infer_folder_mixing_dicom_and_nifti, infer_series_on_a_nifti,
    convert_volume_on_a_nifti, train_over_an_existing_bundle, convert_mask_off_the_reference_grid, convert_mask_with_an_unnamed_label,
]


# --- the checks ---------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 (files) or "dir" (folders), for everything under `root`."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run_cli(argv, capfd) -> tuple[int, str]:
    """`medseg ARGV` in this process; (exit code, stderr)."""
    capfd.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, capfd.readouterr().err


def check_refused(code: int, stderr: str, expected: str) -> None:
    lines = stderr.strip().splitlines()
    assert code == 1, f"exit code {code}; stderr: {stderr}"
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"{len(lines)} stderr lines:\n{stderr}"
    assert lines[0].startswith("medseg: error:"), lines[0]
    assert expected in lines[0], f"{expected!r} not in: {lines[0]}"


@pytest.mark.parametrize("row", ROWS, ids=[r.__name__ for r in ROWS])
def test_bad_input_is_refused_in_one_line_and_writes_nothing(row, tmp_path, capfd, monkeypatch, _bundle_template, _workdir_template):
    root = tmp_path / "root"  # the whole world of the run: cwd, inputs and outputs
    root.mkdir()
    bundle = shutil.copytree(_bundle_template, root / "bundle")
    work = shutil.copytree(_workdir_template, root / "cache")
    case = root / "case"
    case.mkdir()
    argv, expected = row(case, bundle, work)
    monkeypatch.chdir(root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    locked = [p for p in case.rglob("locked")]
    before = snapshot(root)
    try:
        code, stderr = run_cli(argv, capfd)
    finally:
        for p in locked:
            release(p)
    check_refused(code, stderr, expected)
    after = snapshot(root)
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    assert (added, removed, changed) == ([], [], []), f"added {added}, removed {removed}, changed {changed}"
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "x").exists()  # a climbing case id


SUBPROCESS_ROWS = [infer_nan, infer_case_id_climbing, bundle_from_the_future, train_truncated_image_cache,
                   preprocess_4d_image, preprocess_out_unwritable, run_step_unknown_option]


@pytest.mark.slow
@pytest.mark.parametrize("row", SUBPROCESS_ROWS, ids=[r.__name__ for r in SUBPROCESS_ROWS])
def test_bad_input_through_a_real_subprocess(row, tmp_path, _bundle_template, _workdir_template):
    """A sample of the rows as a shell runs them (`python -m medseg ...`): the same one line, exit 1, nothing written."""
    root = tmp_path / "root"
    root.mkdir()
    bundle = shutil.copytree(_bundle_template, root / "bundle")
    work = shutil.copytree(_workdir_template, root / "cache")
    case = root / "case"
    case.mkdir()
    argv, expected = row(case, bundle, work)
    locked = [p for p in case.rglob("locked")]
    before = snapshot(root)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    try:
        result = subprocess.run([sys.executable, "-m", "medseg", *map(str, argv)], capture_output=True, text=True,
                                timeout=300, cwd=root, env={**env, "OMP_NUM_THREADS": "1"})
    finally:
        for p in locked:
            release(p)
    check_refused(result.returncode, result.stderr, expected)
    assert snapshot(root) == before


def test_cli_output_matches_a_real_subprocess(tmp_path):
    """The in-process runner above says what a user's shell sees: one row through `python -m medseg`."""
    source = scan(tmp_path / "scan.nii.gz", np.nan)
    before = snapshot(tmp_path)
    result = subprocess.run([sys.executable, "-m", "medseg", "infer", str(source), "-m", "nosuch", "--overlap", "1",
                             "-o", str(tmp_path / "m.nii.gz")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    check_refused(result.returncode, result.stderr, "--overlap 1.0")
    assert snapshot(tmp_path) == before


def test_a_worker_error_surfaces_as_its_own_one_line_message():
    """torch re-raises a DataLoader worker's exception with the worker's whole traceback in its message;
    the CLI prints the original message alone."""
    import torch

    from medseg.cli.main import one_line
    from medseg.errors import InputError

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise InputError("/w/preprocessed/c/image.npy: truncated; rerun `medseg preprocess`")

    with pytest.raises(InputError) as caught:
        list(torch.utils.data.DataLoader(Broken(), num_workers=1))
    assert "Traceback" in str(caught.value)  # what torch hands over
    assert one_line(caught.value) == "/w/preprocessed/c/image.npy: truncated; rerun `medseg preprocess`"


def test_a_truncated_case_is_rebuilt_by_rerunning_preprocess(tmp_path, capfd):
    """The error says to rerun `medseg preprocess`: the rerun must rebuild the damaged case, not count it unchanged."""
    from medseg.preprocess.cache import check_case_files

    rows = [(f"c{i}", *labelled_case(tmp_path, f"c{i}")) for i in range(2)]
    manifest = csv_manifest(tmp_path, rows)
    work = tmp_path / "work"
    assert run_cli(["preprocess", manifest, "--out", work], capfd)[0] == 0
    _truncate(work / "preprocessed" / "c0" / "image.npy")
    with pytest.raises(Exception, match="truncated"):
        check_case_files(work, "c0")
    untouched = (work / "preprocessed" / "c1" / "image.npy").stat().st_mtime_ns
    assert run_cli(["preprocess", manifest, "--out", work], capfd)[0] == 0
    check_case_files(work, "c0")  # complete again
    assert (work / "preprocessed" / "c1" / "image.npy").stat().st_mtime_ns == untouched  # the intact case was kept
    check_case_files(work, "c1")


def test_bundles_carry_their_version(_bundle_template, tmp_path):
    from medseg.bundle import BUNDLE_VERSION, load_bundle

    meta = json.loads((_bundle_template / "bundle.json").read_text())
    assert meta["bundle_version"] == BUNDLE_VERSION == 1
    old = shutil.copytree(_bundle_template, tmp_path / "old")
    _edit_bundle(old, "bundle.json", lambda m: m.pop("bundle_version"))  # written before versions: read as 1
    assert load_bundle(old).meta["model"] == "unet3d"


# --- other inputs of the list, whose right outcome is not a refusal --------------------


def test_a_dead_tracking_server_costs_little_and_leaves_no_store(tmp_path, capfd, monkeypatch, _bundle_template):
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once the socket is closed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.chdir(tmp_path)
    source = scan(tmp_path / "scan.nii.gz")
    start = time.monotonic()
    code, stderr = run_cli(["infer", source, "-m", _bundle_template, "-o", tmp_path / "mask.nii.gz"], capfd)
    assert code == 0, stderr
    assert time.monotonic() - start < 15
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) <= 1, stderr  # at most one warning
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz", "scan.nii.gz"]


def test_evaluate_without_a_workdir_creates_no_tracking_store(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    mask = np.zeros((10, 10, 6), np.uint8)
    mask[2:6, 2:6, 1:4] = 1
    write_volume(Volume(mask, np.eye(4)), tmp_path / "pred.nii.gz")
    write_volume(Volume(mask, np.eye(4)), tmp_path / "ref.nii.gz")
    code, stderr = run_cli(["evaluate", "--pred", tmp_path / "pred.nii.gz", "--ref", tmp_path / "ref.nii.gz",
                            "-o", tmp_path / "m.csv"], capfd)
    assert code == 0, stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "m.csv" in names and not any(n.startswith(("mlruns", "mlartifacts")) for n in names), names


def test_a_flipped_mask_is_refused_by_the_seg_writer_in_one_line(real_data, tmp_path):
    """No command writes a SEG from a user's mask, so this row calls the writer as the API would."""
    from medseg.errors import GeometryError
    from medseg.io.dicom import load_dicom_series, write_dicom_seg

    source = load_dicom_series(real_data / "dicom" / "tcia_mr_oblique" / "11_HCropVolume")
    array = np.zeros(source.volume.spatial_shape, np.uint8)
    array[1:5, 2:6, :2] = 1
    mask = source.volume.with_array(array)
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, mask.spatial_shape[0] - 1
    flipped = Volume(np.flip(mask.array, 0).copy(), mask.affine @ flip)  # same shape, other voxel order
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(GeometryError) as caught:
        write_dicom_seg(flipped, source.datasets, out / "seg.dcm", {0: "background", 1: "a"})
    assert "\n" not in str(caught.value) and "origin" in str(caught.value)
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_ctrl_c_during_training_says_how_to_resume(tmp_path):
    import signal
    import time

    work = _training._make_workdir(tmp_path / "work", n_cases=5)
    config = tmp_path / "long.yaml"
    config.write_text(yaml.safe_dump({**TINY_TRAIN, "epochs": 1000, "iterations_per_epoch": 1000, "num_workers": 0}))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, "-m", "medseg", "train", str(work), "--config", str(config), "--fold", "none"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**env, "OMP_NUM_THREADS": "1"}, preexec_fn=default_sigint)
    deadline = time.monotonic() + 120
    while not (work / "mlruns.db").exists() and time.monotonic() < deadline:  # the run is open: training starts
        time.sleep(0.2)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "medseg: interrupted; resume with --resume", stderr
