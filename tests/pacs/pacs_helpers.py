"""Helpers of the PACS tests (a module of its own, imported by name: `from conftest import` would
pick whichever conftest was imported last when several test folders are collected together)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pydicom


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_series(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f) for f in sorted(folder.iterdir()) if f.is_file()]


def part10(datasets):
    """Copies that save as Part 10 files (medseg's source_datasets copies lack the preamble)."""
    for ds in datasets:
        ds.preamble = b"\x00" * 128
    return datasets


def renamed_series(datasets, seed: str) -> list[pydicom.Dataset]:
    """The same images as a new study and series (new Study/Series/SOP Instance UIDs, derived from `seed`)."""
    import copy

    from pydicom.uid import generate_uid

    study, series = generate_uid(entropy_srcs=[seed, "study"]), generate_uid(entropy_srcs=[seed, "series"])
    out = []
    for ds in datasets:
        ds = copy.deepcopy(ds)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[seed, str(ds.SOPInstanceUID)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(ds)
    return out


def dciodvfy_errors(ds: pydicom.Dataset, folder: Path) -> list[str]:
    """The "Error" lines dciodvfy prints for `ds` (saved to `folder`)."""
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
