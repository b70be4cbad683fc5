"""DICOM image series -> `Volume` (X, Y, Z), RAS mm.

A folder (searched recursively) or one file is scanned header-first (`stop_before_pixels`), files
are grouped by SeriesInstanceUID, and pixel data is decoded only for the chosen series. Geometry
comes from ImagePositionPatient/ImageOrientationPatient/PixelSpacing (or, for enhanced multi-frame
objects, the per-frame functional groups), never from file names or InstanceNumber.

Voxel convention: array[i, j, k] is the pixel at column i, row j of the k-th slice, slices sorted
by position along the slice normal (row cosine x column cosine). Affine (LPS, then flipped to RAS):
columns = row cosine * PixelSpacing[1], column cosine * PixelSpacing[0], normal * slice spacing,
origin = ImagePositionPatient of slice 0.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DicomError, SeriesSelectionError
from medseg.volume import LPS_TO_RAS, Volume, VolumeMeta

log = logging.getLogger(__name__)

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
POSITION_TOL_MM = 0.02
"""A slice may sit this far from the regular grid (sideways or along the normal) and still count as
on it: real headers carry ~1e-5 mm of rounding noise; gaps and tilts are millimetres."""
ORIENTATION_TOL = 1e-4
# Tags that tell the volumes of a 4D acquisition apart (only their names are ever reported).
FOURD_TAGS = (
    "AcquisitionNumber",
    "TemporalPositionIdentifier",
    "TriggerTime",
    "EchoTime",
    "EchoNumbers",
    "DiffusionBValue",
    "InversionTime",
    "ImageType",
)


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
    """A loaded series: its volume and the source headers (pydicom Datasets without pixel data).

    datasets: one per source file, in the order of the volume's k axis (for an enhanced
    multi-frame object, the one dataset). After `resample_irregular` the k axis no longer maps
    one-to-one to files; datasets then stay in sorted slice order.
    """

    volume: Volume
    datasets: list[Any]


@dataclass
class _Series:
    uid: str
    files: list[tuple[Path, Any]]  # (path, header without pixel data)
    # scan counts, kept on the first series for logging: unreadable files, non-image objects, all files
    skipped: int = 0
    non_image: int = 0
    num_files: int = 0

    @property
    def first(self) -> Any:
        return self.files[0][1]

    @property
    def num_frames(self) -> int:
        return sum(_num_frames(ds) for _, ds in self.files)

    def summary(self, index: int) -> SeriesSummary:
        ds = self.first
        return SeriesSummary(
            index=index,
            uid=self.uid,
            modality=_str_or_none(ds.get("Modality")),
            description=_str_or_none(ds.get("SeriesDescription")),
            num_slices=self.num_frames,
        )


@dataclass
class _Frame:
    """One 2D slice: a single-frame file, or one frame of a multi-frame object."""

    path: Path
    header: Any
    frame: int | None  # index within a multi-frame object
    position: np.ndarray  # (3,) LPS mm, centre of the first pixel
    orientation: np.ndarray  # (6,) row cosine, column cosine
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    slope: float
    intercept: float


# --- public API ----------------------------------------------------------------------------------


def list_series(path: str | os.PathLike) -> list[SeriesSummary]:
    """The image series under `path` (folder, searched recursively, or one file), in index order."""
    path = Path(path)
    groups = _image_series(path, *_scan(path))
    _log_skipped(groups)
    return [g.summary(i) for i, g in enumerate(groups)]


def read_dicom(path: str | os.PathLike, series: str | None = None, resample_irregular: bool = False) -> Volume:
    """Read one DICOM image series as a `Volume` (X, Y, Z), RAS mm. See `load_dicom_series`."""
    return load_dicom_series(path, series=series, resample_irregular=resample_irregular).volume


def load_dicom_series(
    path: str | os.PathLike, series: str | None = None, resample_irregular: bool = False
) -> "DicomSeries":
    """Load one image series from a folder (searched recursively) or a single file.

    series: SeriesInstanceUID or index (as listed by `list_series`); needed only when the folder
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
    Raises DicomError (one line) for empty/non-DICOM folders, several series without a choice
    (SeriesSelectionError), 4D acquisitions, unreadable pixel data, and refused irregular geometry.
    """
    path = Path(path)
    groups = _image_series(path, *_scan(path))
    chosen = _choose(groups, series, path)
    _log_skipped(groups)
    frames = _dedupe([fr for p, ds in chosen.files for fr in _frames(p, ds)])
    frames, positions, d, normal = _sorted_frames(frames, path)
    problems = _irregularities(positions, d, normal)  # before decoding: refuse fast
    if problems and not resample_irregular:
        raise DicomError(f"{path}: {' and '.join(problems)}; rerun with --resample-irregular to resample onto a regular grid")
    pixels = _read_pixels(frames)  # (K, rows, cols)

    row, col = frames[0].orientation[:3], frames[0].orientation[3:]
    row_spacing, col_spacing = frames[0].pixel_spacing
    if problems:
        log.warning("resampling onto a regular grid: %s", "; ".join(problems))
        pixels, slice_spacing = _resample(pixels, positions, d, normal, row, col, row_spacing, col_spacing)
    else:
        slice_spacing = _slice_spacing(d, frames[0].header)

    affine_lps = _affine_lps(frames[0], positions[0], normal, slice_spacing)
    first = frames[0].header
    meta = VolumeMeta(
        modality=_str_or_none(first.get("Modality")),
        series_uid=chosen.uid or None,
        series_description=_str_or_none(first.get("SeriesDescription")),
    )
    # (K, rows, cols) -> (cols, rows, K) = (i, j, k): a Fortran-ordered view, no copy.
    volume = Volume(pixels.transpose(2, 1, 0), LPS_TO_RAS @ affine_lps, meta)
    datasets = list({id(fr.header): fr.header for fr in frames}.values())
    return DicomSeries(volume=volume, datasets=datasets)


@dataclass
class SourceGrid:
    """The voxel grid of a series, recomputed from its headers alone (see `source_grid`).

    shape: (columns, rows, slices); affine: (4, 4) voxel index -> RAS mm, as `load_dicom_series`
    gives; datasets: the headers in k order (single-frame series) or the one multi-frame header;
    frames: for a multi-frame object, the 0-based frame index of each k, else None.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    datasets: list[Any]
    frames: list[int] | None

    @property
    def multiframe(self) -> bool:
        return self.frames is not None

    def as_volume(self) -> Volume:
        """A `Volume` on this grid holding no data (a zero-stride view), for geometry comparisons."""
        return Volume(np.broadcast_to(np.zeros((), np.uint8), self.shape), self.affine)


