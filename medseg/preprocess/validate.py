"""Checks run on every case before any heavy work; all problems are gathered into one table.

`inspect_case` reads a case once, checks it (files exist and read, image not empty / constant /
NaN / inf, channels and label on the same grid, label values declared, image and label not
swapped) and, when it passes, returns its fingerprint entry and the sha256 of its inputs.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.data.manifest import ManifestCase, sha256_of
from medseg.errors import InputError, MedsegError
from medseg.preprocess.plan import IGNORE_LABEL, MAX_CLASSES, MAX_LABEL_VALUE, present_values

FOREGROUND_SAMPLES = 10000  # intensity samples kept per case and channel
FEW_VALUES = 16
"""An image with at most this many distinct integer values looks like a label map: with a label
holding more distinct values than it, the two are taken as swapped."""


@dataclass
class Problem:
    case: str
    file: str
    problem: str
    fix: str


@dataclass
class CaseReport:
    case_id: str
    problems: list[Problem] = field(default_factory=list)
    fingerprint: dict | None = None
    samples: list[np.ndarray] | None = None  # per channel, foreground intensities (<= FOREGROUND_SAMPLES)
    sha256: dict[str, str] = field(default_factory=dict)


class ValidationFailed(InputError):
    """Some cases failed validation; `problems` holds the full table."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        cases = len({p.case for p in problems})
        if len(problems) == 1:  # one problem is one line, no table
            p = problems[0]
            super().__init__(f"{p.file}: case {p.case}: {p.problem}; {p.fix} (or rerun with --skip-invalid to leave the case out)")
            return
        super().__init__(
            f"{len(problems)} problem(s) in {cases} case(s) (table above); fix them or rerun with --skip-invalid to leave those cases out"
        )


def format_problems(problems: list[Problem]) -> str:
    """Plain-text table with columns case, file, problem, how to fix."""
    rows = [("case", "file", "problem", "how to fix")] + [(p.case, p.file, p.problem, p.fix) for p in problems]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _read(path: str, case: str, problems: list[Problem], resample_irregular: bool = False):
    from medseg.io import is_readable_image_path, read_volume

    try:  # resample_irregular is a dataset-wide setting: it applies to the DICOM series among the inputs
        return read_volume(path, resample_irregular=resample_irregular and not is_readable_image_path(Path(path)))
    except MedsegError as exc:
        missing = "no such file" in str(exc)
        problems.append(
            Problem(case, path, "file is missing" if missing else f"unreadable: {exc}".replace(path + ": ", ""),
                    "fix the path in the manifest" if missing else "replace the file with a complete, valid copy")
        )
    except Exception as exc:  # a broken file can make any reader fail in its own way
        problems.append(Problem(case, path, f"unreadable ({type(exc).__name__})", "replace the file with a complete, valid copy"))
    return None


