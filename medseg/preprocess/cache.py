"""The preprocessed cache under WORKDIR (layout in docs/architecture.md).

```
WORKDIR/preprocessed/<case_id>/image.npy        float32 (C, X, Y, Z), read with mmap
WORKDIR/preprocessed/<case_id>/label.npy        uint8 (X, Y, Z)
WORKDIR/preprocessed/<case_id>/properties.json  CaseProperties + cache stamp (input hash, plan digest)
WORKDIR/preprocessed/<case_id>/locations.npz    "1", "2", ...: (N, 3) voxel indices of each class
```
Each case is written into a hidden temporary folder and renamed into place, so a killed run never
leaves a half-written case; leftovers of killed runs are removed by `clean_partial`.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.preprocess.case import CaseProperties, PreprocessedCase

MAX_LOCATIONS = 10000
CASES_DIR = "preprocessed"
_TMP_PREFIX = ".tmp-"


@dataclass
class CachedCase:
    """image: float32 (C, X, Y, Z) memory-mapped; label: uint8 (X, Y, Z) or None;
    locations: class -> (N, 3) int voxel indices on the preprocessed grid."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    properties: CaseProperties
    locations: dict[int, np.ndarray]


def cases_dir(workdir: str | os.PathLike) -> Path:
    return Path(workdir) / CASES_DIR


def list_cached_cases(workdir: str | os.PathLike) -> list[str]:
    """Sorted ids of the complete cases in the cache."""
    root = cases_dir(workdir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "properties.json").is_file())


def _rerun_hint(workdir) -> str:
    return f"rerun `medseg preprocess` with --out {workdir} to rebuild it"


def npy_problem(path: Path) -> str | None:
    """What is wrong with the .npy file `path` (missing, unreadable header, shorter than its header
    says), or None when it is complete. Reads only the header: cheap enough for every case at start."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            expected = f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, EOFError) as exc:
        return f"not a readable .npy file ({type(exc).__name__})"
    if size < expected:
        return f"truncated: {size} bytes, expected {expected} for a {dtype} array of shape {tuple(shape)}"
    return None


def _check_arrays(folder: Path, workdir, case_id: str) -> None:
    """`InputError` naming the file when image.npy or label.npy is missing or truncated (headers only)."""
    for name in ("image.npy", "label.npy"):
        if name == "label.npy" and not (folder / name).exists():
            continue  # unlabelled cases have no label.npy
        problem = npy_problem(folder / name)
        if problem is not None:
            raise InputError(f"{folder / name}: cached file of case '{case_id}' is {problem}; {_rerun_hint(workdir)}")


def check_case_files(workdir: str | os.PathLike, case_id: str) -> None:
    """Raise `InputError` naming the file when a cached case's image.npy or label.npy is missing or truncated,
    or its locations.npz is damaged."""
    folder = cases_dir(workdir) / case_id
    _check_arrays(folder, workdir, case_id)
    load_locations(folder, workdir)  # small; a damaged one is named here rather than in a loader worker


def load_locations(folder: Path, workdir) -> dict[int, np.ndarray]:
    """locations.npz of a cached case folder ({} when absent); a damaged file is an `InputError`."""
    path = folder / "locations.npz"
    if not path.is_file():
        return {}
    try:
        with np.load(path) as npz:
            return {int(k): npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable locations file ({type(exc).__name__}); {_rerun_hint(workdir)}") from None


def load_properties(workdir: str | os.PathLike, case_id: str) -> CaseProperties:
    """A cached case's properties.json alone; missing or damaged is an `InputError` naming it."""
    folder = cases_dir(workdir) / case_id
    if not (folder / "properties.json").is_file():
        raise InputError(f"{folder}: no preprocessed case '{case_id}' here; run `medseg preprocess` with --out {workdir}")
    try:
        raw = json.loads((folder / "properties.json").read_text())
        raw.pop("cache", None)
        return CaseProperties.model_validate(raw)
    except (OSError, ValueError, AttributeError) as exc:  # JSON or pydantic validation
        raise InputError(f"{folder / 'properties.json'}: not a readable case properties file ({type(exc).__name__}); {_rerun_hint(workdir)}") from None


def load_case(workdir: str | os.PathLike, case_id: str, mmap: bool = True) -> CachedCase:
    """One cached case; arrays are memory-mapped (read-only) unless `mmap` is False.
    A missing, damaged or truncated file is an `InputError` naming it."""
    folder = cases_dir(workdir) / case_id
    props = load_properties(workdir, case_id)
    _check_arrays(folder, workdir, case_id)
    mode = "r" if mmap else None
    image = np.load(folder / "image.npy", mmap_mode=mode)
    label = np.load(folder / "label.npy", mmap_mode=mode) if (folder / "label.npy").is_file() else None
    locations = load_locations(folder, workdir)
    return CachedCase(case_id, image, label, props, locations)


def sample_locations(label: np.ndarray, case_id: str, max_per_class: int = MAX_LOCATIONS) -> dict[int, np.ndarray]:
    """Per foreground channel of `label` (channel indices), up to `max_per_class` voxel indices (N, 3),
    chosen reproducibly per case."""
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))
    out = {}
    for c in np.unique(label):
        if c == 0 or c == 255:  # background, and unannotated voxels (IGNORE_LABEL) are no class to sample
            continue
        idx = np.argwhere(label == c)
        if len(idx) > max_per_class:
            idx = idx[np.sort(rng.choice(len(idx), max_per_class, replace=False))]
        out[int(c)] = idx.astype(np.int32)
    return out


def cache_stamp(workdir: str | os.PathLike, case_id: str) -> dict | None:
    """The {input_sha256, plan_digest} a cached case was made from, or None if absent or damaged
    (a truncated .npy, so that rerunning `medseg preprocess` rebuilds it)."""
    path = cases_dir(workdir) / case_id / "properties.json"
    try:
        stamp = json.loads(path.read_text()).get("cache")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    try:
        check_case_files(workdir, case_id)
    except InputError:
        return None
    return stamp


def write_case(workdir: str | os.PathLike, case_id: str, case: PreprocessedCase, stamp: dict) -> Path:
    """Write one case atomically (temporary folder, then rename); replaces an older version."""
    from medseg.io.atomic import check_plain_name

    check_plain_name(case_id, "case_id", "the manifest")  # preprocessed/<case_id> must stay inside WORKDIR
    root = cases_dir(workdir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / case_id
    tmp = root / f"{_TMP_PREFIX}{case_id}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    np.save(tmp / "image.npy", np.ascontiguousarray(case.image, dtype=np.float32))
    locations = {}
    if case.label is not None:
        np.save(tmp / "label.npy", np.ascontiguousarray(case.label, dtype=np.uint8))
        locations = sample_locations(case.label, case_id)
    np.savez(tmp / "locations.npz", **{str(k): v for k, v in locations.items()})
    props = case.properties.model_dump()
    props["cache"] = stamp
    (tmp / "properties.json").write_text(json.dumps(props, indent=1))
    if final.exists():
        old = root / f"{_TMP_PREFIX}old-{case_id}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def clean_partial(workdir: str | os.PathLike) -> int:
    """Remove temporary folders left by killed runs; returns how many were removed."""
    root = cases_dir(workdir)
    if not root.is_dir():
        return 0
    stale = [p for p in root.iterdir() if p.name.startswith(_TMP_PREFIX)]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return len(stale)