def source_grid(datasets: list[Any], what: str = "the source series") -> SourceGrid:
    """The grid of a loaded series' headers (pixel data not needed), by the same geometry rules as
    `load_dicom_series`: slices sorted along the normal, never by file order or frame number.

    Raises GeometryError when the slices do not form a regular grid (tilt, gaps, uneven spacing):
    a mask resampled onto a regular grid cannot reference such a series slice by slice.
    """
    from medseg.errors import GeometryError

    if not datasets:
        raise GeometryError(f"{what}: no source DICOM headers given; load the series with load_dicom_series")
    frames = []
    for ds in datasets:
        path = Path(str(getattr(ds, "filename", None) or "source series"))
        frames += _frames(path, ds)
    frames, positions, d, normal = _sorted_frames(_dedupe(frames), Path(what))
    problems = _irregularities(positions, d, normal)
    if problems:
        raise GeometryError(
            f"{what}: its slices do not form a regular grid ({' and '.join(problems)}); "
            "a DICOM SEG/RTSTRUCT must lie on the source slices; write NIfTI instead"
        )
    affine = LPS_TO_RAS @ _affine_lps(frames[0], positions[0], normal, _slice_spacing(d, frames[0].header))
    shape = (int(frames[0].header.Columns), int(frames[0].header.Rows), len(frames))
    multiframe = frames[0].frame is not None
    ordered = [frames[0].header] if multiframe else [fr.header for fr in frames]
    return SourceGrid(shape, affine, ordered, [fr.frame for fr in frames] if multiframe else None)


