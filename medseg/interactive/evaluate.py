"""`medseg evaluate-interactive`: the simulated user on held-out cases of a promptable bundle.

Each foreground label of each validation case is one object. Click 1 is at the object's interior
(the maximum of its distance transform); click n + 1 at the interior of the largest error region of
the prediction after click n (positive in a miss, negative in a false positive). All on the scan's
original grid, given to `InteractiveSession` as voxel indices. Reported: Dice after each click,
Dice AUC (the mean over clicks 1..N), NoC@85 / NoC@90 (clicks to reach that Dice; N + 1 when never
reached, as in the interactive-segmentation literature), and seconds per click.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import ConfigError
from medseg.interactive.simulate import corrective_click, dice, interior_point


@dataclass
class InteractiveReport:
    clicks: int
    rows: list[dict] = field(default_factory=list)  # case_id, label, dice [per click], seconds [per click]

    def dice_curve(self) -> list[float]:
        return [float(np.mean([r["dice"][k] for r in self.rows])) for k in range(self.clicks)] if self.rows else []

    def summary(self) -> dict:
        if not self.rows:
            return {"objects": 0}
        curves = np.array([r["dice"] for r in self.rows])
        seconds = np.concatenate([r["seconds"] for r in self.rows])

        def noc(threshold: float) -> float:
            reached = [int(np.argmax(c >= threshold)) + 1 if np.any(c >= threshold) else self.clicks + 1 for c in curves]
            return float(np.mean(reached))

        seeded = [r["dice_seed"] for r in self.rows if "dice_seed" in r]
        return {"objects": len(self.rows), **({"dice_seed": float(np.mean(seeded))} if seeded else {}),
                "dice_per_click": self.dice_curve(), "dice_auc": float(curves.mean()),
                "noc85": noc(0.85), "noc90": noc(0.90), "median_seconds_per_click": float(np.median(seconds)),
                "per_label": {str(label): [float(np.mean([r["dice"][k] for r in self.rows if r["label"] == label]))
                                            for k in range(self.clicks)]
                              for label in sorted({r["label"] for r in self.rows})}}


def evaluate_interactive(predictor, workdir: str | Path, fold: int = 0, clicks: int = 5, labels: list[int] | None = None,
                         seed: int = 0, max_cases: int | None = None, progress=None, refine=None) -> InteractiveReport:
    """Run the simulated user on the validation cases of `fold` of WORKDIR (its resolved manifest's
    images and labels, on their original grids). labels: the label values to click on (default all).
    refine: a semantic `Predictor` whose mask of each label seeds its object's session; click 1 is
    then a correction of that mask, and each row also holds the seed's Dice ("dice_seed")."""
    from medseg.data.manifest import load_manifest
    from medseg.data.splits import fold_cases, load_or_create_splits
    from medseg.interactive.session import InteractiveSession
    from medseg.io import read_volume

    workdir = Path(workdir)
    if clicks < 1:
        raise ConfigError(f"--clicks {clicks}: expected at least 1 click")
    manifest = load_manifest(workdir / "manifest.json")
    by_id = {c.case_id: c for c in manifest.cases if c.label}
    splits = load_or_create_splits(workdir, sorted(by_id))
    _, val_ids = fold_cases(splits, fold, sorted(by_id))
    rng = np.random.default_rng(seed)
    report = InteractiveReport(clicks)
    for n, case_id in enumerate(val_ids[:max_cases] if max_cases else val_ids, start=1):
        case = by_id[case_id]
        volumes = [read_volume(p) for p in case.images]
        reference = np.asarray(read_volume(case.label).array)
        session = InteractiveSession(predictor, volumes) if refine is None else None
        automatic = np.asarray(refine.segment(volumes).labels.array) if refine is not None else None
        for value in sorted(int(v) for v in np.unique(reference) if v not in (0, 255)):
            if labels is not None and value not in labels:
                continue
            target = reference == value
            row = {"case_id": case_id, "label": value}
            if automatic is None:
                session.reset()
                click = {"click": interior_point(target, rng), "positive": True}
            else:  # the automatic mask of this label is the object's first state; clicks correct it
                first = automatic == value
                session = InteractiveSession(predictor, volumes, seed=volumes[0].with_array(first.astype(np.uint8)))
                row["dice_seed"] = dice(first, target)
                click = corrective_click(first, target, rng) or {"click": interior_point(target, rng), "positive": True}
            curve, seconds = [], []
            for _ in range(clicks):
                start = time.perf_counter()
                session.add_point(click["click"], positive=click["positive"], space="voxel")
                predicted = np.asarray(session.mask().array) > 0
                seconds.append(time.perf_counter() - start)
                curve.append(dice(predicted, target))
                click = corrective_click(predicted, target, rng) or click
            report.rows.append({**row, "dice": curve, "seconds": seconds})
        if progress:
            progress(f"[{n}/{len(val_ids)}] {case_id}: Dice after click 1 / {clicks}: "
                     + ", ".join(f"{r['dice'][0]:.3f}/{r['dice'][-1]:.3f}" for r in report.rows if r["case_id"] == case_id))
    return report


