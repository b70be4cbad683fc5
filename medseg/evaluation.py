"""Evaluate predicted label maps against references: case matching, CSV/JSON reports and plots.

Cases are matched by id, the file name without its image suffix (.nii.gz, .nii, .nrrd, .mha, ...).
Metrics and their empty-mask conventions are those of `medseg.metrics`: a missed or false structure
scores HD95 = ASSD = the image diagonal in mm (or `distance_penalty_mm`), and a label absent from
both prediction and reference is left out of the means unless `count_empty`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from medseg.data.cases import case_id_of
from medseg.errors import InputError
from medseg.extras import require
from medseg.io.atomic import atomic_output
from medseg.metrics.case import EXTRA_COLUMNS, FLAG_COLUMNS, METRIC_COLUMNS, case_metrics, summarise

log = logging.getLogger(__name__)

CSV_COLUMNS = ["case_id", "label", *METRIC_COLUMNS, *EXTRA_COLUMNS, *FLAG_COLUMNS]


@dataclass
class EvaluationReport:
    """Rows (one per case and label, keys CSV_COLUMNS), their summary and the matching outcome."""

    rows: list[dict]
    summary: dict
    tolerance_mm: float
    pairs: dict[str, tuple[Path, Path]]  # case_id -> (prediction, reference)
    unmatched_predictions: list[str] = field(default_factory=list)
    unmatched_references: list[str] = field(default_factory=list)
    label_names: dict[int, str] = field(default_factory=dict)
    dataset_name: str | None = None
    count_empty: bool = False  # empty-vs-empty rows counted in the means
    distance_penalty_mm: float | None = None  # None: each case's image diagonal

    def scored_rows(self) -> list[dict]:
        """The rows the means are taken over: every row with count_empty, else those not both empty."""
        return [r for r in self.rows if self.count_empty or not r.get("both_empty", 0)]

    def case_scores(self) -> dict[str, float]:
        """Mean Dice over labels per case (for ranking the worst cases), over `scored_rows`."""
        scores: dict[str, list[float]] = {}
        for row in self.scored_rows():
            scores.setdefault(row["case_id"], []).append(row["dice"])
        return {case: float(np.mean(values)) for case, values in scores.items()}

    def flat_metrics(self) -> dict[str, float]:
        """Per-class means as `dice_1`, `hd95_2`, ..., class means as `dice_mean`, plus `miou` (finite only)."""
        flat = {}
        for label, stats in self.summary["per_class"].items():
            for metric, values in stats.items():
                flat[f"{metric}_{label}"] = values["mean"]
        for metric, value in self.summary["mean"].items():
            flat[f"{metric}_mean"] = value
        flat["miou"] = self.summary["miou"]
        return {k: v for k, v in flat.items() if v is not None and math.isfinite(v)}


def list_case_files(path: Path, what: str) -> dict[str, Path]:
    """case_id -> file, for one image file or a folder of them."""
    from medseg.io import is_readable_image_path

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such {what} file or folder; check the path")
    if path.is_file():
        return {case_id_of(path): path}
    cases: dict[str, Path] = {}
    for file in sorted(path.iterdir()):
        if file.is_file() and not file.name.startswith(".") and is_readable_image_path(file):
            cid = case_id_of(file)
            if cid in cases:
                raise InputError(
                    f"{path}: case '{cid}' appears twice ({cases[cid].name}, {file.name}); keep one file per case"
                )
            cases[cid] = file
    if not cases:
        raise InputError(f"{path}: no .nii.gz/.nii/.nrrd/.mha files in this {what} folder; expected one label map per case")
    return cases


def match_cases(pred_path: Path, ref_path: Path) -> tuple[dict[str, tuple[Path, Path]], list[str], list[str]]:
    """(case_id -> (pred, ref), unmatched prediction ids, unmatched reference ids)."""
    preds, refs = list_case_files(pred_path, "prediction"), list_case_files(ref_path, "reference")
    if Path(pred_path).is_file() and Path(ref_path).is_file():
        return {case_id_of(Path(ref_path)): (Path(pred_path), Path(ref_path))}, [], []
    common = sorted(set(preds) & set(refs))
    if not common:
        raise InputError(
            f"no case ids in common between predictions {pred_path} ({_examples(preds)}) and references "
            f"{ref_path} ({_examples(refs)}); name each prediction like its reference"
        )
    pairs = {cid: (preds[cid], refs[cid]) for cid in common}
    return pairs, sorted(set(preds) - set(refs)), sorted(set(refs) - set(preds))


def _examples(cases: dict) -> str:
    names = sorted(cases)[:3]
    return ", ".join(names) + (", ..." if len(cases) > 3 else "")


def dataset_info(ref_path: Path) -> tuple[str | None, dict[int, str]]:
    """(dataset name, {label: name}) from an MSD-style dataset.json beside or above the references."""
    ref_path = Path(ref_path)
    folder = ref_path if ref_path.is_dir() else ref_path.parent
    for candidate in (folder / "dataset.json", folder.parent / "dataset.json"):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
                labels = data.get("labels", {})
                # MSD: {"1": "Anterior"}; nnU-Net v2: {"Anterior": 1}
                names = {}
                for key, value in labels.items():
                    if str(key).isdigit():
                        names[int(key)] = str(value)
                    elif isinstance(value, int):
                        names[value] = str(key)
                return data.get("name"), names
            except (ValueError, AttributeError):
                return None, {}
    return None, {}


def evaluate(
    pred_path: str | Path,
    ref_path: str | Path,
    labels: Sequence[int] | None = None,
    tolerance_mm: float = 1.0,
    ignore_index: int | None = 255,
    label_names: dict[int, str] | None = None,
    count_empty: bool = False,
    distance_penalty_mm: float | None = None,
) -> EvaluationReport:
    """Metrics for every case found in both PRED and REF (files or folders), read via medseg.io.

    Label maps are compared by their raw values (e.g. 0, 1, 2, 4) on the reference grid.
    labels: default every non-zero label present in any reference or prediction, plus every
    foreground label of `label_names`, so that a class missing from a case is scored (Dice 0 or 1
    by the empty conventions) rather than skipped.
    label_names: {value: name} of a bundle or plan; default those of a dataset.json beside REF.
    count_empty: count labels absent from both prediction and reference (Dice 1, HD95 0) in the
        means; default they are left out, as in nnU-Net.
    distance_penalty_mm: HD95/ASSD of a missed or false structure; default the case's image
        diagonal in mm (BraTS: 374 mm for its 240 x 240 x 155 1 mm grid).
    """
    from medseg.io import read_volume

    pairs, extra_preds, missing_preds = match_cases(Path(pred_path), Path(ref_path))
    if missing_preds:
        log.warning("%d reference case(s) have no prediction and are not scored: %s", len(missing_preds), ", ".join(missing_preds))
    if extra_preds:
        log.warning("%d prediction(s) have no reference and are not scored: %s", len(extra_preds), ", ".join(extra_preds))
    volumes = {}
    if labels is None:
        found: set[int] = set()
        for cid, (pred_file, ref_file) in pairs.items():
            pred, ref = read_volume(pred_file), read_volume(ref_file)
            found |= {int(v) for v in np.union1d(np.unique(pred.array), np.unique(ref.array))}
            if len(pairs) <= 50:  # keep small sets in memory rather than reading twice
                volumes[cid] = (pred, ref)
        found |= set(label_names or {})
        labels = sorted(v for v in found if v != 0 and v != ignore_index)
    rows = []
    for cid, (pred_file, ref_file) in pairs.items():
        pred, ref = volumes.pop(cid, None) or (read_volume(pred_file), read_volume(ref_file))
        try:
            case_rows = case_metrics(pred, ref, labels, tolerance_mm, ignore_index, distance_penalty_mm)
        except InputError as exc:
            raise type(exc)(f"case {cid} ({pred_file.name}): {exc}") from None
        except Exception as exc:
            from medseg.errors import GeometryError

            if isinstance(exc, GeometryError):
                raise GeometryError(f"case {cid} ({pred_file} vs {ref_file}): {exc}") from None
            raise
        rows.extend({"case_id": cid, **row} for row in case_rows)
    name, names_found = dataset_info(Path(ref_path))
    label_names = {int(k): str(v) for k, v in label_names.items()} if label_names else names_found
    return EvaluationReport(
        rows=rows,
        summary=summary_of(rows, count_empty),
        tolerance_mm=tolerance_mm,
        pairs=pairs,
        unmatched_predictions=extra_preds,
        unmatched_references=missing_preds,
        label_names=label_names,
        dataset_name=name,
        count_empty=count_empty,
        distance_penalty_mm=distance_penalty_mm,
    )


def summary_of(rows: list[dict], count_empty: bool = False) -> dict:
    """`summarise` of the rows, or an empty summary when there are none."""
    return summarise(rows, count_empty=count_empty) if rows else {"per_class": {}, "mean": {}, "miou": float("nan")}


# --- outputs ------------------------------------------------------------------------------------


def write_csv(report: EvaluationReport, path: str | Path) -> Path:
    """One row per case and label, columns CSV_COLUMNS (distances in mm, volumes in ml, NaN as 'nan')."""
    path = Path(path)
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for row in report.rows:
                writer.writerow([_csv_value(row[c]) for c in CSV_COLUMNS])
    return path


def _csv_value(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def summary_dict(report: EvaluationReport) -> dict:
    """The JSON summary: settings, matching outcome, per-class mean/std/median, class means, mIoU."""
    return _json_safe(
        {
            "dataset": report.dataset_name,
            "tolerance_mm": report.tolerance_mm,
            "distance_penalty_mm": report.distance_penalty_mm if report.distance_penalty_mm is not None else "image diagonal",
            "count_empty": report.count_empty,
            "num_cases": len(report.pairs),
            "labels": {str(k): report.label_names.get(k, str(k)) for k in report.summary["per_class"]},
            "unmatched_predictions": report.unmatched_predictions,
            "unmatched_references": report.unmatched_references,
            "per_class": {str(k): v for k, v in report.summary["per_class"].items()},
            "mean": report.summary["mean"],
            "miou": report.summary["miou"],
        }
    )


def write_json(report: EvaluationReport, path: str | Path) -> Path:
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(summary_dict(report), indent=2) + "\n")
    return path


def _json_safe(value):
    """NaN/inf -> None so the file is valid JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_report(report: EvaluationReport, metrics: Iterable[str] = ("dice", "iou", "hd95", "assd", "nsd", "boundary_f1")) -> str:
    """A plain-text table: one line per class with mean +- std of each metric, then the class mean."""
    metrics = list(metrics)
    header = f"{'label':<16}" + "".join(f"{m:>18}" for m in metrics)
    lines = [header, "-" * len(header)]
    for label, stats in report.summary["per_class"].items():
        name = f"{label} {report.label_names.get(label, '')}".strip()[:15]
        cells = "".join(f"{_pm(stats[m]['mean'], stats[m]['std']):>18}" for m in metrics)
        lines.append(f"{name:<16}{cells}")
    means = report.summary["mean"]
    lines.append(f"{'mean':<16}" + "".join(f"{_fmt(means.get(m, float('nan'))):>18}" for m in metrics))
    lines.append(f"mIoU {_fmt(report.summary['miou'])} over {len(report.pairs)} case(s), NSD/boundary F1 at {report.tolerance_mm:g} mm")
    penalty = "the image diagonal" if report.distance_penalty_mm is None else f"{report.distance_penalty_mm:g} mm"
    lines.append(f"a missed or false structure scores HD95/ASSD = {penalty}")
    empty = sum(1 for r in report.rows if r.get("both_empty", 0))
    if empty:
        lines.append(f"{empty} label(s) absent from both prediction and reference "
                     + ("counted in the means (Dice 1, HD95 0)" if report.count_empty else "left out of the means (--count-empty counts them)"))
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.4f}"


