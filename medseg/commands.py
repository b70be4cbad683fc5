"""What each `medseg` command does, as one Python call: the CLI command and the `medseg run` step
both call these, so a pipeline step is exactly the command (same checks, same outputs, same lines).

Each `<command>_command` function takes the command's arguments under the CLI's option names (`--max-minutes` ->
`max_minutes`), does the command's whole job through `medseg.api` (and the library below it),
reports what the command prints through `echo(line)` / `echo(line, err=True)` (default: nothing)
and returns the result object. Parsing, progress bars and exit codes stay in `medseg/cli/`.
`medseg infer` is `medseg.api.infer` (medseg/batch.py) plus `infer_lines` / `finish_infer` here.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from medseg.errors import ConfigError, OutputError

Echo = Callable[..., None]  # echo(line) or echo(line, err=True): stdout / stderr lines of the command


def _quiet(*_args: Any, **_kwargs: Any) -> None:
    pass


# ---------------------------------------------------------------- preprocess


def preprocess_command(dataset: Union[str, Path], *, out: Union[str, Path], config: Optional[Union[str, Path]] = None,
               workers: int = 1, skip_invalid: bool = False, echo: Echo = _quiet,
               progress: Optional[Callable[[str, int, int], None]] = None, resample_irregular: bool = False):
    """`medseg preprocess DATASET --out WORKDIR`: `medseg.api.plan_and_preprocess` with the command's
    checks (an --out that would replace the dataset's manifest, workers >= 1) and its summary lines."""
    from medseg.api import plan_and_preprocess
    from medseg.preprocess.validate import ValidationFailed, format_problems

    dataset, out = Path(dataset), Path(out)
    if workers < 1:
        raise ConfigError(f"workers {workers}: expected at least 1 worker process, e.g. --workers 2")
    if config is not None and not Path(config).is_file():
        raise ConfigError(f"{config}: no such preprocess config file; see configs/preprocess.yaml")
    check_inputs_survive(dataset, out)
    try:
        summary = plan_and_preprocess(dataset, out, config, workers=workers, skip_invalid=skip_invalid, progress=progress,
                                      resample_irregular=resample_irregular)
    except ValidationFailed as exc:
        if len(exc.problems) > 1:  # one problem is said in the error line itself
            echo(format_problems(exc.problems), err=True)
        raise
    if summary.invalid:
        echo(format_problems(summary.invalid), err=True)
        echo(f"left out {len({p.case for p in summary.invalid})} invalid case(s)", err=True)
    for line in preprocess_lines(summary):
        echo(line)
    return summary


def preprocess_lines(summary) -> list[str]:
    """Every label value with its case count (so a stray value shows), then the plan's headline."""
    lines = []
    if summary.cases_per_label is not None:
        source = "declared" if summary.labels_declared else "not declared: taken from the values found in the masks"
        lines.append(f"labels ({source}):")
        for value, n in summary.cases_per_label.items():
            name = summary.plan.labels.get(value, "ignored (unannotated)" if value == 255 else "?")
            lines.append(f"  {value:>5}  {name:<24} in {n} case(s)")
    cfg = summary.plan.configurations["3d"]
    lines.append(
        f"{len(summary.processed)} case(s) preprocessed, {len(summary.skipped_unchanged)} unchanged; "
        f"target spacing {summary.plan.target_spacing} mm, 3d patch {cfg.patch_size} x batch {cfg.batch_size}; "
        f"plan in {summary.workdir / 'plan.json'}"
    )
    return lines


def check_inputs_survive(dataset: Path, out: Path) -> None:
    """Refuse an --out whose manifest.json, fingerprint.json or plan.json is the dataset's own manifest file."""
    if not dataset.is_file():
        return
    for name in ("manifest.json", "fingerprint.json", "plan.json"):
        if os.path.realpath(out / name) == os.path.realpath(dataset):
            raise OutputError(
                f"{out / name}: --out {out} would replace the dataset manifest {dataset} with medseg's {name}; "
                "choose another --out folder"
            )


# ---------------------------------------------------------------- train


def parse_folds(text: Union[str, int, None]) -> list[Optional[int]]:
    """'all' -> the five folds in turn; 'none' (or None) -> [None] (every case, no validation:
    fold_none); '0' -> [0]; '0,2' -> [0, 2]."""
    text = "none" if text is None else str(text).strip()
    if text == "all":
        return list(range(5))
    if text == "none":
        return [None]
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() and int(p) < 5 for p in parts):
        raise ConfigError(f"--fold {text!r}: expected 0-4, a comma-separated list of them, 'all' (five folds) or 'none' (every case)")
    return [int(p) for p in parts]


