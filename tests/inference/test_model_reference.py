"""`medseg infer --model` with an MLflow run id or runs:/ URI gives the bundle folder's mask; --crf runs."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.cli.main import run_argv
from medseg.io import read_volume, write_volume
from medseg.tracking import open_tracker

from test_predictor import oblique_case


@pytest.mark.slow  # a fresh SQLite store and four inferences
def test_mlflow_run_id_and_runs_uri_give_the_same_mask_as_the_bundle_folder(tiny_bundle, tmp_path, monkeypatch):
    workdir = tmp_path / "work"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with open_tracker(workdir, "medseg-infer-test", run_name="train") as tracker:
        assert tracker.active
        tracker.log_artifacts(tiny_bundle, "bundle")
        run_id = tracker.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{(workdir / 'mlruns.db').resolve()}")
    monkeypatch.chdir(tmp_path)  # nothing found relative to the cwd by accident
    image, _ = oblique_case(seed=4)
    scan = tmp_path / "scan.nii.gz"
    write_volume(image, scan)
    masks = {}
    for name, ref in [("folder", str(tiny_bundle)), ("run", run_id), ("uri", f"runs:/{run_id}/bundle")]:
        out = tmp_path / f"{name}.nii.gz"
        run_argv(["infer", str(scan), "--model", ref, "-o", str(out), "--precision", "fp32", "--device", "cpu"])
        masks[name] = read_volume(out).array
    assert masks["folder"].any()
    assert np.array_equal(masks["run"], masks["folder"]) and np.array_equal(masks["uri"], masks["folder"])

    # without MLFLOW_TRACKING_URI, --workdir names the store the run id is looked up in
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    out = tmp_path / "workdir.nii.gz"
    run_argv(["infer", str(scan), "--model", run_id, "--workdir", str(workdir), "-o", str(out), "--precision", "fp32", "--device", "cpu"])
    assert np.array_equal(read_volume(out).array, masks["folder"])
    # and with neither, the run id is refused in one line, creating no store anywhere
    code, err = main_exit(["infer", str(scan), "--model", run_id, "-o", str(tmp_path / "none.nii.gz")])
    assert code == 1 and err.count("\n") == 1 and "MLFLOW_TRACKING_URI" in err
    assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "none.nii.gz").exists()


def test_infer_with_crf_flag_writes_a_mask_on_the_input_grid(tiny_bundle, tmp_path):
    image, mask = oblique_case(seed=5)
    scan = tmp_path / "scan.nii.gz"
    write_volume(image, scan)
    out = tmp_path / "crf.nii.gz"
    run_argv(["infer", str(scan), "--model", str(tiny_bundle), "-o", str(out), "--precision", "fp32", "--crf"])
    result = read_volume(out)
    assert result.array.shape == image.array.shape and np.allclose(result.affine, image.affine)
    dice = 2 * np.logical_and(result.array == 1, mask).sum() / ((result.array == 1).sum() + mask.sum())
    assert dice > 0.8


def main_exit(argv) -> tuple[int, str]:
    """Run the console entry point; (exit code, stderr)."""
    import contextlib
    import io

    import pytest

    from medseg.cli.main import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code or 0, err.getvalue()


def blobs_scan(path, spacing=3.0):
    """Two bright balls far apart (a large one and a small stray one) on a 3 mm grid; returns the two masks."""
    from medseg.volume import Volume

    rng = np.random.default_rng(7)
    grid = np.indices((40, 40, 20)).transpose(1, 2, 3, 0)
    big = np.linalg.norm(grid - np.array([12, 12, 10]), axis=-1) < 6
    small = np.linalg.norm(grid - np.array([30, 30, 10]), axis=-1) < 3
    image = rng.normal(0, 0.5, big.shape) + 2.5 * (big | small) - 0.3
    write_volume(Volume(image.astype(np.float32), np.diag([spacing] * 3 + [1.0])), path)
    return big, small


def bundle_copy(tiny_bundle, dst, **meta_changes):
    import json
    import shutil

    shutil.copytree(tiny_bundle, dst)
    meta = json.loads((dst / "bundle.json").read_text())
    meta.update(meta_changes)
    (dst / "bundle.json").write_text(json.dumps(meta))
    return dst


def test_bundle_postprocessing_removes_a_stray_blob_unless_no_postprocess(tiny_bundle, tmp_path):
    scan = tmp_path / "scan.nii.gz"
    big, small = blobs_scan(scan)
    steps = [{"name": "keep_largest_component", "params": {"classes": [1]}}]
    bundle = bundle_copy(tiny_bundle, tmp_path / "pp", postprocessing=steps)
    common = ["infer", str(scan), "--model", str(bundle), "--precision", "fp32", "--device", "cpu"]
    run_argv(common + ["-o", str(tmp_path / "default.nii.gz")])
    run_argv(common + ["-o", str(tmp_path / "raw.nii.gz"), "--no-postprocess"])
    default, raw = read_volume(tmp_path / "default.nii.gz").array, read_volume(tmp_path / "raw.nii.gz").array
    assert (raw[small] == 1).mean() > 0.5 and (raw[big] == 1).mean() > 0.5  # the network finds both balls
    assert not (default[small] == 1).any()  # the bundle's step removed the stray one
    assert np.array_equal(default[big], raw[big]) and (default == 1).sum() < (raw == 1).sum()


def test_fold_none_bundles_are_used_alone_or_when_named(tiny_bundle, tmp_path):
    scan = tmp_path / "scan.nii.gz"
    blobs_scan(scan)
    only = tmp_path / "only"
    bundle_copy(tiny_bundle, only / "fold_none", fold="none")
    common = ["--precision", "fp32", "--device", "cpu"]
    run_argv(["infer", str(scan), "--model", str(only), "-o", str(tmp_path / "a.nii.gz"), *common])  # "fold": "none" is no ValueError
    reference = read_volume(tmp_path / "a.nii.gz").array
    assert reference.any()
    # beside cross-validation folds, fold_none joins only when named by --folds none
    parent = tmp_path / "parent"
    bundle_copy(tiny_bundle, parent / "fold_none", fold="none")
    bundle_copy(tiny_bundle, parent / "fold_0", fold=0)
    for extra in (["--folds", "none"], ["--folds", "0,none"]):
        out = tmp_path / f"{'_'.join(extra)}.nii.gz"
        run_argv(["infer", str(scan), "--model", str(parent), "-o", str(out), *common, *extra])
        assert np.array_equal(read_volume(out).array, reference)  # identical weights: identical masks
    code, err = main_exit(["infer", str(scan), "--model", str(parent), "--folds", "3", "-o", str(tmp_path / "x.nii.gz"), *common])
    assert code == 1 and "--folds 3" in err and err.count("\n") == 1


def test_unknown_model_name_creates_no_store_in_the_current_folder(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    scan = tmp_path / "scan.nii.gz"
    blobs_scan(scan)
    code, err = main_exit(["infer", str(scan), "--model", "nosuchmodel", "-o", str(tmp_path / "out.nii.gz")])
    assert code == 1 and err.count("\n") == 1 and "nosuchmodel" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz", "temp"] and not any(temp.iterdir())
    # a workdir without a store: refused, and no store made there either
    work = tmp_path / "work"
    work.mkdir()
    code, err = main_exit(["infer", str(scan), "--model", "nosuchmodel", "--workdir", str(work), "-o", str(tmp_path / "out.nii.gz")])
    assert code == 1 and "mlruns.db" in err and not any(work.iterdir())
