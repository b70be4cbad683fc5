"""medseg.tracking against a local SQLite store and an address where nothing listens."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pytest

from medseg.errors import BundleError, InputError
from medseg import tracking
from medseg.tracking import NullTracker, download_bundle, flatten_params, open_tracker


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("work")


@pytest.fixture(autouse=True)
def local_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "_warned", False)
    monkeypatch.setattr(tracking, "_failed_uris", set())


def client(workdir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{workdir.resolve()}/mlruns.db")


def test_flatten_params():
    flat = flatten_params({"a": {"b": {"c": 1}, "d": [1, 2]}, "e": "x" * 1000, "f": {}})
    assert flat == {"a.b.c": "1", "a.d": "[1, 2]", "e": "x" * 497 + "...", "f": "{}"}


@pytest.mark.slow  # SQLite migrations of a fresh store take a few seconds
def test_local_store_round_trip(workdir, tmp_path):
    artifact = tmp_path / "notes.txt"
    artifact.write_text("hello")
    bundle = tmp_path / "bundle_src"
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{}")
    with open_tracker(workdir, "medseg-test", run_name="r1", tags={"dataset": "toy"}) as tracker:
        assert tracker.active
        tracker.log_params({"model": "unet3d", "lr": 0.01})
        tracker.log_metrics({"dice_1": 0.5}, step=1)
        tracker.log_metrics({"dice_1": 0.75}, step=2)
        tracker.log_artifact(artifact)
        tracker.log_artifacts(bundle, "bundle")
        tracker.set_tags({"fold": 0})
        run_id = tracker.run_id
    assert (workdir / "mlruns.db").is_file()
    run = client(workdir).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"model": "unet3d", "lr": "0.01"}
    assert run.data.tags["dataset"] == "toy" and run.data.tags["fold"] == "0"
    history = client(workdir).get_metric_history(run_id, "dice_1")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.75)]
    assert (workdir / "mlartifacts" / run_id / "artifacts" / "notes.txt").read_text() == "hello"

    # continue the same run, then fetch its bundle three ways
    with open_tracker(workdir, "medseg-test", run_id=run_id) as again:
        again.log_metrics({"dice_2": 0.25})
    assert client(workdir).get_run(run_id).data.metrics == {"dice_1": 0.75, "dice_2": 0.25}
    assert (download_bundle(run_id, tmp_path / "a", workdir=workdir) / "bundle.json").is_file()
    assert (download_bundle(f"runs:/{run_id}/bundle", tmp_path / "b", workdir=workdir) / "bundle.json").is_file()
    client(workdir).create_registered_model("toy-model")
    client(workdir).create_model_version("toy-model", source=f"runs:/{run_id}/bundle", run_id=run_id)
    assert (download_bundle("toy-model", tmp_path / "c", workdir=workdir) / "bundle.json").is_file()
    with pytest.raises(BundleError, match="no-such-model"):
        download_bundle("no-such-model", tmp_path / "d", workdir=workdir)


def test_failed_block_marks_run_failed_and_unknown_run_is_an_input_error(workdir):
    with pytest.raises(RuntimeError):
        with open_tracker(workdir, "medseg-test") as tracker:
            raise RuntimeError("boom")
    assert client(workdir).get_run(tracker.run_id).info.status == "FAILED"
    with pytest.raises(InputError, match="not found"):
        open_tracker(workdir, "medseg-test", run_id="0" * 32)


def test_unreachable_server_warns_once_and_continues(monkeypatch, caplog, tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="medseg.tracking"):
        for _ in range(2):
            with open_tracker(tmp_path, "medseg-test", run_name="offline") as tracker:
                assert isinstance(tracker, NullTracker) and tracker.run_id is None
                tracker.log_params({"a": 1})
                tracker.log_metrics({"m": 1.0}, step=0)
                tracker.log_artifact(tmp_path)
                tracker.set_tags({"t": 1})
    assert time.monotonic() - start < 30
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
    assert not (tmp_path / "mlruns.db").exists()
    with pytest.raises(BundleError, match="unreachable"):
        download_bundle("0" * 32, tmp_path / "x")
