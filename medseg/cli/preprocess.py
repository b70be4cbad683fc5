"""`medseg preprocess DATASET --out WORKDIR`: validate, fingerprint, plan and cache a dataset."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer


class _Bar:
    """A one-line progress bar on stderr when it is a terminal (redrawn in place), else one line per stage
    on stdout, so that stderr holds only problems."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.start = time.monotonic()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if done == 0:
            self.start = time.monotonic()
        if self.tty:
            filled = int(30 * done / max(total, 1))
            sys.stderr.write(f"\r{stage:<10} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} {time.monotonic() - self.start:.1f}s")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif done == total:  # not a terminal: one summary line per stage, on stdout with the other results
            sys.stdout.write(f"{stage}: {total} case(s) in {time.monotonic() - self.start:.1f}s\n")
            sys.stdout.flush()


def command(
    dataset: Annotated[Path, typer.Argument(help="MSD/nnU-Net folder (dataset.json), or a .csv/.json manifest (see data_manifest/).")],
    out: Annotated[Path, typer.Option("--out", help="Work folder: plan.json, fingerprint.json, manifest.json, preprocessed/.")],
    config: Annotated[Optional[Path], typer.Option("--config", exists=True, dir_okay=False, help="YAML config (see configs/preprocess.yaml).")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Parallel worker processes.")] = 1,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Leave out invalid cases instead of stopping.")] = False,
    resample_irregular: Annotated[bool, typer.Option("--resample-irregular", help="DICOM: read gantry-tilted or gapped series onto a regular grid instead of refusing them (config: resample_irregular: true).")] = False,
) -> None:
    """Validate a dataset, plan its preprocessing and write the resampled, normalised cache."""
    from medseg.commands import preprocess_command

    preprocess_command(dataset, out=out, config=config, workers=workers, skip_invalid=skip_invalid, echo=typer.echo, progress=_Bar(),
                       resample_irregular=resample_irregular)