def _affine_lps(first: "_Frame", position: np.ndarray, normal: np.ndarray, slice_spacing: float) -> np.ndarray:
    """Voxel (i, j, k) -> LPS mm: columns along the row cosine, rows along the column cosine."""
    row, col = first.orientation[:3], first.orientation[3:]
    row_spacing, col_spacing = first.pixel_spacing
    affine = np.eye(4)
    affine[:3, 0] = row * col_spacing
    affine[:3, 1] = col * row_spacing
    affine[:3, 2] = normal * slice_spacing
    affine[:3, 3] = position
    return affine


# --- scanning and grouping -----------------------------------------------------------------------


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


# --- frames and geometry -------------------------------------------------------------------------


def _frames(path: Path, ds: Any) -> list[_Frame]:
    """The 2D slices of one file, with their geometry and rescale."""
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DicomError(f"{path}: colour image (SamplesPerPixel {ds.SamplesPerPixel}); expected greyscale slices")
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _enhanced_frames(path, ds)
    if _num_frames(ds) > 1:
        raise DicomError(
            f"{path}: multi-frame object without per-frame functional groups ({_num_frames(ds)} frames, "
            "no per-slice positions); expected single-frame slices or an enhanced multi-frame object"
        )
    missing = [t for t in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if t not in ds]
    if missing:
        raise DicomError(f"{path}: no {', '.join(missing)}; cannot place this slice in patient space")
    return [
        _Frame(
            path=path,
            header=ds,
            frame=None,
            position=_floats(ds.ImagePositionPatient, 3, path, "ImagePositionPatient"),
            orientation=_floats(ds.ImageOrientationPatient, 6, path, "ImageOrientationPatient"),
            pixel_spacing=tuple(_floats(ds.PixelSpacing, 2, path, "PixelSpacing")),  # type: ignore[arg-type]
            slope=float(ds.get("RescaleSlope", 1) or 1),
            intercept=float(ds.get("RescaleIntercept", 0) or 0),
        )
    ]


def _enhanced_frames(path: Path, ds: Any) -> list[_Frame]:
    """Frames of an enhanced multi-frame object: geometry from per-frame or shared functional groups."""
    shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
    frames = []
    for index, per_frame in enumerate(ds.PerFrameFunctionalGroupsSequence):

        def item(name: str, groups=(per_frame, shared)):
            for group in groups:
                if group is not None and group.get(name):
                    return group.get(name)[0]
            return None

        position, orientation, measures = item("PlanePositionSequence"), item("PlaneOrientationSequence"), item("PixelMeasuresSequence")
        if position is None or orientation is None or measures is None or "PixelSpacing" not in measures:
            raise DicomError(
                f"{path}: frame {index + 1} has no PlanePosition/PlaneOrientation/PixelMeasures functional group; "
                "cannot place it in patient space"
            )
        transform = item("PixelValueTransformationSequence")
        frames.append(
            _Frame(
                path=path,
                header=ds,
                frame=index,
                position=_floats(position.ImagePositionPatient, 3, path, "ImagePositionPatient"),
                orientation=_floats(orientation.ImageOrientationPatient, 6, path, "ImageOrientationPatient"),
                pixel_spacing=tuple(_floats(measures.PixelSpacing, 2, path, "PixelSpacing")),  # type: ignore[arg-type]
                slope=float(transform.get("RescaleSlope", 1) or 1) if transform is not None else 1.0,
                intercept=float(transform.get("RescaleIntercept", 0) or 0) if transform is not None else 0.0,
            )
        )
    return frames


def _dedupe(frames: list[_Frame]) -> list[_Frame]:
    """Drop second copies of the same instance (same SOPInstanceUID and frame), e.g. a folder copied twice."""
    seen, kept = set(), []
    for fr in frames:
        key = (str(fr.header.get("SOPInstanceUID", "")) or str(fr.path), fr.frame)
        if key in seen:
            continue
        seen.add(key)
        kept.append(fr)
    if len(kept) < len(frames):
        log.warning("ignored %d duplicate copies of the same DICOM instances", len(frames) - len(kept))
    return kept


