"""`medseg convert INPUT OUTPUT`: any readable scan to .nii.gz / .nii / .nrrd / .mha."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def command(
    input: Annotated[Path, typer.Argument(help="A NIfTI/NRRD/MHA file or a DICOM folder (with --to: a label map).")],
    output: Annotated[Path, typer.Argument(help="Output file: .nii.gz, .nii, .nrrd or .mha (with --to: the .dcm).")],
    series: Annotated[Optional[str], typer.Option(help="DICOM: SeriesInstanceUID or index of the series to load.")] = None,
    resample_irregular: Annotated[
        bool, typer.Option("--resample-irregular", help="DICOM: resample gantry-tilted or unevenly spaced series onto a regular grid.")
    ] = False,
    volume: Annotated[Optional[int], typer.Option("--volume", min=0, help="DICOM: the 3D volume (0-based) of a 4D series (dynamic, multi-echo, diffusion).")] = None,
    split_volumes: Annotated[bool, typer.Option("--split-volumes", help="DICOM: write every volume of a 4D series, as OUTPUT_v000, OUTPUT_v001, ...")] = False,
    to: Annotated[Optional[str], typer.Option("--to", help="dicom-seg or rtstruct: INPUT is a label map on the --reference series' grid; OUTPUT the .dcm to write.")] = None,
    reference: Annotated[Optional[Path], typer.Option("--reference", help="With --to: the DICOM series folder the mask was drawn on (--series picks one).")] = None,
    labels: Annotated[Optional[str], typer.Option("--labels", help="With --to: names of the mask's values, e.g. '1=liver,2=spleen' (default 'label 1', ...).")] = None,
) -> None:
    """Convert a scan to another format, keeping its exact voxel grid; or with --to, turn a mask
    on a DICOM series' grid into a DICOM SEG or RTSTRUCT referencing that series (no inference)."""
    from medseg.errors import ConfigError

    if to is not None or reference is not None or labels is not None:
        if to is None or reference is None:
            raise ConfigError("--to, --reference (and --labels) go together: medseg convert MASK OUT.dcm --to dicom-seg|rtstruct --reference DICOM_DIR")
        if resample_irregular or volume is not None or split_volumes:
            raise ConfigError("--resample-irregular, --volume and --split-volumes read scans; with --to, INPUT is a mask: leave them out")
        from medseg.api import mask_to_dicom
        from medseg.io.dicom.export import parse_label_names

        written = mask_to_dicom(input, reference, output, format=to, label_names=parse_label_names(labels), series=series)
        typer.echo(f"wrote {written}: {to} referencing {reference}")
        return
    from medseg.commands import convert_command

    convert_command(input, output, series=series, resample_irregular=resample_irregular, volume=volume,
                    split_volumes=split_volumes, echo=typer.echo)