def train_command(workdir: Union[str, Path], *, config: Union[str, Path], fold: str = "0", resume: bool = False,
          epochs: Optional[int] = None, max_minutes: Optional[float] = None, seed: Optional[int] = None,
          deterministic: bool = False, precision: Optional[str] = None, iterations_per_epoch: Optional[int] = None,
          echo: Echo = _quiet, progress: Optional[Callable[[int, int, float], None]] = None,
          time_budget: Optional[Union[str, float]] = None, overwrite: bool = False, threads: Optional[int] = None) -> list:
    """`medseg train WORKDIR --config PRESET --fold F`: `medseg.api.train` for each fold of `fold`
    ('0', '0,2', 'all', 'none'); after 'all', one post-processing choice over every fold's validation.
    Only rank 0 of a distributed run echoes. Returns the folds' `TrainResult`s."""
    from medseg.api import train as train_fold
    from medseg.precision import Precision
    from medseg.training.config import load_train_config

    folds = parse_folds(fold)
    for name, value, least in (("epochs", epochs, 1), ("iterations_per_epoch", iterations_per_epoch, 1), ("max_minutes", max_minutes, 0)):
        if value is not None and value < least:
            raise ConfigError(f"{name} {value}: expected at least {least}, e.g. --{name.replace('_', '-')} {max(least, 1)}")
    if precision is not None:
        precision = getattr(precision, "value", precision)
        if precision not in {p.value for p in Precision}:
            raise ConfigError(f"precision {precision!r}: use one of {', '.join(p.value for p in Precision)}")
    config = Path(config)
    cfg = load_train_config(config, {"seed": seed, "iterations_per_epoch": iterations_per_epoch,
                                     "deterministic": True if deterministic else None, "threads": threads})
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    say = echo if rank == 0 else _quiet
    results, stopped_any = [], False
    parallel = None
    if world > 1 and len(folds) > 1:  # several folds on several processes: one fold per rank (medseg.training.folds)
        from medseg.training.folds import FoldParallel

        parallel = FoldParallel(workdir, folds, seed=cfg.seed)
        say(f"{len(folds)} folds over {world} processes, one fold per process; rank 0 trains fold(s) {parallel.mine}")
    for k in parallel.mine if parallel else folds:
        with parallel.alone() if parallel else contextlib.nullcontext():
            result = train_fold(workdir, cfg, k, preset_name=config.stem, resume=resume, epochs=epochs, precision=precision,
                                max_minutes=max_minutes, echo=say, progress=progress, time_budget=time_budget,
                                overwrite=overwrite)
        if world > 1 and parallel is None:  # lets users (and the tests) check that every rank ended with the same weights
            echo(f"rank {rank}/{world}: final weights sha256 {result.weights_sha256}", err=True)
        if result.val_dice:
            say("validation Dice: " + ", ".join(f"{n} {v:.4f}" for n, v in result.val_dice.items()))
        say(f"bundle: {result.bundle_dir}")
        stopped_any = stopped_any or result.stopped_early
        results.append(result)
    if parallel is not None:
        parallel.finish()  # every rank's folds are done: the ensemble is complete
    if str(fold).strip() == "all" and rank == 0 and not stopped_any:  # one post-processing choice over every fold
        from medseg.postprocess.select import select_pooled

        select_pooled(workdir, config.stem, folds, echo=say)
    return results