def _sorted_frames(frames: list[_Frame], path: Path):
    """Frames sorted along the slice normal; also positions (K, 3) LPS, offsets d (K,), unit normal (3,)."""
    first = frames[0]
    for fr in frames[1:]:
        if not np.allclose(fr.orientation, first.orientation, atol=ORIENTATION_TOL):
            raise DicomError(
                f"{path}: slice orientation changes within the series ({fr.path.name}); "
                "expected parallel slices (a localizer mixed in? split the series)"
            )
        if not np.allclose(fr.pixel_spacing, first.pixel_spacing, atol=1e-4):
            raise DicomError(f"{path}: PixelSpacing changes within the series ({fr.path.name}); expected one in-plane grid")
        if (fr.header.Rows, fr.header.Columns) != (first.header.Rows, first.header.Columns):
            raise DicomError(f"{path}: image size changes within the series ({fr.path.name}); expected one in-plane grid")
    row, col = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    positions = np.array([fr.position for fr in frames])
    d = positions @ normal
    order = np.argsort(d, kind="stable")
    frames = [frames[i] for i in order]
    positions, d = positions[order], d[order]
    _refuse_4d(frames, d, path)
    return frames, positions, d, normal


def _refuse_4d(frames: list[_Frame], d: np.ndarray, path: Path) -> None:
    same = np.diff(d) < POSITION_TOL_MM
    if not same.any():
        return
    num_positions = int((~same).sum()) + 1
    k = int(np.argmax(same))
    a, b = frames[k].header, frames[k + 1].header
    varying = [t for t in FOURD_TAGS if str(a.get(t, "")) != str(b.get(t, ""))]
    by = f"differing in {', '.join(varying)}" if varying else "with no tag telling them apart"
    raise DicomError(
        f"{path}: 4D acquisition: {len(frames)} images at only {num_positions} slice positions ({by}); "
        "medseg reads one 3D volume per series; split the series into one folder per volume"
    )


def _irregularities(positions: np.ndarray, d: np.ndarray, normal: np.ndarray) -> list[str]:
    """Why these slices do not form a regular grid along `normal` (empty when they do)."""
    if len(d) < 2:
        return []
    problems = []
    lateral = (positions - positions[0]) - np.outer(d - d[0], normal)
    shift = np.linalg.norm(lateral, axis=1)
    if shift.max() > POSITION_TOL_MM:
        k = int(np.argmax(shift))
        angle = np.degrees(np.arctan2(shift[k], d[k] - d[0]))
        problems.append(
            f"gantry tilt of {angle:.2f} degrees (each slice is shifted sideways by up to {shift.max():.3g} mm "
            "relative to the slice normal)"
        )
    steps = np.diff(d)
    regular = d[0] + np.arange(len(d)) * (d[-1] - d[0]) / (len(d) - 1)
    if np.abs(d - regular).max() > POSITION_TOL_MM:
        base, gaps = _regular_step(steps)
        if gaps:
            k = int(np.argmax(steps))
            problems.append(
                f"{gaps} missing slice(s): a gap of {steps[k]:.4g} mm after sorted slice {k} "
                f"where the other slices are {base:.4g} mm apart"
            )
        else:
            problems.append(f"non-uniform slice spacing: steps from {steps.min():.4g} to {steps.max():.4g} mm")
    return problems


def _regular_step(steps: np.ndarray) -> tuple[float, int]:
    """The step of the regular grid the slices were meant to lie on, and how many slices are missing.

    When every step is a whole multiple of the smallest, the smallest is the grid step and the
    multiples are gaps left by missing slices; otherwise the median step, with none missing.
    """
    smallest = float(steps.min())
    multiples = np.round(steps / smallest)
    if np.all(np.abs(steps - multiples * smallest) <= POSITION_TOL_MM):
        return smallest, int((multiples - 1).sum())
    return float(np.median(steps)), 0


