"""`medseg convert INPUT OUTPUT`: any readable scan to .nii.gz / .nii / .nrrd / .mha."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def command(
    input: Annotated[Path, typer.Argument(help="A NIfTI/NRRD/MHA file or a DICOM folder.")],
    output: Annotated[Path, typer.Argument(help="Output file: .nii.gz, .nii, .nrrd or .mha.")],
    series: Annotated[Optional[str], typer.Option(help="DICOM: SeriesInstanceUID or index of the series to load.")] = None,
    resample_irregular: Annotated[
        bool, typer.Option("--resample-irregular", help="DICOM: resample gantry-tilted or unevenly spaced series onto a regular grid.")
    ] = False,
    volume: Annotated[Optional[int], typer.Option("--volume", min=0, help="DICOM: the 3D volume (0-based) of a 4D series (dynamic, multi-echo, diffusion).")] = None,
    split_volumes: Annotated[bool, typer.Option("--split-volumes", help="DICOM: write every volume of a 4D series, as OUTPUT_v000, OUTPUT_v001, ...")] = False,
) -> None:
    """Convert a scan to another format, keeping its exact voxel grid."""
    from medseg.commands import convert_command

    convert_command(input, output, series=series, resample_irregular=resample_irregular, volume=volume,
                    split_volumes=split_volumes, echo=typer.echo)