def _pm(mean: float, std: float) -> str:
    return "nan" if math.isnan(mean) else f"{mean:.4f} +- {std:.4f}"


def plot_boxplots(report: EvaluationReport, out_dir: str | Path, metrics: Sequence[str] = ("dice", "hd95", "nsd")) -> list[Path]:
    """One PNG per class: box plots of `metrics` over cases (NaN left out). Returns the paths."""
    matplotlib = require("matplotlib")  # the `plots` extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for label in report.summary["per_class"]:
        rows = [r for r in report.scored_rows() if r["label"] == label]
        fig, axes = plt.subplots(1, len(metrics), figsize=(3 * len(metrics), 3.5))
        for ax, metric in zip(np.atleast_1d(axes), metrics):
            values = [r[metric] for r in rows if not math.isnan(r[metric])]
            ax.boxplot(values if values else [[]], showmeans=True)
            ax.set_title(metric + (" (mm)" if metric in ("hd95", "assd") else ""))
            ax.set_xticks([])
        name = report.label_names.get(label, "")
        fig.suptitle(f"label {label} {name} ({len(rows)} cases)".strip())
        fig.tight_layout()
        path = out_dir / f"boxplot_label_{label}.png"
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
        plt.close(fig)
        paths.append(path)
    return paths


def worst_cases(report: EvaluationReport, n: int = 5) -> list[str]:
    """The `n` case ids with the lowest mean Dice over labels."""
    scores = report.case_scores()
    return sorted(scores, key=lambda c: (scores[c], c))[:n]


