"""`medseg info INPUT [--json]`: geometry and intensity summary of a scan, or a DICOM folder's series."""

from __future__ import annotations

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
    from medseg.commands import info_command

    info_command(input, series=series, json=as_json, echo=typer.echo)
