"""Experiment tracking in MLflow: the store, its URI and the run tracker (mlflow imported lazily, inside functions).

mlflow is the `tracking` extra: without it, `open_tracker` warns once and returns a no-op tracker (as
for a dead server). Fetching a bundle by run id, runs:/ URI or registered name is
`medseg.tracking_lookup.download_bundle` (the other module that imports mlflow, on this store).

Store: `MLFLOW_TRACKING_URI` when set (e.g. a team server), otherwise SQLite `WORKDIR/mlruns.db`
with artifacts under `WORKDIR/mlartifacts`. One experiment per dataset. Without a workdir and without
`MLFLOW_TRACKING_URI` nothing is tracked and no store is created (never one in the current folder).

Tracking never stops the work: when the store cannot be reached (probed with a short timeout) or a
call fails later, one warning is logged and the tracker becomes a no-op; the caller keeps its own
local record (checkpoints, CSVs) either way. MLflow's HTTP retries and timeouts are bounded
(`HTTP_DEFAULTS`, unless the user set them), so a dead or hanging server costs about 10 s once, and a
server that failed is not asked again by this process.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Mapping

from medseg.errors import InputError
from medseg.extras import available, missing_message, require

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
MAX_PARAM_LENGTH = 500  # MLflow 2 accepts 500 characters, MLflow 3 6000: stay within both
_BATCH = 100  # MLflow's log_batch accepts at most 1000 metrics / 100 params per call
_warned = False
# MLflow's defaults (7 retries, backoff factor 2, 120 s timeout) stall a run about 4 minutes per call on
# a dead server. These give at most 2 tries of 4 s, 1-1.5 s apart: ~10 s worst case on a hanging server.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "4",
}
_failed_uris: set[str] = set()  # stores that failed in this process: not tried again


def configure_http() -> None:
    """Bound MLflow's HTTP retries and timeouts (`HTTP_DEFAULTS`), keeping any the user set."""
    for name, value in HTTP_DEFAULTS.items():
        if not os.environ.get(name, "").strip():
            os.environ[name] = value


def has_store(workdir: Path | None) -> bool:
    """Whether there is a store to use: `MLFLOW_TRACKING_URI` is set or a workdir is given."""
    return bool(os.environ.get("MLFLOW_TRACKING_URI", "").strip()) or workdir is not None


