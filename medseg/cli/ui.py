"""`medseg ui [WORKDIR]`: the MLflow UI on a workdir's tracking store, until interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated

import typer


def command(
    workdir: Annotated[Path, typer.Argument(help="Workdir whose tracking store (mlruns.db, mlartifacts/) to show.")] = Path("."),
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 5000,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
) -> None:
    """Start the MLflow UI on WORKDIR's runs (or say where MLFLOW_TRACKING_URI's server is) and print its URL."""
    from medseg import tracking
    from medseg.errors import InputError

    uri = tracking.tracking_uri(workdir)
    if uri.startswith(("http://", "https://")):
        typer.echo(f"MLFLOW_TRACKING_URI points at a tracking server: open {tracking.redact(uri)} in a browser")
        return
    if not workdir.is_dir():
        raise InputError(f"{workdir}: no such workdir; pass the folder that holds mlruns.db")
    if uri.startswith("sqlite:///") and "MLFLOW_TRACKING_URI" not in os.environ and not (workdir / "mlruns.db").exists():
        if not (workdir / "plan.json").is_file():  # the server would create a store in any folder
            raise InputError(f"{workdir}: no mlruns.db and no plan.json, so not a medseg workdir; pass the workdir of `medseg preprocess` / `medseg train`")
        typer.echo(f"note: {workdir / 'mlruns.db'} does not exist yet; the UI will show no runs until one is logged", err=True)
    args = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri,
        "--default-artifact-root", tracking.artifact_root(workdir).as_uri(),
        "--host", host, "--port", str(port), "--workers", "1",  # one local user: spare the CPU
    ]  # fmt: skip
    # Its own session, so stopping it also stops the web workers it spawns.
    server = subprocess.Popen(args, start_new_session=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{port}"
    try:
        if _wait_until_up(url, server):
            typer.echo(f"MLflow UI at {url} (store {uri}); press Ctrl+C to stop")
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        _stop(server)
    if server.returncode not in (0, None, -signal.SIGTERM):
        typer.echo(f"medseg: error: the MLflow server exited with code {server.returncode} (is port {port} in use?)", err=True)
        raise typer.Exit(1)


def _wait_until_up(url: str, server: subprocess.Popen, timeout_s: float = 180.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).close()
            return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    return False


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is not None:
        return
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.wait()
