"""Quality benchmark: 3D U-Net on the 208 MSD Hippocampus cases, fold 0, a fixed CPU time budget.

Preprocesses ../shared/data/hippocampus into a work folder (once), trains a preset (default
configs/unet3d_cpu.yaml: nnU-Net's 3D U-Net with AdamW + cosine at batch 2) on fold 0 with
`medseg train` for at most --minutes of training (epochs sized from a measured step time so the
learning-rate schedule ends within the budget), then reports the validation Dice per class (anterior, posterior) and mean
over the fold's validation cases, as computed by the training loop's final sliding-window
validation. Target (issue 6): mean Dice >= 0.87 within 60 minutes on 2 CPU cores.

Usage: .venv/bin/python benchmarks/bench_train_hippocampus.py [--minutes 60] [--precision auto]
           [--config configs/unet3d_cpu.yaml] [--iterations-per-epoch 250] [--seconds-per-iteration 0.9]
           [--work /tmp/hippo]
       .venv/bin/python benchmarks/bench_train_hippocampus.py --time-budget 60 [--iterations-per-epoch 100]
           (`medseg train --time-budget`: the epochs are sized and re-sized from the measured speed, so
           the whole run, final validation included, ends within the budget; the RESULT line gives the
           minutes planned and used, the plans and re-plans, and the iterations run)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hippocampus"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "unet3d_cpu.yaml")
    ap.add_argument("--iterations-per-epoch", type=int, default=250)
    ap.add_argument("--seconds-per-iteration", type=float, default=0.9,
                    help="measured step time (0.8-0.9 s for unet3d_cpu in bf16 on 2 quiet cores), used to size the epochs "
                         "so the LR schedule ends within the budget")
    ap.add_argument("--epochs", type=int, default=None, help="fixed epochs instead of sizing from the budget (for bf16 vs fp32 at equal iterations)")
    ap.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                    help="train with `medseg train --time-budget MINUTES` (replaces --minutes/--epochs sizing)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/medseg_bench/hippo"))
    ap.add_argument("--seed", type=int, default=12345)
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"hippocampus data not found at {DATA}")
    medseg = [sys.executable, "-m", "medseg"]
    if not (args.work / "plan.json").is_file():
        subprocess.run(medseg + ["preprocess", str(DATA), "--out", str(args.work)], check=True)
    epochs = args.epochs or max(1, int(args.minutes * 60 / args.seconds_per_iteration / args.iterations_per_epoch))
    cmd = medseg + ["train", str(args.work), "--config", str(args.config), "--fold", "0",
                    "--iterations-per-epoch", str(args.iterations_per_epoch), "--precision", args.precision, "--seed", str(args.seed)]
    if args.time_budget is not None:
        if args.epochs is not None:
            sys.exit("--time-budget sizes the epochs itself; drop --epochs")
        cmd += ["--time-budget", str(args.time_budget)]
    else:
        cmd += ["--epochs", str(epochs), "--max-minutes", str(args.minutes)]
    print(" ".join(cmd), flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = (time.monotonic() - t0) / 60
    print(proc.stdout[-4000:])
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    epochs_done = len(re.findall(r"^epoch \d+/", proc.stdout, re.M))
    dice = re.search(r"^validation Dice: (.*)$", proc.stdout, re.M)
    if args.time_budget is not None:
        plans = re.findall(r"^time budget (?:plan|re-plan \d+) after epoch .*$", proc.stdout, re.M)
        used = re.search(r"^time budget: used ([0-9.]+) of ([0-9.]+) min; (\d+) epochs x (\d+ it.*?) = (\d+) iterations",
                         proc.stdout, re.M)
        print("\n".join(plans))
        print(f"RESULT precision={args.precision} time budget {args.time_budget} min: used {used.group(1) if used else '?'} min "
              f"in training, wall {wall:.2f} min for the command; {epochs_done} epochs x {used.group(4) if used else '?'} "
              f"= {used.group(5) if used else '?'} iterations, {max(0, len(plans) - 1)} re-plan(s); "
              f"{dice.group(1) if dice else 'no validation'}")
        return
    print(f"RESULT precision={args.precision} epochs={epochs_done}/{epochs} x {args.iterations_per_epoch} it, "
          f"wall {wall:.1f} min (incl. validation); {dice.group(1) if dice else 'no validation'}")


if __name__ == "__main__":
    main()
