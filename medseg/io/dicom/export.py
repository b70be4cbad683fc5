"""Any label map on a DICOM series' grid -> DICOM SEG or RTSTRUCT referencing that series
(`medseg convert MASK OUT --to dicom-seg|rtstruct --reference DICOM_DIR`, `medseg.mask_to_dicom`).

No inference: a NIfTI mask written earlier (by `medseg infer`, another tool or a person) becomes
the DICOM object a PACS or planning system takes. The mask must lie on the series' grid: the grid
`load_dicom_series` gives (for a tilted or gapped series, the resampled one; it is then put back
on the acquisition's own slices) or the acquisition grid itself; anything else is refused in one
line, never resampled silently. A mask holding the very same voxels in another axis order (a flip
or permutation, e.g. written in LAS for an LPS series) is reoriented, which is exact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import ConfigError, GeometryError, InputError
from medseg.volume import Volume

FORMATS = ("dicom-seg", "rtstruct")


def parse_label_names(text: str | None) -> dict[int, str] | None:
    """'1=liver,2=spleen' -> {1: 'liver', 2: 'spleen'}; None or '' -> None."""
    if not text:
        return None
    names: dict[int, str] = {}
    for item in text.split(","):
        value, sep, name = item.partition("=")
        if not sep or not value.strip().isdigit() or not name.strip() or int(value) == 0:
            raise ConfigError(f"--labels '{text}': expected VALUE=NAME pairs with values >= 1, e.g. '1=liver,2=spleen'")
        names[int(value)] = name.strip()
    return names


def mask_to_dicom(
    mask: str | os.PathLike | Volume,
    reference: str | os.PathLike | Any,
    path: str | os.PathLike | None = None,
    *,
    format: str = "dicom-seg",
    label_names: dict[int, str] | None = None,
    label_codes: dict[int, Any] | None = None,
    series: str | None = None,
    model_name: str = "medseg",
) -> Path | Any:
    """Write (or with path None, return as a pydicom Dataset) a DICOM SEG or RTSTRUCT of `mask`.

    mask: a label map (X, Y, Z) file (NIfTI/NRRD/MHA) or Volume, on the reference series' grid.
    reference: the DICOM series it was drawn on (folder, file or Datasets); series: which one when
        the folder holds several. label_names: {value: name} for every non-zero value of the mask
        (default 'label <value>'); label_codes: {value: LabelCode or its dict} (default: the
        built-in table by name, else a generic code). Raises GeometryError (one line) for a mask
        that is not on the series' grid.
    """
    from medseg.io import read_volume
    from medseg.io.dicom.geometry import source_grid
    from medseg.io.dicom.reslice import to_source_slices
    from medseg.io.dicom.series import load_dicom_series

    if format not in FORMATS:
        raise ConfigError(f"--to {format!r} is unknown; use dicom-seg or rtstruct")
    name = str(mask) if not isinstance(mask, Volume) else "the mask"
    volume = mask if isinstance(mask, Volume) else read_volume(mask)
    labels = _label_map(volume, name)
    src = load_dicom_series(reference, series=series, resample_irregular=True)
    grid = source_grid(src.datasets)
    if labels.geometry_differences(src.volume) and labels.geometry_differences(grid.as_volume()):
        turned = labels.reoriented(src.volume.orientation)  # the same voxels in another axis order (e.g. LAS vs LPS): exact
        if not turned.geometry_differences(src.volume):
            labels = turned
    on_loaded = not labels.geometry_differences(src.volume, atol_mm=1e-3, atol_dir=1e-4)
    problems = labels.geometry_differences(grid.as_volume(), atol_mm=1e-3, atol_dir=1e-4)
    if not on_loaded and problems:
        raise GeometryError(
            f"{name}: not on the grid of the reference series {_where(reference)} ({'; '.join(problems)}); expected shape "
            f"{tuple(src.volume.spatial_shape)} with that series' spacing, origin and direction: resample the mask onto it first"
        )
    if on_loaded and not grid.regular:
        labels = to_source_slices(labels, src.datasets)  # tilted/gapped: back onto the acquisition's own slices
    present = sorted(int(v) for v in np.unique(labels.array) if v != 0)
    if label_names is None:
        label_names = {v: f"label {v}" for v in present}
    unnamed = [v for v in present if v not in label_names]
    if unnamed:
        raise ConfigError(f"{name}: holds label value(s) {unnamed} that --labels does not name; name every value, e.g. "
                          f"--labels {','.join(f'{v}=name{v}' for v in present)}")
    label_names = {0: "background", **{int(k): str(v) for k, v in label_names.items()}}
    from medseg.io import dicom

    build, save = (dicom.build_dicom_seg, dicom.write_dicom_seg) if format == "dicom-seg" else (dicom.build_rtstruct, dicom.write_rtstruct)
    if path is None:
        return build(labels, src.datasets, label_names, label_codes, model_name=model_name)
    return save(labels, src.datasets, path, label_names, label_codes, model_name=model_name)


def _label_map(volume: Volume, name: str) -> Volume:
    """The volume as an integer label map (X, Y, Z), or InputError in one line."""
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise InputError(f"{name}: a label map (X, Y, Z) was expected, got an array of shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != bool:
        rounded = np.rint(array)
        if not np.array_equal(rounded, array) or array.min(initial=0) < 0:
            raise InputError(f"{name}: holds non-integer or negative values; expected integer labels 0, 1, 2, ... (not probabilities)")
        array = rounded
    if array.max(initial=0) > 65535 or array.min(initial=0) < 0:
        raise InputError(f"{name}: label values outside 0..65535; expected integer labels 0, 1, 2, ...")
    return volume.with_array(array.astype(np.uint16 if array.max(initial=0) > 255 else np.uint8))


def _where(reference: Any) -> str:
    return str(reference) if isinstance(reference, (str, os.PathLike)) else "(in-memory Datasets)"
