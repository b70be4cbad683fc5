"""What `Predictor.segment` takes and gives: a `Scan` (one case's channels, with its DICOM headers
when read from DICOM) in, a `Segmentation` (labels on the scan's own grid, names, codes, the source
headers) out, so a segmentation can become a SEG or RTSTRUCT without reading the scan again.

No torch import here: `medseg.read_scan` and these dataclasses stay cheap to import.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.volume import Volume


@dataclass
class Scan:
    """One case to segment.

    volumes: one Volume per channel (or one (C, X, Y, Z) Volume), all on one grid (RAS mm).
    datasets: the source DICOM headers of the first DICOM channel (k order), else None.
    sources: where each volume came from (a path, or "Datasets"/"volume k"), for error messages.
    """

    volumes: list[Volume]
    datasets: list[Any] | None = None
    sources: list[str] = field(default_factory=list)


@dataclass
class Segmentation:
    """A predicted segmentation on the scan's original grid.

    labels: (X, Y, Z) label values (uint8, uint16 when a value is >= 256; instance ids with the
        `instances` step), same shape, spacing, origin and direction as the input.
    probabilities: (K, X, Y, Z) float32 on the same grid (channel k = the k-th label value) or None.
    label_names: {label value: name} (0 = background); label_codes: {value: LabelCode dict} (SNOMED CT).
    datasets: the source DICOM headers when the input was DICOM (what SEG/RTSTRUCT reference), else None.
    model_name: the model family (written as the SEG's algorithm name); timings: seconds per stage.
    things: the countable label values (the plan's; None: every foreground label), for the
        "instances" and "panoptic" formats of `medseg.write`; instance_ids, instance_classes: the
        objects of a border/core model (its border labels already merged into `labels`).
    """

    labels: Volume
    probabilities: Volume | None = None
    label_names: dict[int, str] = field(default_factory=dict)
    label_codes: dict[int, dict] = field(default_factory=dict)
    datasets: list[Any] | None = None
    model_name: str = "medseg"
    timings: dict[str, float] = field(default_factory=dict)
    things: list[int] | None = None
    instance_ids: Volume | None = None  # objects found by a border/core model (else connected components)
    instance_classes: dict[int, int] = field(default_factory=dict)  # {instance id: label value}


def _is_dataset(value: Any) -> bool:
    # a pydicom Dataset exists only once pydicom is imported: a NIfTI run need not pay its import (0.5 s)
    pydicom = sys.modules.get("pydicom")
    return pydicom is not None and isinstance(value, pydicom.Dataset)


def read_scan(inputs: Any, series: str | None = None, *, resample_irregular: bool = False, volume: int | None = None) -> Scan:
    """Any input `segment` accepts -> a `Scan`.

    inputs: a Scan; a Volume; a path (scan file or DICOM folder); a list of paths or of Volumes
        (one per channel, in the model's channel order); one pydicom Dataset (multi-frame) or a list
        of one series' Datasets (with pixel data: nothing is read from disk).
    series: DICOM only, the SeriesInstanceUID or index when a folder holds several series.
    resample_irregular: DICOM only, read a gantry-tilted or gapped series onto a regular grid
        (SEG/RTSTRUCT written from it go back onto the source slices); volume: DICOM only, the
        3D volume (0-based) of a 4D series. See `medseg.io.dicom.load_dicom_series`.
    NaN or Inf voxels are refused, naming the channel's source.
    """
    if isinstance(inputs, Scan):
        return inputs
    if isinstance(inputs, Volume):
        scan = Scan([inputs], None, ["volume 0"])
    elif isinstance(inputs, (str, os.PathLike)):
        scan = _from_paths([Path(inputs)], series, resample_irregular, volume)
    elif _is_dataset(inputs):
        scan = _from_datasets([inputs], series, resample_irregular, volume)
    elif isinstance(inputs, (list, tuple)) and inputs:
        if all(isinstance(v, Volume) for v in inputs):
            scan = Scan(list(inputs), None, [f"volume {i}" for i in range(len(inputs))])
        elif all(isinstance(v, (str, os.PathLike)) for v in inputs):
            scan = _from_paths([Path(p) for p in inputs], series, resample_irregular, volume)
        elif all(_is_dataset(v) for v in inputs):
            scan = _from_datasets(list(inputs), series, resample_irregular, volume)
        else:
            kinds = sorted({type(v).__name__ for v in inputs})
            raise InputError(f"segment: the input list mixes {', '.join(kinds)}; give Volumes, paths or one series' Datasets")
    else:
        raise InputError(
            f"segment: cannot read a {type(inputs).__name__}; give a Volume, a path, a list of them (one per channel), "
            "or pydicom Datasets of one series"
        )
    for volume, source in zip(scan.volumes, scan.sources):
        check_finite(volume, source)
    return scan


def _from_paths(paths: list[Path], series: str | None, resample_irregular: bool = False, volume: int | None = None) -> Scan:
    from medseg.data.cases import is_image_file
    from medseg.io import read_volume, refuse_dicom_options

    volumes, datasets = [], None
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: no such file or folder; check the path")
        if is_image_file(path):
            refuse_dicom_options(path, series=series, resample_irregular=resample_irregular, volume=volume)
            volumes.append(read_volume(path))
        else:
            from medseg.io.dicom import load_dicom_series

            loaded = load_dicom_series(path, series=series, resample_irregular=resample_irregular, volume=volume)
            volumes.append(loaded.volume)
            datasets = datasets if datasets is not None else loaded.datasets
    return Scan(volumes, datasets, [str(p) for p in paths])


def _from_datasets(datasets: list[Any], series: str | None, resample_irregular: bool = False, volume: int | None = None) -> Scan:
    from medseg.io.dicom import load_dicom_series

    loaded = load_dicom_series(datasets, series=series, resample_irregular=resample_irregular, volume=volume)
    return Scan([loaded.volume], loaded.datasets, ["Datasets"])


def check_finite(volume: Volume, source: str) -> None:
    """Refuse NaN or Inf voxels: the network would turn them into NaN logits and an all-background mask."""
    array = volume.array
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
        raise InputError(
            f"{source}: the image holds {nan} NaN and {inf} Inf voxel(s); expected finite intensities; "
            "repair the image (e.g. replace NaN with 0) and rerun"
        )


def check_channels(scan: Scan, channel_names: list[str]) -> None:
    """Name the 4D file when the channels do not add up to the model's (the predictor's check cannot)."""
    found = sum(v.num_channels for v in scan.volumes)
    if found == len(channel_names):
        return
    for source, v in zip(scan.sources, scan.volumes):
        if v.array.ndim == 4:
            raise InputError(
                f"{source}: a 4D image of shape {(*v.spatial_shape, v.num_channels)} gives {found} channel(s), but the model "
                f"expects {len(channel_names)} ({', '.join(channel_names)}); expected a 3D image per channel; "
                "give one 3D file per channel (CASE_0000, CASE_0001, ...)"
            )
