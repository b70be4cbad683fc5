"""`medseg infer` from a bundle folder without mlflow (the `tracking` extra): masks written, one warning."""

from __future__ import annotations

import sys

import numpy as np

from medseg.io import read_volume, write_volume
from medseg.volume import Volume


def test_infer_without_mlflow_writes_the_mask(tiny_bundle, tmp_path, monkeypatch, caplog):
    from medseg import tracking
    from medseg.cli.main import run_argv

    rng = np.random.default_rng(0)
    image = Volume((rng.normal(0, 0.5, (20, 18, 10)) + 2.5 * (np.indices((20, 18, 10))[0] > 10)).astype(np.float32),
                   np.diag([3.0, 3.0, 3.0, 1.0]))
    write_volume(image, tmp_path / "scan.nii.gz")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "_warned", False)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with caplog.at_level("WARNING"):
        run_argv(["infer", str(tmp_path / "scan.nii.gz"), "--model", str(tiny_bundle), "-o", str(tmp_path / "mask.nii.gz"),
                  "--device", "cpu", "--precision", "fp32", "--workdir", str(tmp_path / "work")])
    mask = read_volume(tmp_path / "mask.nii.gz")
    assert mask.array.shape == image.array.shape and np.allclose(mask.affine, image.affine)
    assert [r.getMessage() for r in caplog.records if "medseg[tracking]" in r.getMessage()] == [
        "mlflow is not installed; `pip install medseg[tracking]` adds it; continuing without tracking"
    ]
    assert not (tmp_path / "work" / "mlruns.db").exists()


def test_infer_to_rtstruct_without_rt_utils_says_so_before_predicting(tiny_bundle, tmp_path, monkeypatch):
    import pytest

    from medseg.cli.main import run_argv
    from medseg.extras import MissingExtraError

    write_volume(Volume(np.zeros((8, 8, 4), np.float32), np.eye(4)), tmp_path / "scan.nii.gz")
    monkeypatch.setitem(sys.modules, "rt_utils", None)
    monkeypatch.setattr("medseg.inference.predictor.Predictor.predict", lambda *a, **k: pytest.fail("predicted first"))
    with pytest.raises(MissingExtraError, match=r"^rt-utils is not installed; `pip install medseg\[rtstruct\]` adds it$"):
        run_argv(["infer", str(tmp_path / "scan.nii.gz"), "--model", str(tiny_bundle), "-o", str(tmp_path / "out.dcm"),
                  "--format", "rtstruct", "--device", "cpu"])
    assert not (tmp_path / "out.dcm").exists()