# ---------------------------------------------------------------- infer


def infer_lines(result) -> list[str]:
    """The table `medseg infer` prints after many scans (and the peak memory line)."""
    from medseg.batch import summary_lines

    return ([""] + summary_lines(result) if result.many else []) + [f"peak memory: {result.peak_memory_mb:.0f} MB"]


# ---------------------------------------------------------------- evaluate


def evaluate_command(*, pred: Union[str, Path], ref: Union[str, Path], output: Union[str, Path] = "metrics.csv",
             tolerance_mm: float = 1.0, labels: Optional[Union[str, list[int]]] = None, count_empty: bool = False,
             distance_penalty_mm: Optional[float] = None, images: Optional[Union[str, Path]] = None, run: Optional[str] = None, experiment: Optional[str] = None,
             workdir: Optional[Union[str, Path]] = None, echo: Echo = _quiet):
    """`medseg evaluate --pred --ref`: `medseg.api.evaluate`, then the CSV, its JSON summary and plots
    beside `output`, the table, and an MLflow run (or `run`: an existing run id, or a bundle folder
    whose training run receives the scores as eval_*). A missed or false structure scores HD95 = ASSD =
    `distance_penalty_mm` (default: the image diagonal); a label absent from both is left out of the
    means unless `count_empty`. Returns the `EvaluationReport`."""
    from medseg import evaluation, tracking
    from medseg.api import evaluate as evaluate_report
    from medseg.extras import available, missing_message

    output, workdir = Path(output), Path(workdir) if workdir is not None else None
    if distance_penalty_mm is not None and distance_penalty_mm < 0:
        raise ConfigError(f"--distance-penalty-mm {distance_penalty_mm}: expected a distance >= 0 mm, e.g. 374 (BraTS)")
    if run and experiment:
        raise ConfigError("--run and --experiment exclude each other: log into an existing run, or start one in an experiment")
    bundle_dir = Path(run) if run and Path(run).is_dir() else None
    if bundle_dir is not None:
        workdir = workdir if workdir is not None else _workdir_of(bundle_dir)
        run = _training_run_of(bundle_dir)
    if run and not tracking.has_store(workdir):
        raise ConfigError(f"--run {run}: no tracking store to find the run in; pass --workdir WORKDIR (its mlruns.db) or set MLFLOW_TRACKING_URI")
    report = evaluate_report(pred, ref, labels=parse_labels(labels), tolerance_mm=tolerance_mm,
                             label_names=_label_names(bundle_dir, workdir), count_empty=count_empty,
                             distance_penalty_mm=distance_penalty_mm)
    for cid in report.unmatched_references:
        echo(f"warning: reference {cid} has no prediction (not scored)", err=True)
    for cid in report.unmatched_predictions:
        echo(f"warning: prediction {cid} has no reference (not scored)", err=True)

    csv_path = evaluation.write_csv(report, output)
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    json_path = evaluation.write_json(report, output.with_name(f"{stem}.json"))
    plots = output.with_name(f"{stem}_plots")
    boxplots, overlays = [], []
    if available("matplotlib"):  # the `plots` extra; the metrics do not need it
        boxplots = evaluation.plot_boxplots(report, plots)
        overlays = evaluation.plot_overlays(report, plots, images=Path(images) if images else None)
    else:
        echo(f"warning: {missing_message('matplotlib')}; no plots written", err=True)
    echo(evaluation.format_report(report))
    echo(f"wrote {csv_path}, {json_path} and {len(boxplots) + len(overlays)} plots in {plots}")

    if not tracking.has_store(workdir):  # never a store in the current folder by accident
        echo("not logged to MLflow: pass --workdir WORKDIR or set MLFLOW_TRACKING_URI", err=True)
        return report
    name = experiment or _plan_dataset_name(workdir) or report.dataset_name or "medseg-evaluate"
    tags = {"medseg.command": "evaluate", **({"dataset": report.dataset_name} if report.dataset_name else {})}
    with tracking.open_tracker(workdir, name, run_name=None if run else "evaluate", run_id=run, tags=tags) as tracker:
        tracker.log_params({
            "evaluate.tolerance_mm": tolerance_mm, "evaluate.count_empty": count_empty,
            "evaluate.distance_penalty_mm": "image diagonal" if distance_penalty_mm is None else distance_penalty_mm,
            "evaluate.labels": ",".join(map(str, report.summary["per_class"])), "evaluate.num_cases": len(report.pairs)})
        tracker.log_metrics({f"eval_{k}" if run else k: v for k, v in report.flat_metrics().items()})
        tracker.log_artifact(csv_path, "evaluation")
        tracker.log_artifact(json_path, "evaluation")
        if plots.is_dir():
            tracker.log_artifacts(plots, "evaluation/plots")
        if tracker.run_id:
            echo(f"MLflow run {tracker.run_id} in experiment '{name}' ({tracking.redact(tracking.tracking_uri(workdir))})")
    return report


