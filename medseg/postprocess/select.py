"""Post-processing chosen on validation predictions, as nnU-Net's `determine_postprocessing`.

1. All foreground together: keep only the largest connected component of the foreground (every
   class as one mask). Kept when the mean foreground Dice over the validation cases does not drop.
2. Then each class alone (on the output of 1 when it was kept): keep only that class's largest
   component. Kept for the classes whose mean Dice does not drop.

The choice is a list of `medseg.postprocess` steps, stored in the bundle's `postprocessing` and
applied by `medseg infer`. At the end of a fold's training, `select_for_fold` predicts its
validation cases with the best weights (saved as WORKDIR/models/<preset>/validation/fold_<k>/
<case>.npz) and chooses on them; after `--fold all`, `select_pooled` chooses once on the pooled
validation of every fold and writes that choice to each fold's bundle (and a later fold_none
takes it too: `inherit_pooled`). Dice is computed on the preprocessed grid (the cache), where
the references are; label maps there hold channel indices, which the stored steps translate to
label values. Only the first bundle's steps run in an ensemble (`medseg.inference.Predictor`), so
folds trained one by one (without `--fold all`) each keep their own choice.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from medseg.postprocess import keep_largest_component

log = logging.getLogger(__name__)

VALIDATION_DIR = "validation"
REPORT_JSON = "postprocessing.json"
POOLED_JSON = "postprocessing_pooled.json"
_TOLERANCE = 1e-9  # "does not lower": equal up to float rounding counts as not lower

Cases = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]


def _mean_dice(cases: Cases, classes: list[int], transform=None) -> tuple[dict[int, float], dict[int, float], int]:
    """Mean Dice per class over cases, of the prediction and of transform(prediction)."""
    from medseg.metrics import dice_per_class

    before = {c: [] for c in classes}
    after = {c: [] for c in classes}
    n = 0
    for pred, ref in cases():
        n += 1
        d0 = dice_per_class(pred, ref, classes)
        d1 = dice_per_class(transform(pred), ref, classes) if transform is not None else d0
        for c in classes:
            before[c].append(d0[c])
            after[c].append(d1[c])
    mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    return {c: mean(v) for c, v in before.items()}, {c: mean(v) for c, v in after.items()}, n


def determine_postprocessing(cases: Cases, classes: list[int], spacing=(1.0, 1.0, 1.0)) -> tuple[list[dict], dict]:
    """Choose keep-largest-component steps on (prediction, reference) pairs.

    cases: called once per pass (twice), yields (X, Y, Z) integer label maps on the same grid.
    classes: the foreground values to score. Returns (steps in the classes' own values, report
    with the mean Dice before/after of every candidate step and whether it was kept).
    """
    classes = [int(c) for c in classes if int(c) != 0]
    fg_step = lambda p: keep_largest_component(p, spacing, classes=classes, together=True)  # noqa: E731
    before, after, n = _mean_dice(cases, classes, fg_step)
    report: dict = {"num_cases": n, "classes": classes}
    if n == 0 or not classes:
        report["steps"] = []
        return [], report
    mean_before, mean_after = float(np.mean(list(before.values()))), float(np.mean(list(after.values())))
    keep_fg = mean_after >= mean_before - _TOLERANCE
    report["all_foreground"] = {"dice_before": before, "dice_after": after, "mean_before": mean_before,
                                "mean_after": mean_after, "kept": keep_fg}
    steps: list[dict] = []
    if keep_fg:
        steps.append({"name": "keep_largest_component", "params": {"classes": classes, "together": True}})

    def base_cases():
        for pred, ref in cases():
            yield (fg_step(pred) if keep_fg else pred), ref

    # each class's step only touches that class's voxels: one pass scores them all
    per_class: dict = {}
    from medseg.metrics import dice_per_class

    scores = {c: ([], []) for c in classes}
    for pred, ref in base_cases():
        d0 = dice_per_class(pred, ref, classes)
        for c in classes:
            d1 = dice_per_class(keep_largest_component(pred, spacing, classes=[c]), ref, [c])[c]
            scores[c][0].append(d0[c])
            scores[c][1].append(d1)
    kept = []
    for c in classes:
        b, a = float(np.mean(scores[c][0])), float(np.mean(scores[c][1]))
        per_class[c] = {"dice_before": b, "dice_after": a, "kept": a >= b - _TOLERANCE}
        if per_class[c]["kept"]:
            kept.append(c)
    report["per_class"] = per_class
    if kept:
        steps.append({"name": "keep_largest_component", "params": {"classes": kept}})
    report["steps"] = steps
    return steps, report


def to_label_values(steps: list[dict], report: dict, label_values: list[int]) -> tuple[list[dict], dict]:
    """Steps and report chosen on channel indices -> the same in label values (channel k = label_values[k])."""
    value = lambda c: int(label_values[int(c)])  # noqa: E731
    out = []
    for step in steps:
        params = dict(step["params"])
        params["classes"] = [value(c) for c in params["classes"]]
        out.append({"name": step["name"], "params": params})
    named = json.loads(json.dumps(report, default=float))
    named["classes"] = [value(c) for c in report.get("classes", [])]
    for key in ("dice_before", "dice_after"):
        if "all_foreground" in named:
            named["all_foreground"][key] = {str(value(c)): v for c, v in report["all_foreground"][key].items()}
    if "per_class" in report:
        named["per_class"] = {str(value(c)): v for c, v in report["per_class"].items()}
    named["steps"] = out
    return out, named


def describe(report: dict, names: dict[int, str]) -> str:
    """One line: the Dice before -> after of each candidate step and what was kept."""
    parts = []
    if "all_foreground" in report:
        fg = report["all_foreground"]
        parts.append(f"all foreground {fg['mean_before']:.4f} -> {fg['mean_after']:.4f} ({'kept' if fg['kept'] else 'not kept'})")
    for c, r in (report.get("per_class") or {}).items():
        parts.append(f"{names.get(int(c), c)} {r['dice_before']:.4f} -> {r['dice_after']:.4f} ({'kept' if r['kept'] else 'not kept'})")
    if not parts:
        return "no validation cases: no post-processing chosen"
    return f"keep-largest-component on {report['num_cases']} validation case(s): " + "; ".join(parts)


def validation_dir(bundle_dir: Path) -> Path:
    """WORKDIR/models/<preset>/validation/fold_<k>: beside the bundles, not inside one (not shipped)."""
    return Path(bundle_dir).parent / VALIDATION_DIR / Path(bundle_dir).name


def set_bundle_postprocessing(bundle_dir: Path, steps: list[dict]) -> None:
    """Rewrite bundle.json's `postprocessing` (atomically), leaving every other field as it is."""
    from medseg.bundle import BUNDLE_JSON
    from medseg.io.atomic import atomic_output

    path = Path(bundle_dir) / BUNDLE_JSON
    meta = json.loads(path.read_text())
    meta["postprocessing"] = steps
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))


