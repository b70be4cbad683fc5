"""DICOM image series: discovery, choice and reading into a `Volume` (X, Y, Z), RAS mm.

The input is a folder (searched recursively), one file, or in-memory pydicom Datasets (one, or a
list: a DICOMweb response, a PACS worker's C-STORE buffer). Files are scanned header-first
(`stop_before_pixels`), objects are grouped by SeriesInstanceUID, and pixel data is decoded only
for the chosen series. Geometry comes from ImagePositionPatient/ImageOrientationPatient/
PixelSpacing (or, for enhanced multi-frame objects, the per-frame functional groups), never from
file names or InstanceNumber (`medseg.io.dicom.geometry`).

Voxel convention: array[i, j, k] is the pixel at column i, row j of the k-th slice, slices sorted
by position along the slice normal (row cosine x column cosine).
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

from medseg.errors import DicomError, InputError, SeriesSelectionError
from medseg.io.dicom.geometry import (
    affine_lps,
    dedupe,
    irregularities,
    resample,
    select_volume,
    slice_spacing,
    sort_frames,
    volume_groups,
)
from medseg.io.dicom.pixels import frames_of, num_frames, read_pixels
from medseg.volume import LPS_TO_RAS, Volume, VolumeMeta

log = logging.getLogger(__name__)

PathOrDatasets = Union[str, os.PathLike, Any, Sequence[Any]]
"""A folder or file path, one pydicom Dataset, or a sequence of Datasets."""

# Objects that share a folder with images but are not image series.
NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "SR", "KO", "PR", "REG", "DOC", "FID", "RWV", "PLAN"}
)
NON_IMAGE_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.1.3.10",  # Media Storage Directory (DICOMDIR)
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
        "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    }
)
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber")


@dataclass(frozen=True)
class SeriesSummary:
    """One image series found in a folder; never holds patient data."""

    index: int
    uid: str
    modality: str | None
    description: str | None
    num_slices: int

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        uid = self.uid or "(no SeriesInstanceUID)"
        return f"[{self.index}] {uid} ({self.modality or '-'}, '{self.description or ''}', {self.num_slices} slices)"


@dataclass
class DicomSeries:
    """A loaded series: its volume and the source headers.

    datasets: one per source object, in the order of the volume's k axis (for an enhanced
    multi-frame object, the one dataset): headers without pixel data when read from files, the
    given Datasets themselves when read from memory. After `resample_irregular` the k axis no
    longer maps one-to-one to objects; datasets then stay in sorted slice order.
    """

    volume: Volume
    datasets: list[Any]


@dataclass
class _Series:
    uid: str
    files: list[tuple[Path, Any]]  # (path or in-memory name, header)
    in_memory: bool = False  # headers are whole Datasets: pixels are decoded from them, not from files
    # scan counts, kept on the first series for logging: unreadable files, non-image objects, all files
    skipped: int = 0
    non_image: int = 0
    num_files: int = 0

    @property
    def first(self) -> Any:
        return self.files[0][1]

    @property
    def num_frames(self) -> int:
        return sum(num_frames(ds) for _, ds in self.files)

    def summary(self, index: int) -> SeriesSummary:
        ds = self.first
        return SeriesSummary(
            index=index,
            uid=self.uid,
            modality=_str_or_none(ds.get("Modality")),
            description=_str_or_none(ds.get("SeriesDescription")),
            num_slices=self.num_frames,
        )


# --- public API ----------------------------------------------------------------------------------


def list_series(path_or_datasets: PathOrDatasets) -> list[SeriesSummary]:
    """The image series in a folder (searched recursively), one file, or in-memory Datasets, in index order."""
    where, groups = _series_of(path_or_datasets)
    _log_skipped(groups)
    return [g.summary(i) for i, g in enumerate(groups)]


def read_dicom(path_or_datasets: PathOrDatasets, series: str | None = None, resample_irregular: bool = False,
               volume: int | None = None) -> Volume:
    """Read one DICOM image series as a `Volume` (X, Y, Z), RAS mm. See `load_dicom_series`."""
    return load_dicom_series(path_or_datasets, series=series, resample_irregular=resample_irregular, volume=volume).volume


def count_volumes(path_or_datasets: PathOrDatasets, series: str | None = None) -> int:
    """How many 3D volumes the chosen series holds (1, or the volumes of a 4D acquisition); headers only."""
    where, groups = _series_of(path_or_datasets)
    chosen = _choose(groups, series, where)
    return len(volume_groups(dedupe([fr for p, ds in chosen.files for fr in frames_of(p, ds)])))


def load_dicom_series(
    path_or_datasets: PathOrDatasets, series: str | None = None, resample_irregular: bool = False,
    volume: int | None = None,
) -> DicomSeries:
    """Load one image series from a folder (searched recursively), a single file, or in-memory Datasets.

    path_or_datasets: a path, one pydicom Dataset (e.g. an enhanced multi-frame object), or a
        sequence of Datasets read in full (with pixel data); nothing is read from or written to
        disk for Datasets.
    series: SeriesInstanceUID or index (as listed by `list_series`); needed only when the input
        holds several image series.
    resample_irregular: gantry tilt, missing slices and uneven slice spacing are refused by
        default. When True, the series is resampled instead (output float32):
        - tilt: each slice is shifted in its own plane (linear interpolation, outside filled with
          the series minimum) so that slices stack along the slice normal, as dcm2niix does;
        - missing slices (every step a whole multiple of the smallest): the gaps are filled by
          linear interpolation between their neighbours; every real slice stays exactly as it was;
        - otherwise uneven spacing: linear interpolation along the normal onto a regular grid from
          the first to the last slice with the MEDIAN slice step (adjusted so that both end slices
          stay on the grid). The median rather than the finest step keeps the slice count close to
          the source and does not inflate the volume because of one close pair.
    Raises DicomError (one line) for empty/non-DICOM input, several series without a choice
    (SeriesSelectionError), 4D acquisitions, unreadable pixel data, and refused irregular geometry.
    """
    where, groups = _series_of(path_or_datasets)
    chosen = _choose(groups, series, where)
    _log_skipped(groups)
    frames = dedupe([fr for p, ds in chosen.files for fr in frames_of(p, ds, ds if chosen.in_memory else None)])
    frames = select_volume(frames, volume, where)
    frames, positions, d, normal = sort_frames(frames, where)
    problems = irregularities(positions, d, normal)  # before decoding: refuse fast
    if problems and not resample_irregular:
        raise DicomError(f"{where}: {' and '.join(problems)}; rerun with --resample-irregular (resample_irregular=True in Python) to resample onto a regular grid")
    pixels = read_pixels(frames)  # (K, rows, cols)

    row, col = frames[0].orientation[:3], frames[0].orientation[3:]
    row_spacing, col_spacing = frames[0].pixel_spacing
    if problems:
        log.warning("resampling onto a regular grid: %s", "; ".join(problems))
        pixels, spacing = resample(pixels, positions, d, normal, row, col, row_spacing, col_spacing)
    else:
        spacing = slice_spacing(d, frames[0].header)

    affine = affine_lps(frames[0], positions[0], normal, spacing)
    first = frames[0].header
    meta = VolumeMeta(
        modality=_str_or_none(first.get("Modality")),
        series_uid=chosen.uid or None,
        series_description=_str_or_none(first.get("SeriesDescription")),
    )
    # (K, rows, cols) -> (cols, rows, K) = (i, j, k): a Fortran-ordered view, no copy.
    volume = Volume(pixels.transpose(2, 1, 0), LPS_TO_RAS @ affine, meta)
    datasets = list({id(fr.header): fr.header for fr in frames}.values())
    return DicomSeries(volume=volume, datasets=datasets)


def source_datasets(datasets: list[Any]) -> list[Any]:
    """Copies of the source headers with empty identifying UIDs filled in, so they can be referenced.

    Some anonymised series keep SOPClassUID / SOPInstanceUID only in the file meta and have empty
    Study/Series/FrameOfReference UIDs: the former are taken from the file meta, the latter derived
    deterministically from the series' content (the same for every write from the same series).
    The given Datasets are left untouched.
    """
    from pydicom.uid import generate_uid

    fixed = [_detached_copy(ds) for ds in datasets]
    seed = [str(fixed[0].get("FrameOfReferenceUID", "")), *(str(ds.file_meta.get("MediaStorageSOPInstanceUID", "")) for ds in fixed if hasattr(ds, "file_meta"))]
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        if not str(fixed[0].get(key, "") or ""):
            log.warning("the source series has no %s; a UID derived from its instances is used", key)
            uid = generate_uid(entropy_srcs=[key, *seed])
            for ds in fixed:
                setattr(ds, key, uid)
    for ds in fixed:
        for key in TYPE2_COPIED:  # required (possibly empty) in any derived object
            if key not in ds:
                setattr(ds, key, "")
        for key, meta_key in (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not str(ds.get(key, "") or "") and hasattr(ds, "file_meta"):
                setattr(ds, key, ds.file_meta.get(meta_key))
    _fill_slice_thickness(fixed)
    for ds in fixed:  # an Age String is nnnD/W/M/Y; some anonymisers write "0Y", which every derived object would copy
        age = str(ds.get("PatientAge", "") or "")
        if re.fullmatch(r"\d{1,2}[DWMY]", age):
            ds.PatientAge = age.zfill(4)
    return fixed


def _fill_slice_thickness(datasets: list[Any]) -> None:
    """SliceThickness, when single-frame headers lack it, from the median step between their
    positions along the normal (a SEG's pixel measures need one; some anonymised series drop it)."""
    import numpy as np

    missing = [ds for ds in datasets if "ImagePositionPatient" in ds and not str(ds.get("SliceThickness", "") or "")]
    if not missing or len(datasets) < 2 or any("ImageOrientationPatient" not in ds for ds in datasets):
        return
    orientation = np.asarray(datasets[0].ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    d = np.sort([np.asarray(ds.ImagePositionPatient, float) @ normal for ds in datasets])
    steps = np.diff(d)[np.diff(d) > 1e-3]
    if len(steps):
        log.warning("the source series has no SliceThickness; the slice step %.4g mm is used", float(np.median(steps)))
        for ds in missing:
            ds.SliceThickness = f"{float(np.median(steps)):.6g}"


def _detached_copy(ds: Any) -> Any:
    """A copy whose top-level elements can be set without touching `ds`: copy.copy of a pydicom
    Dataset shares its element dict, and setting a tag changes its element in place, so each
    top-level element is copied (values, pixel data included, are shared, not duplicated)."""
    from pydicom.dataset import Dataset

    out = Dataset()
    for tag in ds.keys():
        out[tag] = copy.copy(ds.get_item(tag))
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    return out


# --- scanning and grouping -----------------------------------------------------------------------


def _series_of(path_or_datasets: PathOrDatasets) -> tuple[Path, list[_Series]]:
    """(a name for messages, the image series of the input)."""
    if isinstance(path_or_datasets, (str, os.PathLike)):
        path = Path(path_or_datasets)
        return path, _image_series(path, *_scan(path))
    datasets = _as_datasets(path_or_datasets)
    where = Path(f"{len(datasets)} in-memory Dataset(s)")
    headers = [(_dataset_name(ds, i), ds) for i, ds in enumerate(datasets)]
    groups = _image_series(where, headers, len(datasets), 0)
    for g in groups:
        g.in_memory = True
    return where, groups


def _as_datasets(value: Any) -> list[Any]:
    from pydicom.dataset import Dataset

    if isinstance(value, Dataset):
        return [value]
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise InputError(
            f"DICOM input: got a {type(value).__name__}; expected a folder or file path, a pydicom Dataset or a list of Datasets"
        )
    if not value:
        raise DicomError("DICOM input: an empty list of Datasets; expected the Datasets of one image series")
    wrong = [i for i, v in enumerate(value) if not isinstance(v, Dataset)]
    if wrong:
        raise InputError(
            f"DICOM input: item {wrong[0]} is a {type(value[wrong[0]]).__name__}, not a pydicom Dataset; "
            "pass Datasets (pydicom.dcmread) or a path"
        )
    return list(value)


def _dataset_name(ds: Any, index: int) -> Path:
    """The file an in-memory Dataset was read from, if known, else 'dataset <index>' (for messages)."""
    filename = getattr(ds, "filename", None)
    return Path(filename) if isinstance(filename, str) and filename else Path(f"dataset {index}")


def _scan(path: Path) -> tuple[list[tuple[Path, Any]], int, int]:
    """Headers of every DICOM file under `path`; also the number of files and of non-DICOM ones."""
    import pydicom

    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        raise DicomError(f"{path}: no such file or folder; check the path")
    if not files:
        raise DicomError(f"{path}: empty folder; expected the files of a DICOM series")
    headers, skipped = [], 0
    for f in files:
        try:
            headers.append((f, pydicom.dcmread(f, stop_before_pixels=True)))
        except Exception as exc:  # not DICOM, or a header too broken to parse: skip, count
            log.debug("skipping %s: %s", f.name, type(exc).__name__)
            skipped += 1
    return headers, len(files), skipped


def _image_series(path: Path, headers: list[tuple[Path, Any]], num_files: int, skipped: int) -> list[_Series]:
    if not headers:
        what = "is not DICOM" if num_files == 1 else f"none of its {num_files} files is DICOM"
        raise DicomError(f"{path}: {what} (no DICM header); expected DICOM image files")
    groups: dict[str, _Series] = {}
    non_image = 0
    for f, ds in headers:
        if not _is_volumetric_image(ds):
            non_image += 1
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        groups.setdefault(uid, _Series(uid, [])).files.append((f, ds))
    if not groups:
        raise DicomError(
            f"{path}: {len(headers)} DICOM objects but no image series with slice positions "
            "(only SEG/RTSTRUCT/SR/secondary captures?); expected CT/MR/PT image files"
        )
    ordered = sorted(groups.values(), key=lambda g: (_series_number(g.first), g.uid))
    ordered[0].skipped, ordered[0].non_image, ordered[0].num_files = skipped, non_image, num_files
    return ordered


def _log_skipped(groups: list[_Series]) -> None:
    """Say what was left out; called once a series is chosen, so that errors stay one line."""
    first = groups[0]
    if first.skipped:
        log.info("skipped %d of %d files that are not readable DICOM", first.skipped, first.num_files)
    if first.non_image:
        log.info("ignored %d DICOM objects that are not volumetric images (SEG, RTSTRUCT, SR, ...)", first.non_image)


def _is_volumetric_image(ds: Any) -> bool:
    if str(ds.get("Modality", "")).upper() in NON_IMAGE_MODALITIES or _sop_class(ds) in NON_IMAGE_SOP_CLASSES:
        return False
    if "Rows" not in ds or "Columns" not in ds:
        return False
    return "ImagePositionPatient" in ds or "PerFrameFunctionalGroupsSequence" in ds


def _choose(groups: list[_Series], series: str | None, path: Path) -> _Series:
    listing = "; ".join(g.summary(i).describe() for i, g in enumerate(groups))
    if series is None:
        if len(groups) == 1:
            return groups[0]
        raise SeriesSelectionError(
            f"{path}: {len(groups)} image series found: {listing}; choose one with --series UID or --series INDEX"
        )
    series = series.strip()
    if series.isdigit() and int(series) < len(groups):
        return groups[int(series)]
    for g in groups:
        if g.uid and g.uid == series:
            return g
    raise SeriesSelectionError(
        f"{path}: no image series with UID or index '{series}'; found {listing}; pass one of these to --series"
    )


# --- small helpers -------------------------------------------------------------------------------


def _sop_class(ds: Any) -> str:
    sop = str(ds.get("SOPClassUID", "") or "")
    if not sop and getattr(ds, "file_meta", None) is not None:
        sop = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    return sop


def _series_number(ds: Any) -> int:
    try:
        return int(ds.get("SeriesNumber"))
    except (TypeError, ValueError):
        return 1 << 31


def _str_or_none(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None
