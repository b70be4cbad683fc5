"""Training without the optional extras: without mlflow it runs and keeps its local record (as with a
dead server); without matplotlib it tracks everything but the plots."""

from __future__ import annotations

import sys

import pytest

from medseg.training.loop import train


@pytest.mark.slow
def test_training_without_mlflow_runs_and_warns_once(tiny_config, tiny_workdir, monkeypatch, caplog):
    from medseg import tracking
    from medseg.bundle import load_bundle

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the workdir's store would be used
    monkeypatch.setattr(tracking, "_warned", False)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    lines = []
    with caplog.at_level("WARNING"):
        result = train(tiny_workdir, tiny_config(), preset_name="unet3d", fold=0, echo=lines.append)
    assert result.run_id is None and result.epochs_done == 2
    assert sum(line.startswith("epoch ") for line in lines) == 2
    bundle = load_bundle(result.bundle_dir)  # the local record: bundle, checkpoints
    assert bundle.labels == {0: "background", 1: "ball", 2: "box"} and (result.bundle_dir / "training_state.pt").is_file()
    warned = [r.getMessage() for r in caplog.records if "pip install medseg[tracking]" in r.getMessage()]
    assert warned == ["mlflow is not installed; `pip install medseg[tracking]` adds it; continuing without tracking"]
    assert not (tiny_workdir / "mlruns.db").exists()


@pytest.mark.slow
def test_training_without_matplotlib_tracks_all_but_the_plots(tiny_config, tiny_workdir, monkeypatch, caplog):
    from mlflow.tracking import MlflowClient

    from medseg.tracking import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with caplog.at_level("WARNING"):
        result = train(tiny_workdir, tiny_config(epochs=1), preset_name="unet3d", fold=0)
    client = MlflowClient(tracking_uri(tiny_workdir))
    assert client.get_run(result.run_id).info.status == "FINISHED"
    top = {a.path for a in client.list_artifacts(result.run_id)}
    assert "bundle" in top and "plots" not in top
    assert any("pip install medseg[plots]" in r.getMessage() for r in caplog.records)
