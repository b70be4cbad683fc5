"""`medseg evaluate --instances`: object-level scores of predicted against reference cases.

A case's objects come from, in this order:
- an instance-id map with a JSON beside it, nnDetection's format: `<case>.nii.gz` + `<case>.json`
  holding {"instances": {"1": class, "2": class, ...}} (also what `medseg infer --output instances`
  writes); the classes are label values;
- else a semantic label map, split into connected components per "thing" label (`connectivity`).

Protocols: "panoptic" (default: IoU matching per thing class, RQ/SQ/PQ, lesion-wise Dice and HD95,
precision, recall, FP/FN volume), "brats2023" (the challenge's lesion-wise Dice and HD95 per region)
and "autopet" (Dice, FP and FN volume of the foreground). The metrics are `medseg.metrics.instances`.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from medseg.errors import ConfigError, InputError
from medseg.io.atomic import atomic_output

PROTOCOLS = ("panoptic", "brats2023", "autopet")
# BraTS 2023 (dilation iterations, lesion volume threshold in mm^3) per sub-challenge, as published.
BRATS2023_CHALLENGES = {"GLI": (3, 50.0), "SSA": (3, 50.0), "PED": (3, 50.0), "MEN": (1, 50.0), "MET": (1, 2.0)}


@dataclass
class InstanceReport:
    """Rows (one per case and class or region) and the means over cases (NaN left out)."""

    protocol: str
    rows: list[dict]
    summary: dict
    settings: dict
    unmatched_predictions: list[str] = field(default_factory=list)
    unmatched_references: list[str] = field(default_factory=list)

    def flat_metrics(self) -> dict[str, float]:
        """`pq_1`, `lesion_dice_WT`, ... and `pq_mean`: the finite means, for MLflow."""
        flat = {}
        for group, means in self.summary["per_group"].items():
            flat.update({f"{metric}_{group}": value for metric, value in means.items()})
        flat.update({f"{metric}_mean": value for metric, value in self.summary["mean"].items()})
        return {k: v for k, v in flat.items() if v is not None and math.isfinite(v)}


def read_instances(path: Path, things: Sequence[int] | None, connectivity: int):
    """(ids (X, Y, Z) int, {id: class value}, spacing (3,) mm, volume) of one case file."""
    from medseg.io import read_volume
    from medseg.io.atomic import full_suffix
    from medseg.metrics.instances import instances_from_labels

    volume = read_volume(path)
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise InputError(f"{path}: a {array.ndim}D array; expected one 3D label or instance map per case")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise InputError(f"{path}: non-integer values; expected an integer label or instance map")
        array = array.astype(np.int64)
    sidecar = path.with_name(path.name[: len(path.name) - len(full_suffix(path))] + ".json")
    if sidecar.is_file():
        try:
            mapping = json.loads(sidecar.read_text())["instances"]
            classes = {int(k): int(v) for k, v in mapping.items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InputError(f"{sidecar}: expected {{\"instances\": {{\"1\": class, ...}}}} (nnDetection's format) beside the "
                             "instance map; fix or remove the JSON") from None
        present = {int(v) for v in np.unique(array) if v != 0}
        unknown = sorted(present - set(classes))
        if unknown:
            raise InputError(f"{sidecar}: instance id {unknown[0]} of {path.name} has no class in 'instances'; "
                             "give every id of the map a class")
        if things is not None:
            keep = [i for i, c in classes.items() if c in set(things)]
            array = np.where(np.isin(array, keep), array, 0)
            classes = {i: c for i, c in classes.items() if i in set(keep)}
        return array, classes, volume.spacing, volume
    values = [int(v) for v in np.unique(array) if v != 0]
    chosen = values if things is None else [v for v in things]
    ids, classes = instances_from_labels(array, chosen, connectivity)
    return ids, classes, volume.spacing, volume


def evaluate_instances(pred_path: str | Path, ref_path: str | Path, *, things: Sequence[int] | None = None,
                       protocol: str = "panoptic", connectivity: int = 26, iou_threshold: float = 0.5,
                       matching: str = "threshold", penalty_mm: float | None = None,
                       regions: dict[str, Sequence[int]] | None = None, brats_challenge: str = "GLI") -> InstanceReport:
    """Object-level scores for every case in both PRED and REF (files or folders, matched by case id).

    things: the countable label values (default: every non-zero value of each case).
    protocol "panoptic": per thing class, matched by IoU > iou_threshold ("threshold" greedy or
        "hungarian"); rows hold tp, fp, fn, rq, sq, pq, precision, recall, lesion_dice, lesion_hd95
        (missed/false objects at `penalty_mm`, default the image diagonal), fp/fn_volume_ml.
    protocol "brats2023": per region (`regions` {name: label values}, default one per thing value),
        the challenge's lesion-wise Dice and HD95 with `brats_challenge`'s dilation and threshold.
    protocol "autopet": the foreground (every thing value): Dice, fp_volume_ml, fn_volume_ml.
    """
    from medseg.evaluation import match_cases
    from medseg.metrics.instances import MATCHING, autopet_scores, brats2023_lesion_scores, scores_per_class

    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol {protocol!r} is unknown; use one of {', '.join(PROTOCOLS)}")
    if matching not in MATCHING:
        raise ConfigError(f"--matching {matching!r} is unknown; use one of {', '.join(MATCHING)}")
    if not 0 <= iou_threshold < 1:
        raise ConfigError(f"--iou-threshold {iou_threshold}: expected a value in [0, 1), e.g. 0.5")
    if connectivity not in (6, 18, 26):
        raise ConfigError(f"--connectivity {connectivity}: expected 6, 18 or 26")
    if brats_challenge not in BRATS2023_CHALLENGES:
        raise ConfigError(f"--brats-challenge {brats_challenge!r}: use one of {', '.join(BRATS2023_CHALLENGES)}")
    pairs, extra_preds, missing_preds = match_cases(Path(pred_path), Path(ref_path))

    rows: list[dict] = []
    for cid, (pred_file, ref_file) in pairs.items():
        pred_ids, pred_classes, _, pred_volume = read_instances(pred_file, things, connectivity)
        ref_ids, ref_classes, spacing, ref_volume = read_instances(ref_file, things, connectivity)
        if not pred_volume.same_geometry(ref_volume):
            raise InputError(f"case {cid}: prediction {pred_file.name} and reference {ref_file.name} lie on different grids "
                             "(shape, spacing, origin or direction); predict on the reference's grid")
        groups = sorted(set(pred_classes.values()) | set(ref_classes.values())) if things is None else list(things)
        if protocol == "panoptic":
            per_class = scores_per_class(pred_ids, pred_classes, ref_ids, ref_classes, groups, spacing,
                                         threshold=iou_threshold, method=matching, penalty_mm=penalty_mm)
            rows += [{"case_id": cid, "group": str(value), **scores.as_dict()} for value, scores in per_class.items()]
            continue
        pred_mask = {v: np.isin(pred_ids, [i for i, c in pred_classes.items() if c == v]) for v in groups}
        ref_mask = {v: np.isin(ref_ids, [i for i, c in ref_classes.items() if c == v]) for v in groups}
        if protocol == "autopet":
            fg_pred = np.any([pred_mask[v] for v in groups], axis=0) if groups else np.zeros(ref_ids.shape, bool)
            fg_ref = np.any([ref_mask[v] for v in groups], axis=0) if groups else np.zeros(ref_ids.shape, bool)
            rows.append({"case_id": cid, "group": "foreground", **autopet_scores(fg_pred, fg_ref, spacing)})
            continue
        dilation, min_volume = BRATS2023_CHALLENGES[brats_challenge]
        for name, values in (regions or {str(v): [v] for v in groups}).items():
            p = np.any([pred_mask.get(v, np.zeros(ref_ids.shape, bool)) for v in values], axis=0)
            r = np.any([ref_mask.get(v, np.zeros(ref_ids.shape, bool)) for v in values], axis=0)
            rows.append({"case_id": cid, "group": name,
                         **brats2023_lesion_scores(p, r, spacing, dilation=dilation, min_volume_mm3=min_volume)})
    settings = {"protocol": protocol, "things": list(things) if things is not None else "every label",
                "connectivity": connectivity, "iou_threshold": iou_threshold, "matching": matching,
                "penalty_mm": penalty_mm if penalty_mm is not None else "image diagonal",
                **({"brats_challenge": brats_challenge} if protocol == "brats2023" else {})}
    return InstanceReport(protocol, rows, summarise_rows(rows), settings, extra_preds, missing_preds)


def summarise_rows(rows: list[dict]) -> dict:
    """Means over cases per group and over groups, NaN (undefined: no object in either) left out."""
    metrics = [k for k in (rows[0] if rows else {}) if k not in ("case_id", "group")]
    per_group: dict[str, dict[str, float]] = {}
    for group in dict.fromkeys(r["group"] for r in rows):
        chosen = [r for r in rows if r["group"] == group]
        per_group[group] = {m: _nanmean([r[m] for r in chosen]) for m in metrics}
    mean = {m: _nanmean([g[m] for g in per_group.values()]) for m in metrics}
    return {"per_group": per_group, "mean": mean}


def _nanmean(values) -> float:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(finite)) if finite else float("nan")


def write_instance_csv(report: InstanceReport, path: str | Path) -> Path:
    """One row per case and group (class or region); NaN as 'nan'."""
    path = Path(path)
    columns = ["case_id", "group", *[k for k in (report.rows[0] if report.rows else {}) if k not in ("case_id", "group")]]
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for row in report.rows:
                writer.writerow(["nan" if isinstance(row[c], float) and math.isnan(row[c]) else row[c] for c in columns])
    return path


def write_instance_json(report: InstanceReport, path: str | Path) -> Path:
    from medseg.evaluation import _json_safe

    path = Path(path)
    body = {"settings": report.settings, "num_cases": len({r["case_id"] for r in report.rows}),
            "unmatched_predictions": report.unmatched_predictions, "unmatched_references": report.unmatched_references,
            **report.summary}
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(_json_safe(body), indent=2) + "\n")
    return path


def format_instance_report(report: InstanceReport) -> str:
    """A plain-text table: one line per group with the means over cases, then the mean over groups."""
    wanted = {"panoptic": ("pq", "rq", "sq", "lesion_dice", "lesion_hd95", "precision", "recall", "fp_volume_ml", "fn_volume_ml"),
              "brats2023": ("lesion_dice", "lesion_hd95", "tp", "fp", "fn"),
              "autopet": ("dice", "fp_volume_ml", "fn_volume_ml")}[report.protocol]
    lines = [f"{'group':<12}" + "".join(f"{m:>14}" for m in wanted)]
    for group, means in list(report.summary["per_group"].items()) + [("mean", report.summary["mean"])]:
        lines.append(f"{group:<12}" + "".join(f"{means.get(m, float('nan')):>14.4f}" for m in wanted))
    return "\n".join(lines)


def instance_evaluation_command(*, pred, ref, output="instances.csv", things: str | None = None, protocol: str = "panoptic",
                                connectivity: int = 26, iou_threshold: float = 0.5, matching: str = "threshold",
                                penalty_mm: float | None = None, regions: str | None = None, brats_challenge: str = "GLI",
                                experiment: str | None = None, workdir=None, echo=lambda *a, **k: None) -> InstanceReport:
    """`medseg evaluate --instances`: `evaluate_instances`, the CSV and JSON beside `output`, the
    table, and an MLflow run when a store is given (`workdir` or MLFLOW_TRACKING_URI)."""
    from medseg import tracking

    output = Path(output)
    report = evaluate_instances(pred, ref, things=parse_values(things, "--things"), protocol=protocol,
                                connectivity=connectivity, iou_threshold=iou_threshold, matching=matching,
                                penalty_mm=penalty_mm, regions=parse_regions(regions), brats_challenge=brats_challenge)
    for cid in report.unmatched_references:
        echo(f"warning: reference {cid} has no prediction (not scored)", err=True)
    for cid in report.unmatched_predictions:
        echo(f"warning: prediction {cid} has no reference (not scored)", err=True)
    csv_path = write_instance_csv(report, output)
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    json_path = write_instance_json(report, output.with_name(f"{stem}.json"))
    echo(format_instance_report(report))
    echo(f"wrote {csv_path} and {json_path}")
    workdir = Path(workdir) if workdir is not None else None
    if not tracking.has_store(workdir):
        echo("not logged to MLflow: pass --workdir WORKDIR or set MLFLOW_TRACKING_URI", err=True)
        return report
    with tracking.open_tracker(workdir, experiment or "medseg-evaluate", run_name=f"evaluate-{protocol}",
                               tags={"medseg.command": "evaluate", "evaluate.protocol": protocol}) as tracker:
        tracker.log_params({f"evaluate.{k}": v for k, v in report.settings.items()})
        tracker.log_metrics(report.flat_metrics())
        tracker.log_artifact(csv_path, "evaluation")
        tracker.log_artifact(json_path, "evaluation")
    return report


def parse_values(text: str | None, option: str) -> list[int] | None:
    """[1, 3] from "1,3"; None from None."""
    if text is None:
        return None
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected label values separated by commas, e.g. {option} 1,3") from None


def parse_regions(text: str | None) -> dict[str, list[int]] | None:
    """{"WT": [1, 2, 3], "ET": [3]} from "WT=1+2+3,ET=3" (BraTS-style unions of labels)."""
    if text is None:
        return None
    regions = {}
    for part in str(text).split(","):
        name, _, values = part.partition("=")
        try:
            regions[name.strip()] = [int(v) for v in values.split("+")]
        except ValueError:
            raise ConfigError(f"--regions {text!r}: expected NAME=v+v+...,NAME=v, e.g. --regions WT=1+2+3,TC=1+3,ET=3") from None
        if not name.strip():
            raise ConfigError(f"--regions {text!r}: a region has no name; e.g. --regions WT=1+2+3,ET=3")
    return regions