def _stored_cases(workdir: Path, folders: list[Path]) -> Cases:
    from medseg.preprocess.cache import load_case

    def cases():
        for folder in folders:
            for f in sorted(folder.glob("*.npz")):
                with np.load(f, allow_pickle=False) as z:
                    pred = z["pred"]
                yield pred, np.asarray(load_case(workdir, f.stem).label)

    return cases


def _write_report(path: Path, report: dict) -> Path:
    from medseg.io.atomic import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    return path


def _log(tracker, report_path: Path, report: dict, names: dict[int, str], bundle_dir: Path | None = None, prefix: str = "pp") -> None:
    """The report as an artifact, the steps as a tag and the Dice before/after as metrics
    (`{prefix}_dice_before_<class>`, `{prefix}_dice_after_<class>`)."""
    import re

    if tracker is None:
        return
    tracker.log_artifact(report_path, "postprocessing")
    tracker.set_tags({f"{prefix}.postprocessing": json.dumps(report["steps"])[:5000]})
    metrics = {}
    for c, r in (report.get("per_class") or {}).items():
        name = re.sub(r"[^\w.\-/ ]", "_", names.get(int(c), str(c)))
        metrics[f"{prefix}_dice_before_{name}"] = r["dice_before"]
        metrics[f"{prefix}_dice_after_{name}"] = r["dice_after"]
    if "all_foreground" in report:
        metrics[f"{prefix}_dice_before_foreground_mean"] = report["all_foreground"]["mean_before"]
        metrics[f"{prefix}_dice_after_foreground_mean"] = report["all_foreground"]["mean_after"]
    tracker.log_metrics(metrics)
    if bundle_dir is not None:  # the bundle artifact logged earlier must carry the new choice too
        tracker.log_artifact(Path(bundle_dir) / "bundle.json", "bundle")