def parse_labels(labels: Union[str, Sequence[int], None]) -> Optional[list[int]]:
    """'1,2' (or [1, 2]) -> [1, 2]; None or '' -> None (every label present)."""
    if labels is None or labels == "" or labels == []:
        return None
    text = labels if isinstance(labels, str) else ",".join(map(str, labels))
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(f"--labels '{text}': expected comma-separated integers such as '1,2'") from None
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"--labels '{text}': expected positive label numbers such as '1,2' (0 is background)")
    return values


def _training_run_of(bundle_dir: Path) -> str:
    """The MLflow run id recorded in a bundle's bundle.json (the run that trained it)."""
    from medseg.bundle import load_bundle

    run_id = load_bundle(bundle_dir).mlflow_run_id
    if not run_id:
        raise ConfigError(f"{bundle_dir}: the bundle records no MLflow run (trained without tracking); pass --run RUN_ID or --experiment")
    return run_id


def _workdir_of(bundle_dir: Path) -> Optional[Path]:
    """WORKDIR for a bundle in WORKDIR/models/<preset>/fold_k (it holds plan.json), else None."""
    parents = bundle_dir.resolve().parents
    return parents[2] if len(parents) > 2 and (parents[2] / "plan.json").is_file() else None


def _label_names(bundle_dir: Optional[Path], workdir: Optional[Path]) -> Optional[dict[int, str]]:
    """{value: name} of the --run bundle, else of WORKDIR/plan.json, else None (dataset.json beside REF)."""
    if bundle_dir is not None:
        from medseg.bundle import load_bundle

        return load_bundle(bundle_dir).labels
    if workdir is not None and (workdir / "plan.json").is_file():
        from medseg.preprocess.plan import Plan

        return Plan.load(workdir / "plan.json").labels
    return None


def _plan_dataset_name(workdir: Optional[Path]) -> Optional[str]:
    plan = (workdir or Path.cwd()) / "plan.json"
    try:
        return json.loads(plan.read_text()).get("dataset_name") or None
    except (OSError, ValueError, AttributeError):
        return None


# ---------------------------------------------------------------- convert, info


