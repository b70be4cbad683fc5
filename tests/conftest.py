"""Shared fixtures. Golden tests read the small real DICOM, SEG and RTSTRUCT files shipped in
tests/data (`real_data`, see tests/data/ATTRIBUTION.md); only the large Hippocampus set is read from
../shared/data (`shared_data`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parent / "data"
# MEDSEG_SHARED_DATA moves (or, pointed at a missing folder, hides) the large data beside the clone
SHARED_DATA = Path(os.environ.get("MEDSEG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Root of the real files shipped with the repository, laid out as ../shared/data is
    (dicom/<source>/..., volumes/totalsegmentator/...): always present, never skipped."""
    return REAL_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the large real data (the 208 Hippocampus cases, the full DICOM collections); tests
    that need it skip (with this reason) when it is absent, as in a user's fresh clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"large real data not found at {SHARED_DATA} (it sits beside the repository on developer machines and CI; "
                    "set MEDSEG_SHARED_DATA to move it)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    """Run every test on one torch thread. Tests use tiny tensors, where OpenMP threads that wait
    on each other cost far more than they give (measured on a loaded 2-core machine: a 16^3
    DeepLab step 1.6 s on two threads vs 0.02 s on one), and several tests start subprocesses
    (torchrun ranks, loader workers) that would otherwise oversubscribe the cores."""
    import torch

    # medseg sets its threads from OMP_NUM_THREADS (medseg.threads), in this process and in the
    # subprocesses tests start: the same one thread everywhere, so runs compared across them agree
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def forbid_file_writes(monkeypatch, tmp_path):
    """Within the test, any attempt to create, write, rename or delete a file or folder raises (and is
    recorded, in case something swallows the error); the working folder is an empty one that must stay
    empty. Reading stays allowed. Yields the list of attempts (empty unless a test expects one)."""
    import builtins
    import io
    import os

    attempts: list[str] = []

    def refuse(what):
        attempts.append(what)
        raise AssertionError(f"file system write attempted: {what}")

    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
            refuse(f"open({file!r}, {mode!r})")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC):
            refuse(f"os.open({path!r}, {flags:#o})")
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    for name in ("replace", "rename", "remove", "unlink", "mkdir", "makedirs", "rmdir", "link", "symlink", "truncate"):
        monkeypatch.setattr(os, name, lambda *a, _name=name, **k: refuse(f"os.{_name}{a}"))
    monkeypatch.chdir(tmp_path)
    yield attempts
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "files were created in the working folder"