def _swapped(image, label_values: list) -> str | None:
    """Why the image and label look swapped (the image holds a handful of integers, the label more
    distinct values than it, or non-integer ones), else None."""
    array = image.array
    sample = array.ravel()[:: max(1, array.size // 2_000_000)]  # a strided sample is enough to count values
    found = np.unique(sample)
    if len(found) > FEW_VALUES or not np.all(np.mod(found, 1) == 0):
        return None
    label_odd = any(not np.isfinite(v) or int(v) != v for v in label_values)
    if len(label_values) <= len(found) and not label_odd:
        return None
    return (f"image and label look swapped: the image holds only {len(found)} integer values "
            f"({', '.join(str(int(v)) for v in found[:6])}{', ...' if len(found) > 6 else ''}), the label {len(label_values)} "
            f"{'non-integer ' if label_odd else ''}values")


def inspect_case(case: ManifestCase, labels: dict[int, str] | None, channels: int | None = None,
                 resample_irregular: bool = False) -> CaseReport:
    """Validate one case and, if it is valid, compute its fingerprint entry (RAS axis order).

    channels: the channels per case the dataset declares; a 4D file that does not add up to them is refused.
    resample_irregular: read tilted or gapped DICOM series onto a regular grid instead of refusing them.
    """
    from medseg.preprocess.case import nonzero_box, stack_channels

    report = CaseReport(case.case_id)
    problems = report.problems
    cid = case.case_id
    volumes = [_read(p, cid, problems, resample_irregular) for p in case.images]
    label = _read(case.label, cid, problems) if case.label else None
    found = sum(v.num_channels for v in volumes if v is not None)
    if channels is not None and all(v is not None for v in volumes) and found != channels:
        for path, vol in zip(case.images, volumes):
            if vol.array.ndim == 4:
                shape = (*vol.spatial_shape, vol.num_channels)
                problems.append(Problem(
                    cid, path, f"image is 4D, shape {shape}, but {channels} channel(s) per case are declared; expected a 3D image",
                    "give each channel as its own 3D file (CASE_0000, CASE_0001, ...), or take one 3D volume out of the 4D series"))
        if problems:
            return report
    for path, vol in zip(case.images, volumes):
        if vol is None:
            continue
        a = vol.array
        if a.size == 0:
            problems.append(Problem(cid, path, "image is empty (0 voxels)", "replace the image"))
            continue
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            problems.append(Problem(cid, path, "image holds NaN or inf values", "repair the image (e.g. replace NaN with 0)"))
        elif a.min() == a.max():
            problems.append(Problem(cid, path, f"image is constant ({a.flat[0]})", "replace the image; it holds no information"))
        if vol is not volumes[0] and volumes[0] is not None:
            diff = volumes[0].geometry_differences(vol)
            if diff:
                problems.append(Problem(cid, path, "channel grid differs from channel 0: " + "; ".join(diff), "resample all channels onto one grid"))
    if label is not None:
        if volumes[0] is not None:
            # same physical grid in another voxel order (axis flips/permutations) is fine
            diff = volumes[0].reoriented("RAS").geometry_differences(label.reoriented("RAS"))
            if diff:
                problems.append(Problem(cid, case.label, "label grid differs from image: " + "; ".join(diff), "resample the label onto its image's grid"))
        values = present_values(label.array).tolist()
        odd = [v for v in values if not np.isfinite(v) or int(v) != v or not 0 <= v <= MAX_LABEL_VALUE]
        swapped = _swapped(volumes[0], values) if volumes[0] is not None else None
        if swapped:
            problems.append(Problem(cid, case.label, swapped, "swap the image and label columns of the manifest (or fix the file names)"))
        elif odd:
            problems.append(
                Problem(cid, case.label, f"label values {odd[:5]} are not integers in 0..{MAX_LABEL_VALUE}",
                        "relabel the mask with non-negative integer values")
            )
        elif len(values) > MAX_CLASSES:
            problems.append(
                Problem(cid, case.label, f"label has {len(values)} distinct values; a label map holds a few (at most {MAX_CLASSES})",
                        "give the mask as the label (is it the image?)")
            )
        elif labels:
            extra = [int(v) for v in values if int(v) not in labels and int(v) != IGNORE_LABEL]
            if extra:
                problems.append(
                    Problem(cid, case.label, f"label values {extra[:10]} not among the declared labels {sorted(labels)}",
                            "relabel the mask or declare the labels in the manifest")
                )
    if problems or any(v is None for v in volumes):
        return report

    for p in case.images + ([case.label] if case.label else []):
        report.sha256[p] = sha256_of(p)
    image = stack_channels(volumes).reoriented("RAS")
    box = nonzero_box(image.array)
    cropped_shape = [b - a for a, b in box]
    if label is not None:
        lab = label.reoriented("RAS").array
        fg = lab > 0
        voxels = {str(int(v)): int(n) for v, n in zip(*np.unique(lab, return_counts=True))}
    else:
        fg = np.any(image.array != 0, axis=0)
        voxels = {}
    rng = np.random.default_rng(zlib.crc32(cid.encode()))
    intensity, samples = [], []
    for ch in image.array:
        values = ch[fg] if fg.any() else ch.ravel()
        values = values.astype(np.float64)
        kept = values if len(values) <= FOREGROUND_SAMPLES else rng.choice(values, FOREGROUND_SAMPLES, replace=False)
        samples.append(kept.astype(np.float32))
        intensity.append(
            {
                "mean": float(values.mean()),
                "std": float(values.std()),
                "percentile_00_5": float(np.percentile(values, 0.5)),
                "percentile_99_5": float(np.percentile(values, 99.5)),
            }
        )
    report.samples = samples
    report.fingerprint = {
        "case_id": cid,
        "spacing": [float(s) for s in image.spacing],
        "shape": list(image.spatial_shape),
        "shape_after_crop": cropped_shape,
        "intensity": intensity,
        "voxels_per_class": voxels,
    }
    return report
