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


def writable(folder: Path) -> bool:
    """Whether a file can be created in the existing folder `folder` (tried, not guessed: root, read-only
    mounts and immutable folders defeat os.access); the probe is an unnamed temporary file."""
    import tempfile

    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_output_dir(path: Path) -> None:
    """Raise a clear `OutputError` unless `path`'s parent folder exists and is writable, and `path`
    itself is not a folder."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        what = "is a file, not a folder" if parent.exists() else "does not exist"
        raise OutputError(f"{path}: {parent} {what}; create the folder first or choose another output path")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, but a file is to be written here; give a file path (e.g. {path / 'mask.nii.gz'})")
    if not writable(parent):
        raise OutputError(f"{path}: folder {parent} is not writable; choose another output path")


def check_output_folder(path: Path, option: str = "-o") -> None:
    """Raise a clear `OutputError` unless `path` is a writable folder or can be created as one.
    Creates nothing (call `make_output_folder` once every other check has passed)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: is a file, but a folder is needed here; remove the file or choose a folder path")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{option} {path}: {existing} is a file, so the folder cannot be created; choose another folder path")
    if not writable(existing):
        detail = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
        raise OutputError(f"{option} {path}: the folder {detail}; choose a folder you can write to")


def make_output_folder(path: Path, option: str = "-o") -> Path:
    """`check_output_folder`, then create `path` (and its parents); errors as one-line `OutputError`s."""
    check_output_folder(path, option)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot create the folder ({exc.strerror}); choose a folder you can write to") from None
    return Path(path)


def check_plain_name(name: str, what: str, source: str | os.PathLike) -> None:
    """Raise `InputError` unless `name` is usable as one file or folder name inside an output folder:
    not empty, no folder separator, not '.', '..' or hidden (leading '.'), no NUL. Names are refused,
    never silently rewritten, so that outputs keep the names the user gave."""
    from medseg.errors import InputError

    separators = {"/", "\\", os.sep, os.altsep or "/", "\0"}
    if not name or name.startswith(".") or any(c in name for c in separators):  # "." and ".." start with "."
        raise InputError(
            f"{source}: {what} {name!r} is not a plain name (it is empty, hidden, holds a folder separator or '..', "
            "or is an absolute path) and could write outside the output folder; expected a name such as 'case_001'; "
            "rename it in the manifest"
        )


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