def plot_overlays(report: EvaluationReport, out_dir: str | Path, images: str | Path | None = None, n: int = 5) -> list[Path]:
    """PNGs of the `n` worst cases, drawn by `medseg.plotting.overlay_figure`: one axial slice, the one
    where the reference covers the most voxels; one colour per label (legend), prediction filled,
    reference dashed.
    images: optional folder (or file) of scans named like the cases (`ID.nii.gz` or `ID_0000.nii.gz`)
    to draw under the contours; scans on another grid are left out with a warning.
    """
    from medseg.io import read_volume
    from medseg.plotting import overlay_figure, save_figure  # the `plots` extra

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scans = _find_images(Path(images)) if images else {}
    scores = report.case_scores()
    paths = []
    for rank, cid in enumerate(worst_cases(report, n), start=1):
        pred_file, ref_file = report.pairs[cid]
        pred, ref = read_volume(pred_file), read_volume(ref_file)
        background = None
        if cid in scans:
            image = read_volume(scans[cid])
            if image.same_geometry(ref):
                background = image
            else:
                log.warning("overlay of case %s: the scan is on another grid than the reference; drawing without it", cid)
        names = {v: report.label_names.get(v, f"label {v}") for v in sorted({r["label"] for r in report.rows})}
        fig, _ = overlay_figure(cid, names, image=background, pred=pred, ref=ref, note=f"mean Dice {scores[cid]:.3f}")
        path = out_dir / f"worst_{rank}_{cid}.png"
        save_figure(fig, path)
        paths.append(path)
    return paths


def _find_images(path: Path) -> dict[str, Path]:
    cases = list_case_files(path, "image")
    found = dict(cases)
    for cid, file in cases.items():
        if cid.endswith("_0000"):  # nnU-Net/MSD channel suffix
            found.setdefault(cid[: -len("_0000")], file)
    return found