def inherit_pooled(tracker, bundle_dir: Path, echo=lambda s: None) -> list[dict]:
    """A model without validation cases (fold_none) takes the steps chosen on the pooled validation of
    its preset's cross-validation folds, when `--fold all` chose them; else none. Returns the steps."""
    report_path = Path(bundle_dir).parent / VALIDATION_DIR / POOLED_JSON
    if not report_path.is_file():
        return []
    steps = json.loads(report_path.read_text())["steps"]
    set_bundle_postprocessing(bundle_dir, steps)
    if tracker is not None:
        tracker.log_artifact(report_path, "postprocessing")
        tracker.set_tags({"pp_pooled.postprocessing": json.dumps(steps)[:5000]})
    echo(f"post-processing: {steps or 'none'}, as chosen on the cross-validation folds ({report_path})")
    return steps


def select_for_fold(tracker, workdir, bundle_dir, val_ids, plan, config, precision, device, echo=lambda s: None) -> list[dict]:
    """Predict the fold's validation cases with the bundle's best weights, choose the steps, store
    them in bundle.json and the report beside the predictions; log both to `tracker`. Returns the steps.
    Without validation cases (fold_none): `inherit_pooled`."""
    from medseg.bundle import load_bundle
    from medseg.io.atomic import atomic_output
    from medseg.preprocess.cache import load_case
    from medseg.training.validation import predict_case

    workdir, bundle_dir = Path(workdir), Path(bundle_dir)
    if not val_ids:
        return inherit_pooled(tracker, bundle_dir, echo)
    folder = validation_dir(bundle_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.npz"):  # a previous run's cases (another split) must not be pooled
        old.unlink()
    network = load_bundle(bundle_dir).build_network("best", device=str(device))
    for case_id in val_ids:
        pred = predict_case(network, load_case(workdir, case_id).image, plan, config, precision, device)
        with atomic_output(folder / f"{case_id}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, pred=pred)
    del network
    return _choose_and_store(workdir, [folder], [bundle_dir], plan, folder / REPORT_JSON, tracker, echo)


def _choose_and_store(workdir, folders, bundle_dirs, plan, report_path, tracker, echo) -> list[dict]:
    label_values = sorted(int(k) for k in plan.labels)
    names = {int(k): v for k, v in plan.labels.items()}
    channels = list(range(1, len(label_values)))
    steps, report = determine_postprocessing(_stored_cases(workdir, folders), channels)
    steps, report = to_label_values(steps, report, label_values)
    report["folds"] = [Path(b).name for b in bundle_dirs]
    for b in bundle_dirs:
        set_bundle_postprocessing(b, steps)
    _write_report(report_path, report)
    _log(tracker, report_path, report, names, bundle_dirs[0] if len(bundle_dirs) == 1 else None)
    echo(f"post-processing: {describe(report, names)}")
    return steps


def select_pooled(workdir, preset_name: str, folds: list[int], echo=lambda s: None) -> list[dict] | None:
    """After `--fold all`: choose once on the pooled validation predictions of `folds` and write the
    choice to each fold's bundle (and its MLflow run). None when some fold has no stored predictions."""
    from medseg.bundle import load_bundle
    from medseg.preprocess.plan import Plan
    from medseg.tracking import open_tracker

    workdir = Path(workdir)
    root = workdir / "models" / preset_name
    bundle_dirs = [root / f"fold_{k}" for k in folds]
    folders = [validation_dir(b) for b in bundle_dirs]
    if not all(f.is_dir() and any(f.glob("*.npz")) for f in folders):
        return None
    plan = Plan.load(workdir / "plan.json")
    echo(f"choosing post-processing on the pooled validation of folds {', '.join(map(str, folds))}")
    steps = _choose_and_store(workdir, folders, bundle_dirs, plan, root / VALIDATION_DIR / POOLED_JSON, None, echo)
    report_path = root / VALIDATION_DIR / POOLED_JSON
    report = json.loads(report_path.read_text())
    names = {int(k): v for k, v in plan.labels.items()}
    for b in bundle_dirs:
        run_id = load_bundle(b).mlflow_run_id
        if not run_id:
            continue
        try:
            tracker = open_tracker(workdir, plan.dataset_name, run_id=run_id)
        except Exception:  # the run lives in another store: the bundle still holds the choice
            continue
        with tracker:
            _log(tracker, report_path, report, names, b, prefix="pp_pooled")
    return steps
