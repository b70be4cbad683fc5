"""Helpers for CLI tests that talk to a real MLflow server on a loopback port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np

from medseg.io import write_volume
from medseg.volume import Volume, affine_from_geometry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode} before {url} answered")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


def stop_group(process: subprocess.Popen) -> None:
    """Terminate a process started with start_new_session=True, and everything it spawned."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def write_cases(pred_dir, ref_dir, n: int = 3) -> None:
    """n cases of a 2-label map (16, 16, 8), 1 x 1 x 2 mm; case i's prediction is shifted by i voxels."""
    affine = affine_from_geometry((1.0, 1.0, 2.0), (0, 0, 0), np.eye(3))
    pred_dir.mkdir(parents=True, exist_ok=True)
    ref_dir.mkdir(parents=True, exist_ok=True)
    ref = np.zeros((16, 16, 8), np.uint8)
    ref[4:10, 4:10, 2:6] = 1
    ref[11:14, 11:14, 2:6] = 2
    for i in range(n):
        write_volume(Volume(ref, affine), ref_dir / f"case{i}.nii.gz")
        write_volume(Volume(np.roll(ref, i, axis=0), affine), pred_dir / f"case{i}.nii.gz")
