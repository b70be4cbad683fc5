"""medseg.tracking against a local SQLite store and an address where nothing listens."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import pytest

from medseg.errors import BundleError, InputError
from medseg import tracking
from medseg.tracking import NullTracker, flatten_params, open_tracker
from medseg.tracking_lookup import download_bundle


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


# --- bounded cost of a dead or hanging server (issue 14): MLflow's HTTP retries and timeout


def test_http_limits_are_set_unless_the_user_set_them(monkeypatch):
    for name in tracking.HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "33")
    tracking.configure_http()
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
        MLFLOW_HTTP_REQUEST_TIMEOUT,
    )

    assert MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 33  # the user's value wins
    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 1 and MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get() == 1


def test_no_workdir_and_no_tracking_uri_tracks_nothing_and_creates_no_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open_tracker(None, "medseg-test") as tracker:
        assert isinstance(tracker, NullTracker)
    with pytest.raises(BundleError, match="MLFLOW_TRACKING_URI"):
        download_bundle("some-model", tmp_path / "dst")
    assert list(tmp_path.iterdir()) == []


def _training_helpers():
    """tests/training/conftest.py's tiny workdir and config, loaded under another module name."""
    import importlib.util

    path = Path(__file__).parent / "training" / "conftest.py"
    spec = importlib.util.spec_from_file_location("training_conftest_for_tracking", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _timed_tracker_calls(monkeypatch) -> list[float]:
    """Patch every Tracker call to record its duration (seconds) in the returned list."""
    spent: list[float] = []
    for name in ("log_params", "log_metrics", "log_artifact", "log_artifacts", "set_tags", "end"):
        original = getattr(tracking.Tracker, name)

        def timed(self, *args, _original=original, **kwargs):
            t0 = time.monotonic()
            try:
                return _original(self, *args, **kwargs)
            finally:
                spent.append(time.monotonic() - t0)

        monkeypatch.setattr(tracking.Tracker, name, timed)
    return spent


@pytest.mark.slow
def test_tracking_server_lost_mid_training_costs_bounded_time(tmp_path, monkeypatch, caplog):
    """A real `mlflow server` on loopback, first frozen with SIGSTOP (it accepts connections and never
    answers), then, resumed, killed, each after the first epoch of a tiny training: training finishes
    and the tracker calls after the loss take < 15 s in all."""
    import os
    import signal
    import subprocess
    import sys

    from medseg.training.config import load_train_config
    from medseg.training.loop import train

    sys.path.insert(0, str(Path(__file__).parent / "cli"))
    from mlflow_test_helpers import free_port, stop_group, wait_for_http

    helpers = _training_helpers()
    workdir = helpers._make_workdir(tmp_path / "work", n_cases=5)
    config = load_train_config("configs/unet3d.yaml", {**helpers.TINY_OVERRIDES, "epochs": 3, "iterations_per_epoch": 2})
    port = free_port()
    health = f"http://127.0.0.1:{port}/health"
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "art"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    for name in tracking.HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)  # medseg's defaults, not a value from the environment
    spent = _timed_tracker_calls(monkeypatch)
    try:
        for failure, sig in (("hanging", signal.SIGSTOP), ("killed", signal.SIGKILL)):
            wait_for_http(health, server)
            monkeypatch.setattr(tracking, "_warned", False)
            monkeypatch.setattr(tracking, "_failed_uris", set())
            lost_at: list[int] = []

            def echo(line: str) -> None:
                if line.startswith("epoch 1/"):
                    os.killpg(server.pid, sig)
                    lost_at.append(len(spent))

            caplog.clear()
            t0 = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="medseg.tracking"):
                result = train(workdir, config, preset_name=f"unet3d_{failure}", fold=0, echo=echo)
            total = time.monotonic() - t0
            assert lost_at and result.epochs_done == 3 and (result.bundle_dir / "model_best.pt").is_file()
            assert result.run_id  # the run started on the live server
            after = sum(spent[lost_at[0]:])
            print(f"server {failure}: {after:.1f} s in tracker calls after it, training {total:.1f} s in all")
            assert after < 15, f"tracker calls took {after:.1f} s after the server was {failure} (training {total:.1f} s)"
            warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "medseg.tracking"]
            assert len(warnings) == 1 and "continuing without tracking" in warnings[0]
            # the local record is complete: the bundle names its run
            assert json.loads((result.bundle_dir / "bundle.json").read_text())["mlflow_run_id"] == result.run_id
            if failure == "hanging":
                os.killpg(server.pid, signal.SIGCONT)  # it answers again, and is killed next
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGCONT)
        stop_group(server)


@pytest.mark.slow
def test_server_that_accepts_and_never_answers_costs_bounded_time(tmp_path, caplog):
    """A listening socket that never replies: open_tracker and download_bundle each give up within
    about 10 s, and a second open_tracker in the same process does not wait again."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        import os

        os.environ["MLFLOW_TRACKING_URI"] = uri
        try:
            t0 = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="medseg.tracking"):
                first = open_tracker(tmp_path, "medseg-test")
            t1 = time.monotonic()
            second = open_tracker(tmp_path, "medseg-test")
            t2 = time.monotonic()
            with pytest.raises(BundleError, match="unreachable"):
                download_bundle("0" * 32, tmp_path / "x")
            t3 = time.monotonic()
        finally:
            del os.environ["MLFLOW_TRACKING_URI"]
    assert isinstance(first, NullTracker) and isinstance(second, NullTracker)
    assert t1 - t0 < 10 and t2 - t1 < 1 and t3 - t2 < 10
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert not (tmp_path / "mlruns.db").exists()


def test_store_location_is_the_workdirs_unless_mlflow_tracking_uri_says_otherwise(tmp_path, monkeypatch):
    """What `medseg ui` and every command use to find the store; asking never creates it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{(tmp_path / 'mlruns.db').resolve()}"
    assert tracking.artifact_root(tmp_path) == (tmp_path / "mlartifacts").resolve()
    assert tracking.has_store(tmp_path) and not tracking.has_store(None)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://alice:s3cret@mlflow.example.org:8443/")
    assert tracking.tracking_uri(tmp_path) == "https://alice:s3cret@mlflow.example.org:8443/" and tracking.has_store(None)
    assert tracking.redact(tracking.tracking_uri(None)) == "https://mlflow.example.org:8443/"  # never the password in a message
