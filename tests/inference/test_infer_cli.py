"""`medseg infer` on many cases: manifests, nnU-Net channel files, and its MLflow run."""

from __future__ import annotations

import shutil

import numpy as np

from cli_helpers import run
from medseg.io import read_volume, write_volume
from medseg.volume import Volume


def blob_scan(path, seed):
    """A 3 mm scan holding one bright ball, as the tiny bundle was trained on."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in (32, 32, 16)], indexing="ij"), -1)
    ball = np.linalg.norm(grid - [16, 16, 8], axis=-1) < 5
    image = (rng.normal(0, 0.5, ball.shape) + 2.5 * ball - 0.3).astype(np.float32)
    return write_volume(Volume(image, np.diag([3.0, 3.0, 3.0, 1.0])), path)


def test_manifest_and_nnunet_channel_files(tiny_bundle, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    blob_scan(scans / "a.nii.gz", 0)
    blob_scan(scans / "b.nii.gz", 1)
    (tmp_path / "cases.csv").write_text("case_id,image\ncase_a,scans/a.nii.gz\ncase_b,scans/b.nii.gz\n")
    out = tmp_path / "out"
    assert run("infer", tmp_path / "cases.csv", "--model", tiny_bundle, "-o", out, "--precision", "fp32") == 0
    assert sorted(p.name for p in out.iterdir()) == ["case_a.nii.gz", "case_b.nii.gz", "medseg-ledger"]  # + the run ledger
    mask = read_volume(out / "case_a.nii.gz")
    assert mask.spatial_shape == (32, 32, 16) and mask.array.sum() > 0

    nnunet = tmp_path / "imagesTs"
    nnunet.mkdir()
    shutil.copy(scans / "a.nii.gz", nnunet / "case_x_0000.nii.gz")
    out2 = tmp_path / "out2"
    assert run("infer", nnunet, "--model", tiny_bundle, "-o", out2, "--precision", "fp32") == 0
    assert sorted(p.name for p in out2.iterdir()) == ["case_x.nii.gz", "medseg-ledger"]
    np.testing.assert_array_equal(read_volume(out2 / "case_x.nii.gz").array, mask.array)


def test_infer_run_is_logged_beside_training(tiny_bundle, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from medseg.tracking import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    work = tmp_path / "work"
    bundle = work / "models" / "tiny" / "fold_0"
    shutil.copytree(tiny_bundle, bundle)
    shutil.copy(bundle / "plan.json", work / "plan.json")
    scan = blob_scan(tmp_path / "scan.nii.gz", 2)
    assert run("infer", scan, "--model", bundle, "-o", tmp_path / "mask.nii.gz", "--precision", "fp32") == 0
    client = MlflowClient(tracking_uri(work))
    experiment = client.get_experiment_by_name("blobs")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["medseg.command"] == "infer"
    assert runs[0].data.metrics["cases_ok"] == 1 and runs[0].data.params["infer.precision"] == "fp32"