def write_interactive_report(report: InteractiveReport, path: str | Path) -> Path:
    from medseg.io.atomic import atomic_output

    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps({"summary": report.summary(), "rows": report.rows}, indent=1) + "\n")
    return path


def plot_dice_curve(report: InteractiveReport, path: str | Path) -> Path:
    """Mean Dice after each click, overall and per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = report.summary()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = np.arange(1, report.clicks + 1)
    ax.plot(x, summary["dice_per_click"], marker="o", label="all objects", linewidth=2)
    for label, curve in summary["per_label"].items():
        ax.plot(x, curve, marker=".", linestyle="--", label=f"label {label}")
    ax.set(xlabel="clicks", ylabel="mean Dice", ylim=(0, 1), xticks=x, title="Dice per click")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def run_evaluate_interactive(model, workdir, *, fold: int = 0, clicks: int = 5, labels: str | None = None,
                             output="interactive.json", device: str = "auto", seed: int = 0, refine=None,
                             runtime: str = "auto", echo=lambda *a, **k: None):
    """`medseg evaluate-interactive`: evaluate, write the JSON and the curve plot, print the summary, log to MLflow.
    refine: a semantic bundle (path, run id or name) whose masks seed the sessions (clicks then correct them).
    runtime: for an export folder of the promptable model (`medseg export`), as `medseg infer --runtime`."""
    from medseg import tracking
    from medseg.api import load_model
    from medseg.commands import parse_labels
    from medseg.extras import available

    workdir, output = Path(workdir), Path(output)
    predictor = load_model(model, workdir=workdir, device=device, precision="fp32", runtime=runtime)
    if not predictor.bundle.plan.prompt_channels:
        raise ConfigError(f"{predictor.bundle.path}: not a promptable model; train one with configs/interactive3d.yaml")
    automatic = None
    if refine is not None:
        automatic = load_model(refine, workdir=workdir, device=device, precision="fp32")
        if automatic.bundle.plan.prompt_channels:
            raise ConfigError(f"{automatic.bundle.path}: --refine takes a semantic bundle (its masks seed the clicks), "
                              "not a promptable one")
    report = evaluate_interactive(predictor, workdir, fold=fold, clicks=clicks, labels=parse_labels(labels), seed=seed,
                                  progress=echo, refine=automatic)
    summary = report.summary()
    written = write_interactive_report(report, output)
    plot = output.with_name(output.stem + "_dice_per_click.png")
    if available("matplotlib"):
        plot_dice_curve(report, plot)
    if "dice_seed" in summary:
        echo(f"Dice of the automatic masks before any click: {summary['dice_seed']:.3f}")
    echo(f"{summary['objects']} objects; Dice per click: " + ", ".join(f"{d:.3f}" for d in summary.get("dice_per_click", [])))
    if summary["objects"]:
        echo(f"Dice AUC {summary['dice_auc']:.3f}, NoC@85 {summary['noc85']:.2f}, NoC@90 {summary['noc90']:.2f}, "
             f"median {summary['median_seconds_per_click']:.2f} s per click")
    echo(f"wrote {written}")
    if tracking.has_store(workdir):
        with tracking.open_tracker(workdir, predictor.bundle.plan.dataset_name, run_name="evaluate-interactive",
                                   tags={"medseg.command": "evaluate-interactive"}) as tracker:
            tracker.log_params({"interactive.fold": fold, "interactive.clicks": clicks, "interactive.seed": seed,
                                **({"interactive.refine": str(refine)} if refine is not None else {})})
            tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)})
            for k, value in enumerate(summary.get("dice_per_click", []), start=1):
                tracker.log_metrics({"dice_after_click": value}, step=k)
            tracker.log_artifact(written, "evaluation")
            if plot.is_file():
                tracker.log_artifact(plot, "evaluation")
    return report
