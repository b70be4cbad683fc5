"""`medseg infer INPUT --model BUNDLE`: masks on the scan's exact grid as NIfTI, DICOM SEG or RTSTRUCT."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from medseg.precision import Precision


class OutputFormat(str, Enum):
    nifti = "nifti"
    dicom_seg = "dicom-seg"
    rtstruct = "rtstruct"


def command(
    input: Annotated[Path, typer.Argument(help="A scan file, a DICOM folder, or a folder / manifest (.txt, .csv, .json) of many scans.")],
    model: Annotated[list[str], typer.Option("--model", "-m", help="Bundle folder, MLflow run id, runs:/ URI or registered model name; repeat to ensemble.")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output file (one scan) or folder (many scans).")] = None,
    format: Annotated[OutputFormat, typer.Option("--format", help="nifti, dicom-seg or rtstruct (the last two need DICOM input).")] = OutputFormat.nifti,
    series: Annotated[Optional[str], typer.Option(help="DICOM: SeriesInstanceUID or index of the series to load.")] = None,
    overlap: Annotated[float, typer.Option(help="Sliding-window overlap in [0, 1).")] = 0.5,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Windows per forward pass (default: 1 on the CPU, min(plan batch, 4) on CUDA).")] = None,
    fp16_buffer: Annotated[bool, typer.Option("--fp16-buffer", help="Sum the windows' logits in float16: half the buffer, for very large volumes on a GPU.")] = False,
    tta: Annotated[bool, typer.Option("--tta", help="Average over mirrorings of every spatial axis (2^3 times slower in 3D).")] = False,
    folds: Annotated[Optional[str], typer.Option(help="Comma-separated folds to use, e.g. 0,1, or 'none' for fold_none (default: a folder of fold_* bundles gives its cross-validation folds; fold_none only when it is the only one).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    precision: Annotated[Precision, typer.Option(help="auto: bf16 + channels-last on CPUs with bf16 units, mixed precision on CUDA, else fp32.")] = Precision.auto,
    probabilities: Annotated[bool, typer.Option("--probabilities", help="Also write the probability maps (<case>_probabilities.nii.gz).")] = False,
    instances: Annotated[bool, typer.Option("--instances", help="Write connected-component instance labels instead of classes.")] = False,
    no_postprocess: Annotated[bool, typer.Option("--no-postprocess", help="Skip the bundle's post-processing steps.")] = False,
    crf: Annotated[bool, typer.Option("--crf", help="Refine the probabilities with a mean-field CRF (MONAI's CRF block) guided by the image.")] = False,
    workdir: Annotated[Optional[Path], typer.Option("--workdir", help="Log this run to WORKDIR's MLflow store (default: the workdir the bundle was trained in, if it sits in WORKDIR/models/).")] = None,
) -> None:
    """Segment one scan or many with a trained bundle (or an ensemble of folds)."""
    import logging
    import resource
    import time

    from medseg.api import load_model
    from medseg.data.cases import discover_cases, is_image_file
    from medseg.errors import ConfigError, InputError, MedsegError

    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {device!r} is invalid; use auto, cpu or cuda")
    if not 0 <= overlap < 1:
        raise ConfigError(f"--overlap {overlap} is out of range; expected a value in [0, 1) (0.5 is the default), e.g. --overlap 0.5")
    cases, many = discover_cases(input)
    if format is OutputFormat.rtstruct:  # the `rtstruct` extra: said in one line before any prediction
        from medseg.extras import require

        require("rt_utils")
    if format is not OutputFormat.nifti:
        non_dicom = [p for _, paths in cases for p in paths if is_image_file(p)]
        if non_dicom:
            raise InputError(
                f"{non_dicom[0]}: --format {format.value} needs a DICOM series as input (to reference), "
                "but this is a NIfTI/NRRD/MHA file; use --format nifti or give the DICOM folder"
            )
    if many and output is None:
        raise InputError(f"{input} holds {len(cases)} scans; give an output folder with -o OUT_DIR")
    targets = _targets(input, cases, many, output, format, probabilities)  # checked before any model loads

    predictor = load_model(model, workdir=workdir, folds=folds, device=device, precision=precision.value, tta=tta,
                           overlap=overlap, batch_size=batch_size, fp16_buffer=fp16_buffer,
                           postprocess=not no_postprocess, instances=instances, crf=crf)
    bundles = [b.path for b in predictor.bundles]
    typer.echo(f"precision: {predictor.precision.describe()}; {len(bundles)} model(s); device {predictor.device}")

    if many:
        from medseg.io.atomic import make_output_folder

        make_output_folder(output, "-o")
    failures: list[tuple[str, str]] = []
    rows = []
    for n, ((case_id, paths), target) in enumerate(zip(cases, targets), start=1):
        start = time.perf_counter()
        try:
            _infer_one(predictor, paths, target, format, series, probabilities)
        except MedsegError as exc:
            if not many:
                raise
            failures.append((case_id, str(exc)))
            typer.echo(f"[{n}/{len(cases)}] {case_id}: FAILED: {exc}", err=True)
            continue
        except Exception as exc:  # a bug on one case must not lose the rest of a batch
            if not many:
                raise
            logging.getLogger(__name__).debug("case failed", exc_info=True)
            failures.append((case_id, f"internal error: {type(exc).__name__}: {exc}"))
            typer.echo(f"[{n}/{len(cases)}] {case_id}: FAILED: internal error {type(exc).__name__}", err=True)
            continue
        seconds = time.perf_counter() - start
        rows.append((case_id, seconds, target))
        typer.echo(f"[{n}/{len(cases)}] {case_id}: {seconds:.1f} s -> {target}")

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if many:
        typer.echo(f"\n{'case':<40} {'result':<8} seconds")
        for case_id, seconds, _ in rows:
            typer.echo(f"{case_id:<40} {'ok':<8} {seconds:.1f}")
        for case_id, message in failures:
            typer.echo(f"{case_id:<40} {'FAILED':<8} {message}")
        typer.echo(f"{len(rows)} ok, {len(failures)} failed")
    typer.echo(f"peak memory: {peak_mb:.0f} MB")
    _log_run(predictor, model, bundles, workdir, rows, failures, peak_mb,
             {"precision": predictor.precision.resolved.value, "overlap": overlap, "tta": tta, "format": format.value,
              "batch_size": predictor.batch_size, "fp16_buffer": fp16_buffer})
    if failures:
        raise typer.Exit(1)


def _targets(input: Path, cases, many: bool, output: Path | None, format: OutputFormat, probabilities: bool) -> list[Path]:
    """The output path of each case, checked before any work: case ids are plain names (a manifest's
    "../x" or "/abs" would write outside -o), no two cases share an output, no output is an input,
    and the output folder (many scans) or the output file's folder (one scan) can be written."""
    import os

    from medseg.api import FORMATS, probabilities_path
    from medseg.errors import InputError, OutputError
    from medseg.io.atomic import check_output_dir, check_output_folder, check_plain_name

    suffix = FORMATS[format.value]
    if many:
        check_output_folder(output, "-o")
        for case_id, _ in cases:
            check_plain_name(case_id, "case_id", input)
        targets = [output / f"{case_id}{suffix}" for case_id, _ in cases]
    else:
        targets = [output or Path(f"{cases[0][0]}_seg{suffix}")]
        check_output_dir(targets[0])
    seen: dict[str, str] = {}
    for (case_id, _), target in zip(cases, targets):
        key = os.path.realpath(target)
        if key in seen:
            raise InputError(f"{input}: cases '{seen[key]}' and '{case_id}' would both be written to {target}; give the scans distinct names")
        seen[key] = case_id
    inputs = {os.path.realpath(p) for _, paths in cases for p in paths}
    series_folders = [os.path.realpath(p) for _, paths in cases for p in paths if Path(p).is_dir()]
    for target in targets:
        written = [target] + ([probabilities_path(target)] if probabilities else [])
        for path in written:
            if os.path.realpath(path) in inputs:
                raise OutputError(
                    f"{path}: this output is also an input scan and would be overwritten by its mask; "
                    "choose another output path (-o) for the masks"
                )
            inside = [f for f in series_folders if os.path.realpath(path).startswith(f + os.sep)]
            if inside:
                raise OutputError(
                    f"{path}: this output lies inside the input DICOM folder {inside[0]}, which would then hold a second "
                    "series; choose an output path (-o) outside it"
                )
    return targets


