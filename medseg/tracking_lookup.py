"""A model bundle from the MLflow store: by run id, `runs:/` URI, `models:/` URI or registered name.

The store is the one `medseg.tracking` opens for `workdir` (`MLFLOW_TRACKING_URI` or WORKDIR/mlruns.db);
a lookup never creates it. mlflow (the `tracking` extra) is imported inside the call; without it the
lookup says which `pip install` adds it. `medseg.bundle.resolve_model_reference` calls `download_bundle`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from medseg import tracking
from medseg.errors import BundleError
from medseg.extras import require

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def download_bundle(model_ref: str, dst: str | os.PathLike, workdir: Path | None = None) -> Path:
    """Download a model bundle folder (the one holding bundle.json) into `dst`; return its path.

    model_ref: an MLflow run id (its artifact path "bundle"), a `runs:/RUN_ID/PATH` URI, a
    `models:/NAME/VERSION` URI, or a registered model name (its latest version).
    The store is the one `open_tracker(workdir, ...)` would use; it is never created here (no workdir
    and no MLFLOW_TRACKING_URI, or a workdir without mlruns.db: BundleError). Raises BundleError on failure.
    """
    if not tracking.has_store(workdir):
        raise BundleError(
            f"'{model_ref}' is not a bundle folder, and there is no MLflow store to look it up in; "
            "pass the bundle folder, or --workdir WORKDIR (its mlruns.db) or set MLFLOW_TRACKING_URI"
        )
    _check_local_store(workdir, model_ref)
    require("mlflow")  # one line naming `pip install medseg[tracking]` when it is missing
    import mlflow.artifacts

    tracking.configure_http()
    uri = tracking.tracking_uri(workdir)
    problem = tracking._reachable(uri)
    if problem is not None:
        raise BundleError(f"cannot fetch model '{model_ref}': tracking server {tracking.redact(uri)} is unreachable ({problem})")
    if _RUN_ID.match(model_ref):
        artifact_uri = f"runs:/{model_ref}/bundle"
    elif model_ref.startswith("runs:/"):
        artifact_uri = model_ref
    else:
        artifact_uri = _model_version_uri(model_ref, workdir)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(dst), tracking_uri=uri))
    except Exception as exc:
        raise BundleError(
            f"cannot fetch model '{model_ref}' ({artifact_uri}) from {tracking.redact(uri)}: {type(exc).__name__}: {exc}"
        ) from None
    if not (local / "bundle.json").is_file():
        found = next((p.parent for p in sorted(local.rglob("bundle.json"))), None) if local.is_dir() else None
        if found is None:
            raise BundleError(
                f"model '{model_ref}' ({artifact_uri}) holds no bundle.json; expected a bundle folder logged as artifact 'bundle'"
            )
        local = found
    return local


def _check_local_store(workdir: Path | None, model_ref: str) -> None:
    """A lookup in the default local store needs WORKDIR/mlruns.db to exist (a lookup never creates it)."""
    if os.environ.get("MLFLOW_TRACKING_URI", "").strip() or workdir is None:
        return
    if not tracking._db_path(workdir).is_file():
        raise BundleError(
            f"'{model_ref}' is not a bundle folder, and {workdir} has no MLflow store (mlruns.db) to look it up in; "
            "pass the bundle folder, the workdir that trained it, or set MLFLOW_TRACKING_URI"
        )


def _model_version_uri(model_ref: str, workdir: Path | None) -> str:
    """Artifact URI of `models:/NAME/VERSION` or of registered model NAME's latest version."""
    client, uri = tracking._client(workdir)
    name, version = model_ref, None
    if model_ref.startswith("models:/"):
        name, _, version = model_ref[len("models:/") :].partition("/")
    try:
        if not version or version == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise BundleError(
                    f"'{model_ref}' is neither a run id, a runs:/ or models:/ URI, nor a registered model in {tracking.redact(uri)}"
                )
            version = str(max(int(v.version) for v in versions))
        return client.get_model_version_download_uri(name, version)
    except BundleError:
        raise
    except Exception as exc:
        raise BundleError(f"cannot look up registered model '{model_ref}' in {tracking.redact(uri)}: {exc}") from None
