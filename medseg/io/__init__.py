"""Reading scans into `Volume` and writing them back, whatever the format.

`read_volume` and `write_volume` are the only entry points the rest of medseg needs; each format's
module converts to and from RAS+ (X, Y, Z) once, here at the edge.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medseg.errors import InputError, OutputError
from medseg.io.atomic import full_suffix
from medseg.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_READ_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def read_volume(path_or_datasets: str | os.PathLike | Any, series: str | None = None, resample_irregular: bool = False,
                volume: int | None = None) -> Volume:
    """Read a NIfTI/NRRD/MetaImage file, a DICOM folder (or single DICOM file), or in-memory pydicom
    Datasets (one, or a list of one series' slices) as a `Volume`.

    series: for DICOM input with several image series, the SeriesInstanceUID or index to load.
    resample_irregular: DICOM only; resample gantry-tilted or unevenly spaced series onto a
        regular grid instead of refusing them.
    volume: DICOM only; the 3D volume (0-based) of a 4D series.
    These DICOM options given for a NIfTI/NRRD/MHA file are an InputError (never silently ignored).
    """
    if not isinstance(path_or_datasets, (str, os.PathLike)):  # Datasets (anything else is refused there, in one line)
        from medseg.io.dicom import read_dicom

        return read_dicom(path_or_datasets, series=series, resample_irregular=resample_irregular, volume=volume)
    path = Path(path_or_datasets)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; check the path")
    suffix = full_suffix(path)
    if path.is_dir() or suffix in (".dcm", ".ima", "") or suffix not in NIFTI_SUFFIXES + ITK_READ_SUFFIXES:
        from medseg.io.dicom import read_dicom

        return read_dicom(path, series=series, resample_irregular=resample_irregular, volume=volume)
    refuse_dicom_options(path, series=series, resample_irregular=resample_irregular, volume=volume)
    if suffix in NIFTI_SUFFIXES:
        from medseg.io.nifti import read_nifti

        return read_nifti(path)
    from medseg.io.itk import read_itk

    return read_itk(path)


def write_volume(volume: Volume, path: str | os.PathLike) -> Path:
    """Write `volume` as .nii.gz, .nii, .nrrd or .mha (chosen by suffix), atomically."""
    path = Path(path)
    suffix = full_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        from medseg.io.nifti import write_nifti

        write_nifti(volume, path)
    elif suffix in (".nrrd", ".mha"):
        from medseg.io.itk import write_itk

        write_itk(volume, path)
    else:
        raise OutputError(
            f"{path}: cannot write '{suffix or 'no suffix'}' files; use one of {', '.join(WRITE_SUFFIXES)}"
        )
    return path


def refuse_dicom_options(path: Path, *, series: str | None = None, resample_irregular: bool = False,
                         volume: int | None = None) -> None:
    """InputError (one line) when an option that only applies to DICOM is given for an image file."""
    given = [name for name, value in (("--series", series), ("--resample-irregular", resample_irregular or None),
                                      ("--volume", volume)) if value is not None]
    if given:
        raise InputError(
            f"{path}: {', '.join(given)} applies only to DICOM input, but this is a {full_suffix(path) or 'non-DICOM'} file; "
            f"leave {', '.join(given)} out for it"
        )


def is_readable_image_path(path: Path) -> bool:
    """True for files with an image suffix medseg reads (not DICOM folders)."""
    return full_suffix(path) in NIFTI_SUFFIXES + ITK_READ_SUFFIXES