def _slice_spacing(d: np.ndarray, header: Any) -> float:
    if len(d) > 1:
        return float((d[-1] - d[0]) / (len(d) - 1))
    for tag in ("SpacingBetweenSlices", "SliceThickness"):
        value = header.get(tag)
        if value not in (None, "") and float(value) > 0:
            return float(value)
    return 1.0


def _resample(pixels, positions, d, normal, row, col, row_spacing, col_spacing) -> tuple[np.ndarray, float]:
    """Regular grid from irregular slices (see `load_dicom_series`). Returns (K', rows, cols) float32 and the step."""
    from scipy import ndimage

    out = pixels.astype(np.float32)
    lateral = (positions - positions[0]) - np.outer(d - d[0], normal)
    if np.linalg.norm(lateral, axis=1).max() > POSITION_TOL_MM:
        fill = float(out.min())
        for k in range(len(out)):
            # output pixel (j, i) of slice k sees the source at (j - dj, i - di)
            dj, di = lateral[k] @ col / row_spacing, lateral[k] @ row / col_spacing
            out[k] = ndimage.shift(out[k], (dj, di), order=1, mode="constant", cval=fill)
    step, _ = _regular_step(np.diff(d))
    count = int(round((d[-1] - d[0]) / step)) + 1
    spacing = float((d[-1] - d[0]) / (count - 1))
    targets = d[0] + np.arange(count) * spacing
    if len(d) == count and np.allclose(targets, d, atol=POSITION_TOL_MM):
        return out, spacing
    lower = np.clip(np.searchsorted(d, targets, side="right") - 1, 0, len(d) - 2)
    weight = ((targets - d[lower]) / (d[lower + 1] - d[lower])).astype(np.float32)[:, None, None]
    return (1 - weight) * out[lower] + weight * out[lower + 1], spacing


# --- pixel data ----------------------------------------------------------------------------------


def _read_pixels(frames: list[_Frame]) -> np.ndarray:
    """Decoded, rescaled slices (K, rows, cols): the raw dtype when no rescale changes values, a fitting
    integer dtype when slope and intercept are integers, else float32."""
    from pydicom.pixels import pixel_array

    decoded: dict[Path, np.ndarray] = {}
    slices = []
    for fr in frames:
        if fr.path not in decoded:
            try:
                # parses only the pixel-module elements: 2.5x faster than dcmread(...).pixel_array
                decoded[fr.path] = pixel_array(fr.path)
            except Exception as exc:
                syntax = getattr(getattr(fr.header, "file_meta", None), "TransferSyntaxUID", None)
                name = getattr(syntax, "name", syntax) or "unknown transfer syntax"
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise DicomError(
                    f"{fr.path}: cannot decode its pixel data ({name}): {reason}; the file may be cut short or corrupt"
                ) from exc
        array = decoded[fr.path]
        # a one-frame enhanced object decodes to (rows, cols), not (1, rows, cols)
        slices.append(array if fr.frame is None or array.ndim == 2 else array[fr.frame])
    pixels = np.stack(slices)
    slopes = np.array([fr.slope for fr in frames])
    intercepts = np.array([fr.intercept for fr in frames])
    if np.all(slopes == 1) and np.all(intercepts == 0):
        return pixels
    if np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts)):
        values = pixels.astype(np.int64) * slopes.astype(np.int64)[:, None, None] + intercepts.astype(np.int64)[:, None, None]
        lo, hi = int(values.min()), int(values.max())
        for dtype in (pixels.dtype, np.int16, np.uint16, np.int32, np.int64):
            if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
                return values.astype(dtype)
    return (pixels.astype(np.float32) * slopes.astype(np.float32)[:, None, None] + intercepts.astype(np.float32)[:, None, None])


# --- small helpers -------------------------------------------------------------------------------


def _num_frames(ds: Any) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


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


def _floats(values: Any, count: int, path: Path, tag: str) -> np.ndarray:
    try:
        out = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.array([])
    if out.shape != (count,) or not np.all(np.isfinite(out)):
        raise DicomError(f"{path}: {tag} is not {count} numbers; cannot place this slice in patient space")
    return out


def _str_or_none(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None