def convert_command(input: Union[str, Path], output: Union[str, Path], *, series: Optional[str] = None,
            resample_irregular: bool = False, volume: Optional[int] = None, split_volumes: bool = False,
            echo: Echo = _quiet):
    """`medseg convert INPUT OUTPUT`: any readable scan to .nii.gz / .nii / .nrrd / .mha on its exact
    grid, written atomically; returns the `Volume` (the last one with `split_volumes`).

    volume: DICOM, the 3D volume (0-based) of a 4D series; split_volumes: every volume of a 4D
    series, to OUTPUT's name with _v000, _v001, ... before its suffix."""
    from medseg.api import read
    from medseg.io import write_volume
    from medseg.io.atomic import check_output_dir, full_suffix

    check_output_dir(Path(output))  # fail before a long read
    if split_volumes:
        from medseg.io.dicom.series import count_volumes

        if volume is not None:
            raise ConfigError("--split-volumes writes every volume; leave out --volume (or drop --split-volumes for one)")
        output, suffix = Path(output), full_suffix(Path(output))
        stem = output.name[: len(output.name) - len(suffix)]
        targets = [output.with_name(f"{stem}_v{v:03d}{suffix}") for v in range(count_volumes(input, series))]
    else:
        targets = [Path(output)]
    for v, target in enumerate(targets):
        image = read(input, series=series, resample_irregular=resample_irregular, volume=v if split_volumes else volume)
        write_volume(image, target)
        echo(f"wrote {target}: shape {image.array.shape}, orientation {image.orientation}")
    return image


def info_command(input: Union[str, Path], *, series: Optional[str] = None, json: bool = False, echo: Echo = _quiet) -> dict:
    """`medseg info INPUT`: shape, spacing, origin and direction (RAS mm), orientation, dtype and
    intensity range of a scan; a DICOM folder's series list. No patient-identifying tag is read out.
    `json`: echo the report as JSON instead of text lines. Returns the report."""
    from medseg.io import is_readable_image_path

    input = Path(input)
    report: dict = {"path": str(input)}
    if not is_readable_image_path(input):
        from medseg.io.dicom import list_series

        summaries = list_series(input)
        report["series"] = [s.as_dict() for s in summaries]
        if series is not None or len(summaries) == 1:
            report.update(describe_scan(input, series))
    else:
        report.update(describe_scan(input, series))
    for line in info_lines(report, as_json=json):
        echo(line)
    return report


COORDINATES = ("RAS+ mm (x to the patient's Right, y Anterior, z Superior; DICOM's LPS is x and y negated); "
               "direction: one column per voxel axis i, j, k; orientation: where those axes point")


def describe_scan(path: Union[str, Path], series: Optional[str] = None) -> dict:
    """Geometry and intensity summary of one scan (JSON-serialisable)."""
    import numpy as np

    from medseg.api import read

    volume = read(path, series=series)
    array = volume.array
    finite = array[np.isfinite(array)] if np.issubdtype(array.dtype, np.floating) else array
    return {
        "shape": list(array.shape),
        "spacing_mm": [round(float(s), 6) for s in volume.spacing],
        "coordinates": COORDINATES,
        "origin_ras_mm": [round(float(o), 6) for o in volume.origin],
        "direction_ras": [[round(float(d), 6) + 0.0 for d in row] for row in volume.direction],  # + 0.0: no -0.0
        "orientation": volume.orientation,
        "dtype": str(array.dtype),
        "intensity_range": [float(finite.min()), float(finite.max())] if finite.size else None,
        "modality": volume.meta.modality,
        "series_uid": volume.meta.series_uid,
        "series_description": volume.meta.series_description,
    }


def info_lines(report: dict, as_json: bool = False) -> list[str]:
    """`medseg info`'s text (one `key: value` line each, the series as a list) or its JSON."""
    if as_json:
        return [json.dumps(report, indent=2)]
    lines = []
    for key, value in report.items():
        if key == "series":
            lines.append(f"series ({len(value)}):")
            lines += [f"  [{s['index']}] {s['uid']}  {s['modality'] or '-'}  {s['description'] or '-'}  {s['num_slices']} slices" for s in value]
        elif value is not None:
            lines.append(f"{key}: {value}")
    return lines


def finish_infer(result, echo: Echo = _quiet) -> None:
    """After `medseg.api.infer` in a pipeline: the batch table, then stop if any case failed."""
    from medseg.errors import InputError

    for line in infer_lines(result):
        echo(line)
    if result.failures:
        case_id, message = result.failures[0]
        raise InputError(f"{len(result.failures)} of {len(result.failures) + len(result.done)} case(s) failed, "
                         f"first {case_id}: {message}")
