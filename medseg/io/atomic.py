"""Write outputs under a temporary name and rename them when complete: no half-written files."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from medseg.errors import OutputError


def full_suffix(path: Path) -> str:
    """'.nii.gz' for 'x.nii.gz', '.nrrd' for 'x.nrrd', '' for a folder name."""
    name = path.name.lower()
    for double in (".nii.gz", ".tar.gz"):
        if name.endswith(double):
            return double
    return path.suffix.lower()


def check_output_dir(path: Path) -> None:
    """Raise a clear `OutputError` unless `path`'s parent folder exists and is writable."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{path}: folder {parent} does not exist; create it first or choose another output path")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{path}: folder {parent} is not writable; choose another output path")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); rename it to `path` on success.

    On any exception the temporary file or folder is removed and `path` is left untouched.
    """
    path = Path(path)
    check_output_dir(path)
    suffix = full_suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    tmp = path.with_name(f".{stem}.tmp-{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
