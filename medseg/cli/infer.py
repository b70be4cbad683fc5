"""`medseg infer INPUT --model BUNDLE`: masks on the scan's exact grid as NIfTI, DICOM SEG or RTSTRUCT."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medseg.precision import Precision


def command(
    input: Annotated[Path, typer.Argument(help="A scan file, a DICOM folder, or a folder / manifest (.txt, .csv, .json) of many scans.")],
    model: Annotated[list[str], typer.Option("--model", "-m", help="Bundle folder, MLflow run id, runs:/ URI or registered model name; repeat to ensemble.")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output file (one scan) or folder (many scans).")] = None,
    format: Annotated[str, typer.Option("--format", help="nifti, dicom-seg, rtstruct, instances (object ids + a JSON of volumes, centroids, boxes) or panoptic, or several from one inference, e.g. nifti,dicom-seg,rtstruct (DICOM outputs need DICOM input; several formats write into the -o folder).")] = "nifti",
    series: Annotated[Optional[str], typer.Option(help="DICOM: SeriesInstanceUID or index of the series to load.")] = None,
    resample_irregular: Annotated[bool, typer.Option("--resample-irregular", help="DICOM: read a gantry-tilted or gapped series onto a regular grid; its SEG/RTSTRUCT go back onto the series' own slices.")] = False,
    volume: Annotated[Optional[int], typer.Option("--volume", min=0, help="DICOM: the 3D volume (0-based) of a 4D series (dynamic, multi-echo, diffusion).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads for torch; default: one per core, waiting threads sleep (see README).")] = None,
    overlap: Annotated[float, typer.Option(help="Sliding-window overlap in [0, 1).")] = 0.5,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Windows per forward pass (default: 1 on the CPU, min(plan batch, 4) on CUDA).")] = None,
    fp16_buffer: Annotated[bool, typer.Option("--fp16-buffer", help="Sum the windows' logits in float16: half the buffer, for very large volumes on a GPU.")] = False,
    tta: Annotated[bool, typer.Option("--tta", help="Average over mirrorings of every spatial axis (2^3 times slower in 3D).")] = False,
    folds: Annotated[Optional[str], typer.Option(help="Comma-separated folds to use, e.g. 0,1, or 'none' for fold_none (default: a folder of fold_* bundles gives its cross-validation folds; fold_none only when it is the only one).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    precision: Annotated[Precision, typer.Option(help="auto: bf16 + channels-last on CPUs with bf16 units, mixed precision on CUDA, else fp32.")] = Precision.auto,
    runtime: Annotated[str, typer.Option("--runtime", help="For an export folder (`medseg export`): torch (TorchScript), onnxruntime, openvino, or auto (the fastest measured on this CPU). A bundle runs in torch.")] = "auto",
    probabilities: Annotated[bool, typer.Option("--probabilities", help="Also write the probability maps (<case>_probabilities.nii.gz).")] = False,
    instances: Annotated[bool, typer.Option("--instances", help="Write connected-component instance labels instead of classes.")] = False,
    no_postprocess: Annotated[bool, typer.Option("--no-postprocess", help="Skip the bundle's post-processing steps.")] = False,
    crf: Annotated[bool, typer.Option("--crf", help="Refine the probabilities with a mean-field CRF (MONAI's CRF block) guided by the image.")] = False,
    workdir: Annotated[Optional[Path], typer.Option("--workdir", help="Log this run to WORKDIR's MLflow store (default: the workdir the bundle was trained in, if it sits in WORKDIR/models/).")] = None,
    shard: Annotated[Optional[str], typer.Option("--shard", help="I/N: do every N-th case from the I-th (SLURM arrays, plain processes); under torchrun the ranks share the cases themselves. See docs/distributed.md.")] = None,
    retries: Annotated[int, typer.Option("--retries", help="A rerun retries a case that failed before up to this many times (the ledger in -o counts).")] = 2,
    report: Annotated[bool, typer.Option("--report", help="Also write an HTML review page (report.html in the -o folder, or <mask>_report.html beside one mask): three views, ml per label and warnings per case; logged to MLflow.")] = False,
    prompt: Annotated[Optional[Path], typer.Option("--prompt", help="A promptable model's prompts for this scan: a JSON of objects with points and a box, in RAS mm (or LPS, voxels); each object is written with its label.")] = None,
) -> None:
    """Segment one scan or many with a trained bundle (or an ensemble of folds)."""
    from medseg.batch import infer, summary_lines
    from medseg.errors import ConfigError

    if device not in ("auto", "cpu", "cuda"):  # named as the option, before any file is read
        raise ConfigError(f"--device {device!r} is invalid; use auto, cpu or cuda")
    if not 0 <= overlap < 1:
        raise ConfigError(f"--overlap {overlap} is out of range; expected a value in [0, 1) (0.5 is the default), e.g. --overlap 0.5")
    result = infer(input, model, output, format=format, series=series, probabilities=probabilities, workdir=workdir,
                   progress=typer.echo, folds=folds, device=device, precision=precision.value, tta=tta,
                   overlap=overlap, batch_size=batch_size, fp16_buffer=fp16_buffer,
                   postprocess=not no_postprocess, instances=instances, crf=crf, shard=shard, retries=retries,
                   resample_irregular=resample_irregular, volume=volume, runtime=runtime, threads=threads, report=report,
                   prompt=prompt)
    if result.many and result.report:  # torchrun: rank 0 reports the job
        typer.echo("")
        for line in summary_lines(result):
            typer.echo(line)
    if result.report:
        typer.echo(f"peak memory: {result.peak_memory_mb:.0f} MB")
    if result.review_page is not None:
        typer.echo(f"review page: {result.review_page}")
    if result.failures:
        raise typer.Exit(1)
