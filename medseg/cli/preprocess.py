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
) -> None:
    """Validate a dataset, plan its preprocessing and write the resampled, normalised cache."""
    from medseg.api import plan_and_preprocess
    from medseg.preprocess.validate import ValidationFailed, format_problems

    _check_inputs_survive(dataset, out)
    try:
        summary = plan_and_preprocess(dataset, out, config, workers=workers, skip_invalid=skip_invalid, progress=_Bar())
    except ValidationFailed as exc:
        if len(exc.problems) > 1:  # one problem is said in the error line itself
            typer.echo(format_problems(exc.problems), err=True)
        raise
    if summary.invalid:
        typer.echo(format_problems(summary.invalid), err=True)
        typer.echo(f"left out {len({p.case for p in summary.invalid})} invalid case(s)", err=True)
    if summary.cases_per_label is not None:  # every value with its case count, so a stray value shows
        source = "declared" if summary.labels_declared else "not declared: taken from the values found in the masks"
        typer.echo(f"labels ({source}):")
        for value, n in summary.cases_per_label.items():
            name = summary.plan.labels.get(value, "ignored (unannotated)" if value == 255 else "?")
            typer.echo(f"  {value:>5}  {name:<24} in {n} case(s)")
    cfg = summary.plan.configurations["3d"]
    typer.echo(
        f"{len(summary.processed)} case(s) preprocessed, {len(summary.skipped_unchanged)} unchanged; "
        f"target spacing {summary.plan.target_spacing} mm, 3d patch {cfg.patch_size} x batch {cfg.batch_size}; "
        f"plan in {summary.workdir / 'plan.json'}"
    )


def _check_inputs_survive(dataset: Path, out: Path) -> None:
    """Refuse an --out whose manifest.json, fingerprint.json or plan.json is the dataset's own manifest file."""
    import os

    from medseg.errors import OutputError

    if not dataset.is_file():
        return
    for name in ("manifest.json", "fingerprint.json", "plan.json"):
        if os.path.realpath(out / name) == os.path.realpath(dataset):
            raise OutputError(
                f"{out / name}: --out {out} would replace the dataset manifest {dataset} with medseg's {name}; "
                "choose another --out folder"
            )
