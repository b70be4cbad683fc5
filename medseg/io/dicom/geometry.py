"""Where the slices of a DICOM series lie, and the voxel grid they form.

Frames are sorted by position along the slice normal (row cosine x column cosine), never by file
order, InstanceNumber or frame number. Gantry tilt, missing slices and uneven spacing are detected
here (`irregularities`) and either refused or resampled onto a regular grid (`resample`).
`source_grid` recomputes a loaded series' grid from its headers alone: the grid every DICOM SEG or
RTSTRUCT mask must lie on (`check_on_source_grid`).

Affine (LPS, then flipped to RAS): columns = row cosine * PixelSpacing[1], column cosine *
PixelSpacing[0], normal * slice spacing, origin = ImagePositionPatient of slice 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DicomError, GeometryError
from medseg.io.dicom.pixels import Frame, frames_of
from medseg.volume import LPS_TO_RAS, Volume

log = logging.getLogger(__name__)

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
    positions: np.ndarray | None = None
    """For an irregular series (tilt, gaps, uneven spacing): the (K, 3) LPS position of each k's
    slice; `affine` is then the acquisition grid (`acquisition_affine`), exact for the first and
    last slice only. None for a regular series."""

    @property
    def multiframe(self) -> bool:
        return self.frames is not None

    @property
    def regular(self) -> bool:
        return self.positions is None

    def as_volume(self) -> Volume:
        """A `Volume` on this grid holding no data (a zero-stride view), for geometry comparisons."""
        return Volume(np.broadcast_to(np.zeros((), np.uint8), self.shape), self.affine)


def source_grid(datasets: list[Any], what: str = "the source series") -> SourceGrid:
    """The grid of a loaded series' headers (pixel data not needed), by the same geometry rules as
    `load_dicom_series`: slices sorted along the normal, never by file order or frame number.

    Slices that do not form a regular grid (tilt, gaps, uneven spacing) give the acquisition grid
    (`acquisition_affine`, `positions` set): one k per source slice, which a mask resampled onto a
    regular grid reaches through `medseg.io.dicom.reslice.to_source_slices`. Raises GeometryError
    for an irregular enhanced multi-frame object.
    """
    if not datasets:
        raise GeometryError(f"{what}: no source DICOM headers given; load the series with load_dicom_series")
    frames = []
    for ds in datasets:
        path = Path(str(getattr(ds, "filename", None) or "source series"))
        frames += frames_of(path, ds)
    frames, positions, d, normal = sort_frames(dedupe(frames), Path(what))
    problems = irregularities(positions, d, normal)
    multiframe = frames[0].frame is not None
    if problems and multiframe:
        raise GeometryError(
            f"{what}: its frames do not form a regular grid ({' and '.join(problems)}); "
            "a DICOM SEG/RTSTRUCT must lie on the source frames; write NIfTI instead"
        )
    if problems:
        affine = LPS_TO_RAS @ acquisition_affine(frames[0], positions)
    else:
        affine = LPS_TO_RAS @ affine_lps(frames[0], positions[0], normal, slice_spacing(d, frames[0].header))
    shape = (int(frames[0].header.Columns), int(frames[0].header.Rows), len(frames))
    ordered = [frames[0].header] if multiframe else [fr.header for fr in frames]
    return SourceGrid(shape, affine, ordered, [fr.frame for fr in frames] if multiframe else None,
                      positions=positions if problems else None)


def check_on_source_grid(mask: Volume, datasets: list[Any], what: str) -> SourceGrid:
    """The source series' grid, once `mask` is known to lie on it: same shape, spacing, origin and
    direction (so a mask flipped or permuted along any axis is refused even with the same shape).

    mask: (X, Y, Z) integer labels with their affine. Raises GeometryError (one line) otherwise.
    """
    if not isinstance(mask, Volume):
        raise GeometryError(
            f"{what}: the mask must be a medseg Volume (labels with their affine), got {type(mask).__name__}; "
            "wrap it as Volume(labels, affine) so that its geometry can be checked"
        )
    if mask.array.ndim != 3:
        raise GeometryError(f"{what}: needs an (X, Y, Z) label map, got an array of shape {mask.array.shape}")
    grid = source_grid(datasets, f"{what} source series")
    problems = mask.geometry_differences(grid.as_volume(), atol_mm=1e-3, atol_dir=1e-4)
    if problems and not grid.regular:
        raise GeometryError(
            f"{what}: the mask is not on the source series' own slices ({'; '.join(problems)}); the series is irregular "
            "(tilt or gaps): bring a mask on its resampled grid back with medseg.io.dicom.to_source_slices (medseg.write does)"
        )
    if problems:
        raise GeometryError(
            f"{what}: the mask is not on the source series' voxel grid ({'; '.join(problems)}); "
            "write the mask on the grid of the series it was predicted from (same shape, voxel order and affine)"
        )
    return grid


def affine_lps(first: Frame, position: np.ndarray, normal: np.ndarray, slice_spacing: float) -> np.ndarray:
    """Voxel (i, j, k) -> LPS mm: columns along the row cosine, rows along the column cosine."""
    row, col = first.orientation[:3], first.orientation[3:]
    row_spacing, col_spacing = first.pixel_spacing
    affine = np.eye(4)
    affine[:3, 0] = row * col_spacing
    affine[:3, 1] = col * row_spacing
    affine[:3, 2] = normal * slice_spacing
    affine[:3, 3] = position
    return affine


def acquisition_affine(first: Frame, positions: np.ndarray) -> np.ndarray:
    """Voxel (i, j, k) -> LPS mm of an irregular series' own slices: in-plane as `affine_lps`, the k
    axis from the first to the last slice position (sheared for a gantry tilt; exact at every slice
    for a tilt with even steps, at the end slices only for gaps)."""
    step = (positions[-1] - positions[0]) / max(len(positions) - 1, 1)
    if np.linalg.norm(step) < 1e-6:  # one slice
        step = np.cross(first.orientation[:3], first.orientation[3:])
    affine = affine_lps(first, positions[0], np.array([1.0, 0, 0]), 1.0)
    affine[:3, 2] = step
    return affine


def dedupe(frames: list[Frame]) -> list[Frame]:
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


def sort_frames(frames: list[Frame], path: Path):
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


def select_volume(frames: list[Frame], volume: int | None, path: Path) -> list[Frame]:
    """The frames of volume `volume` (0-based) of a 4D acquisition (several images per slice
    position); a 3D series is returned as it is (only volume None or 0 accepted).

    At each position the images are ordered by the tags that tell the volumes apart (FOURD_TAGS,
    numerically where they are numbers), then InstanceNumber and frame number; volume v is the
    v-th image of every position. Raises DicomError for a 4D series without a choice, a volume out
    of range, or positions holding different numbers of images.
    """
    groups = volume_groups(frames)
    if len(groups) == 1:
        if volume not in (None, 0):
            raise DicomError(f"{path}: --volume {volume} given, but the series is one 3D volume; leave --volume out")
        return frames
    if volume is None:
        _refuse_4d_message(groups, path)
    if not 0 <= volume < len(groups):
        raise DicomError(f"{path}: --volume {volume} is out of range; this 4D series holds volumes 0 to {len(groups) - 1}")
    return groups[volume]


def volume_groups(frames: list[Frame]) -> list[list[Frame]]:
    """The volumes of a 4D acquisition (one list of frames per volume); one group for a 3D series."""
    first = frames[0]
    normal = np.cross(first.orientation[:3], first.orientation[3:])
    d = np.array([fr.position @ normal for fr in frames])
    order = np.argsort(d, kind="stable")
    positions: list[list[Frame]] = []
    last = None
    for i in order:
        if last is None or d[i] - last >= POSITION_TOL_MM:
            positions.append([])
        positions[-1].append(frames[i])
        last = d[i]
    counts = {len(p) for p in positions}
    if counts == {1}:
        return [frames]
    if len(counts) > 1:
        raise DicomError(
            f"4D acquisition with {min(counts)} to {max(counts)} images per slice position; expected the same number "
            "at every position (an incomplete acquisition?); split the series by hand"
        )
    at_each = [sorted(p, key=_volume_key) for p in positions]
    return [[p[v] for p in at_each] for v in range(len(at_each[0]))]


def _volume_key(fr: Frame) -> tuple:
    def value(tag):
        raw = fr.header.get(tag, "")
        try:
            return (0, float(raw), "")
        except (TypeError, ValueError):
            return (1, 0.0, str(raw))

    instance = fr.header.get("InstanceNumber", 0)
    return (*[value(t) for t in FOURD_TAGS], int(instance or 0), fr.frame or 0)


def _refuse_4d_message(groups: list[list[Frame]], path: Path) -> None:
    a, b = groups[0][0].header, groups[1][0].header
    num_volumes, num_positions = len(groups), len(groups[0])
    varying = [t for t in FOURD_TAGS if str(a.get(t, "")) != str(b.get(t, ""))]
    by = f"differing in {', '.join(varying)}" if varying else "with no tag telling them apart"
    raise DicomError(
        f"{path}: 4D acquisition: {num_volumes * num_positions} images at only {num_positions} slice positions ({by}), {num_volumes} volumes; "
        f"choose one with --volume N (0 to {num_volumes - 1}), or write each with medseg convert DIR OUT.nii.gz --split-volumes"
    )


def _refuse_4d(frames: list[Frame], d: np.ndarray, path: Path) -> None:
    same = np.diff(d) < POSITION_TOL_MM
    if not same.any():
        return
    num_positions = int((~same).sum()) + 1
    k = int(np.argmax(same))
    a, b = frames[k].header, frames[k + 1].header
    varying = [t for t in FOURD_TAGS if str(a.get(t, "")) != str(b.get(t, ""))]
    by = f"differing in {', '.join(varying)}" if varying else "with no tag telling them apart"
    raise DicomError(
        f"{path}: 4D acquisition: {num_volumes * num_positions} images at only {num_positions} slice positions ({by}); "
        "choose one 3D volume with --volume N, or write each with medseg convert DIR OUT.nii.gz --split-volumes"
    )


def irregularities(positions: np.ndarray, d: np.ndarray, normal: np.ndarray) -> list[str]:
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


def slice_spacing(d: np.ndarray, header: Any) -> float:
    """The regular step between the sorted slice offsets `d` (mm); for one slice, from its header."""
    if len(d) > 1:
        return float((d[-1] - d[0]) / (len(d) - 1))
    for tag in ("SpacingBetweenSlices", "SliceThickness"):
        value = header.get(tag)
        if value not in (None, "") and float(value) > 0:
            return float(value)
    return 1.0


def regular_targets(d: np.ndarray) -> tuple[np.ndarray, float]:
    """The offsets along the normal (mm) of the regular grid an irregular series is resampled onto
    (see `load_dicom_series`), and its step."""
    step, _ = _regular_step(np.diff(d))
    count = int(round((d[-1] - d[0]) / step)) + 1
    spacing = float((d[-1] - d[0]) / (count - 1))
    return d[0] + np.arange(count) * spacing, spacing


def resample(pixels, positions, d, normal, row, col, row_spacing, col_spacing) -> tuple[np.ndarray, float]:
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
    targets, spacing = regular_targets(d)
    if len(d) == len(targets) and np.allclose(targets, d, atol=POSITION_TOL_MM):
        return out, spacing
    lower = np.clip(np.searchsorted(d, targets, side="right") - 1, 0, len(d) - 2)
    weight = ((targets - d[lower]) / (d[lower + 1] - d[lower])).astype(np.float32)[:, None, None]
    return (1 - weight) * out[lower] + weight * out[lower + 1], spacing