def _log_run(predictor, model_refs, bundles, workdir, rows, failures, peak_mb, options) -> None:
    """One MLflow run per `medseg infer`, in the dataset's experiment beside training and evaluation.

    Logged to `workdir`'s store, else to the store of the workdir the first bundle was trained in
    (bundles live in WORKDIR/models/<preset>/fold_k), else only when MLFLOW_TRACKING_URI is set.
    """
    import os

    from medseg import tracking

    if workdir is None:
        candidate = Path(bundles[0]).resolve().parents[2] if len(Path(bundles[0]).resolve().parents) > 2 else None
        if candidate is not None and (candidate / "plan.json").is_file():
            workdir = candidate
    if workdir is None and not os.environ.get("MLFLOW_TRACKING_URI"):
        return
    dataset = predictor.bundle.plan.dataset_name
    with tracking.open_tracker(workdir, dataset, run_name="infer", tags={"medseg.command": "infer", "dataset": dataset}) as tracker:
        tracker.log_params({"infer.model": ",".join(map(str, model_refs))[:500], **{f"infer.{k}": v for k, v in options.items()}})
        seconds = [r[1] for r in rows]
        tracker.log_metrics({
            "cases_ok": len(rows), "cases_failed": len(failures), "peak_memory_mb": peak_mb,
            **({"seconds_per_case": sum(seconds) / len(seconds)} if seconds else {}),
        })


def _infer_one(predictor, paths: list[Path], target: Path, format: OutputFormat, series: str | None, probabilities: bool) -> None:
    """Predict one case (one path per channel) and write its mask; DICOM outputs reference the first channel's series."""
    from medseg.api import read_scan, write
    from medseg.io.atomic import check_output_dir

    check_output_dir(target)  # fail before a long prediction
    scan = read_scan(paths, series=series)
    if format is OutputFormat.rtstruct and scan.datasets is not None:  # refuse before a long prediction
        from medseg.io.dicom import refuse_multiframe

        refuse_multiframe(scan.datasets)
    write(predictor.segment(scan, probabilities=probabilities), target, format.value)
