"""`medseg infer --model` with an MLflow run id or runs:/ URI gives the bundle folder's mask; --crf runs."""

from __future__ import annotations

import numpy as np

from medseg.cli.main import run_argv
from medseg.io import read_volume, write_volume
from medseg.tracking import open_tracker

from test_predictor import oblique_case


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
