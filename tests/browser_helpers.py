"""Headless Chromium (Debian's `chromium`, installed by .ci/run) for tests of pages a reviewer opens:
screenshots, the DOM after scripts ran, and the network requests the page itself made."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

QUIET = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--disable-extensions",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
         "--disable-features=Translate,OptimizationHints,MediaRouter,SpellCheck"]
OFFLINE = ["--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND"]  # nothing leaves the machine
LOOPBACK_ONLY = ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    return path


def run_chromium(url: str, tmp: Path, *args: str, network=OFFLINE, timeout_s: float = 180) -> subprocess.CompletedProcess:
    """One headless Chromium run on `url` with its own profile and HOME in `tmp`."""
    tmp.mkdir(parents=True, exist_ok=True)
    command = [chromium(), *QUIET, *network, f"--user-data-dir={tmp / 'profile'}", *args, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env={"HOME": str(tmp), "PATH": "/usr/bin:/bin"})


def screenshot(url: str, tmp: Path, size=(1200, 1600), network=OFFLINE, extra=(), netlog: bool = True) -> tuple[np.ndarray, list[str]]:
    """(RGB screenshot as an (H, W, 3) uint8 array, URLs the page requested over the network).

    The page's requests are read from Chromium's net log (`netlog`): those made for a document
    (network isolation key of the page's site), not the browser's own background calls."""
    from PIL import Image

    shot, log = tmp / "shot.png", tmp / "net.json"
    done = run_chromium(url, tmp, f"--window-size={size[0]},{size[1]}", f"--screenshot={shot}",
                        *([f"--log-net-log={log}"] if netlog else []), *extra, network=network)
    assert shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    return pixels, page_requests(log) if netlog else []


def page_requests(netlog: Path) -> list[str]:
    """URLs of the requests a page (a file:// or loopback document) started, from a Chromium net log."""
    urls = set()
    for event in json.loads(netlog.read_text())["events"]:
        params = event.get("params") or {}
        key = str(params.get("network_isolation_key", ""))
        if "url" in params and ("file://" in key or "127.0.0.1" in key):
            urls.add(params["url"])
    return sorted(urls)


def dom(url: str, tmp: Path, network=OFFLINE, wait_ms: int | None = None) -> str:
    """The page's DOM after it loaded (and, with `wait_ms`, after that much virtual time for scripts)."""
    extra = [f"--virtual-time-budget={wait_ms}"] if wait_ms else []
    done = run_chromium(url, tmp, "--dump-dom", *extra, network=network)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def assert_not_blank(pixels: np.ndarray, min_colours: int = 50) -> None:
    """More than a flat background: many distinct colours and a fair share of non-background pixels."""
    flat = pixels.reshape(-1, 3)
    colours = np.unique(flat[:: max(1, len(flat) // 200_000)], axis=0)
    background = np.median(flat, axis=0)
    differs = np.abs(flat.astype(int) - background).sum(axis=1) > 30
    assert len(colours) >= min_colours, f"only {len(colours)} colours: a blank page?"
    assert differs.mean() > 0.02, f"only {differs.mean():.1%} of the pixels differ from the background"


def has_colour(pixels: np.ndarray, rgb, tolerance: int = 6) -> bool:
    return bool((np.abs(pixels.reshape(-1, 3).astype(int) - np.array(rgb)).max(axis=1) <= tolerance).any())
