"""Promptable segmentation benchmark (issue 17) on the 208 MSD Hippocampus cases, fold 0.

1. Trains configs/interactive3d.yaml on fold 0's training cases with `medseg train --time-budget`
   (anterior and posterior are each an object; `--hold-out 2` trains without posterior instead).
2. `medseg evaluate-interactive` on the fold's validation cases: Dice after each of --clicks clicks
   (the first at the object's interior, then corrections at the largest error), NoC@85/90, seconds
   per click; every label is clicked, also a held-out one.
3. With --automatic BUNDLE (a semantic bundle of the same workdir, e.g. bench_train_hippocampus.py's
   60-minute unet3d_cpu): that bundle's own Dice, and the same masks refined by 3 clicks
   (`evaluate-interactive --refine`).
Prints the figures against the issue's targets (mean Dice >= 0.85 after one click, >= 0.90 after
five, median <= 0.5 s per click).

Usage: .venv/bin/python benchmarks/bench_interactive.py --work /tmp/medseg_bench/hippo --time-budget 60
           [--automatic /tmp/medseg_bench/hippo/models/unet3d_cpu/fold_0] [--hold-out 2] [--skip-training]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hippocampus"


def medseg(*args: str) -> str:
    cmd = [sys.executable, "-m", "medseg", *map(str, args)]
    print(" ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/medseg_bench/hippo"))
    ap.add_argument("--time-budget", type=float, default=60.0, metavar="MINUTES")
    ap.add_argument("--iterations-per-epoch", type=int, default=50)
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--hold-out", type=int, action="append", default=[], metavar="LABEL",
                    help="a label value never prompted in training (the class-agnostic study); repeatable")
    ap.add_argument("--automatic", type=Path, default=None, help="a semantic bundle to compare with and to refine")
    ap.add_argument("--skip-training", action="store_true", help="evaluate the bundle a previous run trained")
    args = ap.parse_args()
    if not (args.work / "plan.json").is_file():
        medseg("preprocess", DATA, "--out", args.work)
    name = "interactive3d" + "".join(f"_without_{v}" for v in args.hold_out)
    config = args.work / f"{name}.yaml"
    text = (ROOT / "configs" / "interactive3d.yaml").read_text()
    if args.hold_out:
        text = text.replace("  exclude_labels: []", f"  exclude_labels: {args.hold_out}", 1)
        assert f"exclude_labels: {args.hold_out}" in text
    config.write_text(text)
    bundle = args.work / "models" / name / "fold_0"
    summary: dict = {"hold_out": args.hold_out}
    if not args.skip_training:
        t0 = time.monotonic()
        out = medseg("train", args.work, "--config", config, "--fold", "0", "--time-budget", f"{args.time_budget}m",
                     "--iterations-per-epoch", args.iterations_per_epoch, "--overwrite")
        used = re.search(r"^time budget: used ([0-9.]+) of ([0-9.]+) min; (\d+) epochs", out, re.M)
        epochs = len(re.findall(r"^epoch \d+/", out, re.M))
        summary["training"] = {"used_min": float(used.group(1)) if used else None, "wall_min": (time.monotonic() - t0) / 60,
                               "epochs": epochs, "iterations": epochs * args.iterations_per_epoch}
        print("\n".join(re.findall(r"^time budget.*$", out, re.M)))
        print(f"training: {summary['training']}", flush=True)
    report = args.work / f"{name}_clicks.json"
    print(medseg("evaluate-interactive", bundle, "--workdir", args.work, "--clicks", args.clicks, "-o", report,
                 "--device", "cpu")[-1500:])
    summary["interactive"] = json.loads(report.read_text())["summary"]
    if args.automatic is not None:
        refined = args.work / f"{name}_refine.json"
        print(medseg("evaluate-interactive", bundle, "--workdir", args.work, "--clicks", 3, "--refine", args.automatic,
                     "-o", refined, "--device", "cpu")[-1500:])
        summary["refined"] = json.loads(refined.read_text())["summary"]
    (args.work / f"{name}_summary.json").write_text(json.dumps(summary, indent=1))

    s = summary["interactive"]
    curve = s["dice_per_click"]
    print(f"\nRESULT {name}: {s['objects']} objects on fold 0's validation cases")
    print(f"  Dice per click: {', '.join(f'{d:.4f}' for d in curve)}; AUC {s['dice_auc']:.4f}; "
          f"NoC@85 {s['noc85']:.2f}, NoC@90 {s['noc90']:.2f}; median {s['median_seconds_per_click']:.3f} s per click")
    for label, per in s["per_label"].items():
        print(f"  label {label}: {', '.join(f'{d:.4f}' for d in per)}")
    print(f"  targets: 1 click {curve[0]:.4f} >= 0.85 {'met' if curve[0] >= 0.85 else 'NOT met'}; "
          + (f"5 clicks {curve[4]:.4f} >= 0.90 {'met' if curve[4] >= 0.90 else 'NOT met'}; " if len(curve) >= 5 else "")
          + f"median s/click {s['median_seconds_per_click']:.3f} <= 0.5 {'met' if s['median_seconds_per_click'] <= 0.5 else 'NOT met'}")
    if "refined" in summary:
        r = summary["refined"]
        print(f"  automatic bundle {args.automatic}: Dice {r['dice_seed']:.4f}; refined by clicks 1-3: "
              + ", ".join(f"{d:.4f}" for d in r["dice_per_click"]))
        for label, per in r["per_label"].items():
            print(f"    label {label}: {', '.join(f'{d:.4f}' for d in per)}")


if __name__ == "__main__":
    main()
