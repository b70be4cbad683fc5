"""`medseg info INPUT [--json]`: geometry and intensity summary of a scan, or a DICOM folder's series."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def command(
    input: Annotated[Path, typer.Argument(help="A NIfTI/NRRD/MHA file or a DICOM folder.")],
    series: Annotated[Optional[str], typer.Option(help="DICOM: SeriesInstanceUID or index of the series to describe.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Print shape, spacing, origin, direction, orientation, dtype and intensity range.

    Never prints patient-identifying tags (name, ID, dates, accession number).
    """
    from medseg.io import is_readable_image_path

    report: dict = {"path": str(input)}
    if not is_readable_image_path(input):
        from medseg.io.dicom import list_series

        summaries = list_series(input)
        report["series"] = [s.as_dict() for s in summaries]
        if series is None and len(summaries) != 1:
            _print(report, as_json)
            return
    report.update(_describe(input, series))
    _print(report, as_json)


def _describe(path: Path, series: str | None) -> dict:
    import numpy as np

    from medseg.io import read_volume

    volume = read_volume(path, series=series)
    array = volume.array
    finite = array[np.isfinite(array)] if np.issubdtype(array.dtype, np.floating) else array
    return {
        "shape": list(array.shape),
        "spacing_mm": [round(float(s), 6) for s in volume.spacing],
        "origin_mm": [round(float(o), 6) for o in volume.origin],
        "direction": [[round(float(d), 6) for d in row] for row in volume.direction],
        "orientation": volume.orientation,
        "dtype": str(array.dtype),
        "intensity_range": [float(finite.min()), float(finite.max())] if finite.size else None,
        "modality": volume.meta.modality,
        "series_uid": volume.meta.series_uid,
        "series_description": volume.meta.series_description,
    }


def _print(report: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        if key == "series":
            typer.echo(f"series ({len(value)}):")
            for s in value:
                typer.echo(
                    f"  [{s['index']}] {s['uid']}  {s['modality'] or '-'}  {s['description'] or '-'}  {s['num_slices']} slices"
                )
        elif value is not None:
            typer.echo(f"{key}: {value}")