def tracking_uri(workdir: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` if set, else `sqlite:///WORKDIR/mlruns.db` (WORKDIR defaults to the cwd)."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{_db_path(workdir)}"


def artifact_root(workdir: Path | None = None) -> Path:
    """Where the default (local) store keeps artifacts: `WORKDIR/mlartifacts`."""
    return (Path(workdir) if workdir else Path.cwd()).resolve() / "mlartifacts"


def _db_path(workdir: Path | None) -> Path:
    return (Path(workdir) if workdir else Path.cwd()).resolve() / "mlruns.db"


def redact(uri: str) -> str:
    """The URI without any user:password part, for log messages."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return uri


def flatten_params(nested: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"a": {"b": {"c": 1}}} -> {"a.b.c": "1"}; lists become their repr; values cut to MLflow's limit."""
    flat: dict[str, str] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            text = str(value)
            if len(text) > MAX_PARAM_LENGTH:
                text = text[: MAX_PARAM_LENGTH - 3] + "..."
            flat[name] = text
    return flat


def _warn_once(message: str) -> None:
    global _warned
    if not _warned:
        log.warning(message)
        _warned = True


class NullTracker:
    """A tracker that records nothing: used when the tracking store cannot be reached."""

    run_id: str | None = None
    active = False

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass

    def log_artifacts(self, directory: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end(_status_for(exc_type))


class Tracker(NullTracker):
    """One MLflow run. Every call that fails warns once and turns the tracker into a no-op."""

    active = True

    def __init__(self, client, run_id: str, uri: str):
        self._client = client
        self.run_id = run_id
        self._uri = uri

    def _fail(self, what: str, exc: Exception) -> None:
        _failed_uris.add(self._uri)
        _warn_once(
            f"MLflow tracking at {redact(self._uri)} failed while {what} ({type(exc).__name__}: {exc}); "
            "continuing without tracking"
        )
        self.active = False

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log a flat dict (see `flatten_params`); a param already logged with another value is kept and warned about."""
        if not self.active or not params:
            return
        from mlflow.entities import Param

        try:
            existing = self._client.get_run(self.run_id).data.params
            items = []
            for key, value in flatten_params(params).items():
                if key in existing and existing[key] != value:
                    log.warning("MLflow param %s was logged before with another value; keeping the first", key)
                elif key not in existing:
                    items.append(Param(key, value))
            for i in range(0, len(items), _BATCH):
                self._client.log_batch(self.run_id, params=items[i : i + _BATCH], synchronous=True)
        except Exception as exc:
            self._fail("logging params", exc)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self.active or not metrics:
            return
        from mlflow.entities import Metric

        try:
            now = int(time.time() * 1000)
            items = [Metric(key, float(value), now, step or 0) for key, value in metrics.items() if value is not None]
            for i in range(0, len(items), 1000):
                self._client.log_batch(self.run_id, metrics=items[i : i + 1000], synchronous=True)
        except Exception as exc:
            self._fail("logging metrics", exc)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if not self.active:
            return
        try:
            self._client.log_artifact(self.run_id, str(path), artifact_path)
        except Exception as exc:
            self._fail("uploading an artifact", exc)

    def log_artifacts(self, directory: str | os.PathLike, artifact_path: str | None = None) -> None:
        if not self.active:
            return
        try:
            self._client.log_artifacts(self.run_id, str(directory), artifact_path)
        except Exception as exc:
            self._fail("uploading artifacts", exc)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active or not tags:
            return
        from mlflow.entities import RunTag

        try:
            self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)
        except Exception as exc:
            self._fail("setting tags", exc)

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED; later calls do nothing."""
        if not self.active:
            return
        try:
            self._client.set_terminated(self.run_id, status)
        except Exception as exc:
            self._fail("ending the run", exc)
        self.active = False


def _status_for(exc_type) -> str:
    if exc_type is None:
        return "FINISHED"
    return "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"


def _reachable(uri: str) -> str | None:
    """None when `uri` can be used, else why not. Only http(s) servers are probed (short timeout)."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None  # it answers, even if it has no /health page
    except (OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))
    return None


def _client(workdir: Path | None):
    """(MlflowClient, uri), creating WORKDIR when the default local store is used."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(workdir)
    if uri.startswith("sqlite:///") and "MLFLOW_TRACKING_URI" not in os.environ:
        _db_path(workdir).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def _experiment_id(client, name: str, workdir: Path | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if not os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        location = artifact_root(workdir).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:
        experiment = client.get_experiment_by_name(name)  # created meanwhile by a concurrent process
        if experiment is None:
            raise
        return experiment.experiment_id


def open_tracker(
    workdir: Path | None,
    experiment: str,
    run_name: str | None = None,
    run_id: str | None = None,
    tags: dict | None = None,
) -> Tracker | NullTracker:
    """Start a run in `experiment` (created if needed), or continue run `run_id`.

    Returns a `NullTracker` (after one warning) when the store cannot be reached or used, or already
    failed in this process; silently when there is no store (no workdir, no MLFLOW_TRACKING_URI).
    Raises InputError when `run_id` does not exist in a reachable store.
    """
    if not has_store(workdir):
        log.info("no workdir and no MLFLOW_TRACKING_URI: not tracked")
        return NullTracker()
    if not available("mlflow"):  # the tracking extra is not installed: as a dead server, local record only
        _warn_once(f"{missing_message('mlflow')}; continuing without tracking")
        return NullTracker()
    configure_http()
    uri = tracking_uri(workdir)
    if uri in _failed_uris:
        return NullTracker()
    problem = _reachable(uri)
    if problem is not None:
        _failed_uris.add(uri)
        _warn_once(f"MLflow tracking server {redact(uri)} is unreachable ({problem}); continuing without tracking")
        return NullTracker()
    try:
        client, uri = _client(workdir)
        if run_id is not None:
            run = _get_run(client, run_id, uri)
            if run.info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
            tracker = Tracker(client, run_id, uri)
        else:
            experiment_id = _experiment_id(client, experiment, workdir)
            run = client.create_run(experiment_id, run_name=run_name)
            tracker = Tracker(client, run.info.run_id, uri)
    except InputError:
        raise
    except Exception as exc:
        _failed_uris.add(uri)
        _warn_once(f"MLflow tracking at {redact(uri)} cannot be used ({type(exc).__name__}: {exc}); continuing without tracking")
        return NullTracker()
    if tags:
        tracker.set_tags(tags)
    return tracker


def _get_run(client, run_id: str, uri: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or "not found" in str(exc).lower():
            raise InputError(
                f"run {run_id} not found in the tracking store {redact(uri)}; check the run id or MLFLOW_TRACKING_URI"
            ) from None
        raise
