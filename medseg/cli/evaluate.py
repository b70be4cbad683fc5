"""`medseg evaluate --pred PRED --ref REF`: metrics per case and class, reports, plots, MLflow run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def command(
    pred: Annotated[Path, typer.Option("--pred", help="Predicted label map, or a folder of them (one file per case).")],
    ref: Annotated[Path, typer.Option("--ref", help="Reference label map, or a folder of them; cases matched by file name.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="CSV to write; the JSON summary and plots go beside it.")] = Path("metrics.csv"),
    tolerance_mm: Annotated[float, typer.Option("--tolerance-mm", help="Tolerance of surface Dice and boundary F1, in mm.")] = 1.0,
    labels: Annotated[Optional[str], typer.Option("--labels", help="Labels to score, e.g. '1,2' (default: every label present).")] = None,
    count_empty: Annotated[bool, typer.Option("--count-empty", help="Count labels absent from both prediction and reference (Dice 1, HD95 0) in the means; by default they are left out, as in nnU-Net.")] = False,
    distance_penalty_mm: Annotated[Optional[float], typer.Option("--distance-penalty-mm", min=0.0, help="HD95/ASSD of a missed or false structure, in mm (default: the image's diagonal; BraTS uses 374).")] = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="Folder of scans (ID.nii.gz or ID_0000.nii.gz) to draw the overlays on.")] = None,
    run: Annotated[Optional[str], typer.Option("--run", help="Log into this existing MLflow run: a run id, or a model bundle folder (its training run).")] = None,
    experiment: Annotated[Optional[str], typer.Option("--experiment", help="MLflow experiment of the new run (default: the dataset's name, else medseg-evaluate).")] = None,
    workdir: Annotated[Optional[Path], typer.Option("--workdir", help="Workdir whose tracking store to use (default: MLFLOW_TRACKING_URI, else the workdir of a --run bundle; otherwise nothing is logged).")] = None,
) -> None:
    """Score predictions against references: Dice, IoU, precision, recall, HD95, ASSD, NSD, boundary F1.

    Writes the CSV (one row per case and label), a JSON summary and PNG plots (a box plot per
    class, overlays of the five worst cases), prints a table and logs all of it to MLflow.

    A structure missed entirely, or predicted where the reference has none, scores Dice 0 and
    HD95 = ASSD = the diagonal of the image's extent in mm (--distance-penalty-mm to set it), so no
    mean drops it. A label absent from both is left out of the means (--count-empty counts it).
    """
    from medseg.errors import ConfigError
    from medseg import evaluation, tracking

    if run and experiment:
        raise ConfigError("--run and --experiment exclude each other: log into an existing run, or start one in an experiment")
    bundle_dir = Path(run) if run and Path(run).is_dir() else None
    if run and Path(run).is_dir():
        if workdir is None:
            workdir = _workdir_of(Path(run))
        run = _training_run_of(Path(run))
    if run and not tracking.has_store(workdir):
        raise ConfigError(f"--run {run}: no tracking store to find the run in; pass --workdir WORKDIR (its mlruns.db) or set MLFLOW_TRACKING_URI")
    label_list = _parse_labels(labels)
    label_names = _label_names(bundle_dir, workdir)
    from medseg.api import evaluate

    report = evaluate(pred, ref, labels=label_list, tolerance_mm=tolerance_mm, label_names=label_names,
                      count_empty=count_empty, distance_penalty_mm=distance_penalty_mm)
    for cid in report.unmatched_references:
        typer.echo(f"warning: reference {cid} has no prediction (not scored)", err=True)
    for cid in report.unmatched_predictions:
        typer.echo(f"warning: prediction {cid} has no reference (not scored)", err=True)

    csv_path = evaluation.write_csv(report, output)
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    json_path = evaluation.write_json(report, output.with_name(f"{stem}.json"))
    plots = output.with_name(f"{stem}_plots")
    from medseg.extras import available, missing_message

    boxplots, overlays = [], []
    if available("matplotlib"):  # the `plots` extra; the metrics do not need it
        boxplots = evaluation.plot_boxplots(report, plots)
        overlays = evaluation.plot_overlays(report, plots, images=images)
    else:
        typer.echo(f"warning: {missing_message('matplotlib')}; no plots written", err=True)

    typer.echo(evaluation.format_report(report))
    typer.echo(f"wrote {csv_path}, {json_path} and {len(boxplots) + len(overlays)} plots in {plots}")

    if not tracking.has_store(workdir):  # never a store in the current folder by accident
        typer.echo("not logged to MLflow: pass --workdir WORKDIR or set MLFLOW_TRACKING_URI", err=True)
        return
    name = experiment or _dataset_name(workdir) or report.dataset_name or "medseg-evaluate"
    tags = {"medseg.command": "evaluate"}
    if report.dataset_name:
        tags["dataset"] = report.dataset_name
    with tracking.open_tracker(workdir, name, run_name=None if run else "evaluate", run_id=run, tags=tags) as tracker:
        tracker.log_params(
            {"evaluate.tolerance_mm": tolerance_mm, "evaluate.count_empty": count_empty,
             "evaluate.distance_penalty_mm": "image diagonal" if distance_penalty_mm is None else distance_penalty_mm,
             "evaluate.labels": ",".join(map(str, report.summary["per_class"])), "evaluate.num_cases": len(report.pairs)}
        )
        tracker.log_metrics({f"eval_{k}" if run else k: v for k, v in report.flat_metrics().items()})
        tracker.log_artifact(csv_path, "evaluation")
        tracker.log_artifact(json_path, "evaluation")
        if plots.is_dir():
            tracker.log_artifacts(plots, "evaluation/plots")
        if tracker.run_id:
            typer.echo(f"MLflow run {tracker.run_id} in experiment '{name}' ({tracking.redact(tracking.tracking_uri(workdir))})")


def _training_run_of(bundle_dir: Path) -> str:
    """The MLflow run id recorded in a bundle's bundle.json (the run that trained it)."""
    from medseg.bundle import load_bundle
    from medseg.errors import ConfigError

    run_id = load_bundle(bundle_dir).mlflow_run_id
    if not run_id:
        raise ConfigError(f"{bundle_dir}: the bundle records no MLflow run (trained without tracking); pass --run RUN_ID or --experiment")
    return run_id


def _workdir_of(bundle_dir: Path) -> Path | None:
    """WORKDIR for a bundle in WORKDIR/models/<preset>/fold_k (it holds plan.json), else None."""
    parents = bundle_dir.resolve().parents
    return parents[2] if len(parents) > 2 and (parents[2] / "plan.json").is_file() else None


def _label_names(bundle_dir: Path | None, workdir: Path | None) -> dict[int, str] | None:
    """{value: name} of the --run bundle, else of WORKDIR/plan.json, else None (dataset.json beside REF)."""
    if bundle_dir is not None:
        from medseg.bundle import load_bundle

        return load_bundle(bundle_dir).labels
    if workdir is not None and (workdir / "plan.json").is_file():
        from medseg.preprocess.plan import Plan

        return Plan.load(workdir / "plan.json").labels
    return None


def _parse_labels(text: str | None) -> list[int] | None:
    from medseg.errors import ConfigError

    if not text:
        return None
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(f"--labels '{text}': expected comma-separated integers such as '1,2'") from None
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"--labels '{text}': expected positive label numbers such as '1,2' (0 is background)")
    return values


def _dataset_name(workdir: Path | None) -> str | None:
    plan = (workdir or Path.cwd()) / "plan.json"
    try:
        return json.loads(plan.read_text()).get("dataset_name") or None
    except (OSError, ValueError, AttributeError):
        return None
