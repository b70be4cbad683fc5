"""Quality benchmark: two bundles of one plan (a 2D and a 3D one by default), alone and ensembled,
on fold 0's validation.

Scores each bundle alone and `medseg.Predictor([A, B])` (the mean of their softmax probabilities,
each configuration weighing the same, as nnU-Net's `nnUNetv2_ensemble`) with the training loop's own
measure: the Dice per foreground class on each preprocessed validation case, classes absent from
both prediction and label left out, the mean of the class means (`medseg.training.validation`).
Same validation cases, same sliding window (overlap 0.5), same precision for every row, so the
ensemble's gain is read against its members in one script. Bundles come from
benchmarks/run_issue22_ablations.sh's `ens` slot (half the budget each) or any two trainings of
one work folder (two 3D runs of different seeds, say). Rows are named by each bundle's model folder;
`--tta` adds the same three rows with mirroring TTA (`Predictor(tta=True)`).

Usage: .venv/bin/python benchmarks/bench_ensemble_2d3d.py WORK [--fold 0] [--precision auto] [--tta]
           [--bundles WORK/models/unet2d_cpu/fold_0 WORK/models/unet3d_cpu/fold_0]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch


def score(predictor, workdir: Path, case_ids: list[str]) -> tuple[dict[str, float], float]:
    """(class means as `validate` gives them, seconds) of one predictor on the cached cases."""
    from medseg.metrics import dice_per_class
    from medseg.preprocess.cache import load_case
    from medseg.training.validation import class_means

    labels = predictor.labels
    names = [labels[v] for v in sorted(labels)]
    fg = list(range(1, len(names)))
    per_class: dict[int, list[float]] = {k: [] for k in fg}
    t0 = time.perf_counter()
    for case_id in case_ids:
        case = load_case(workdir, case_id)
        probs = predictor.logits_to_probabilities(torch.from_numpy(np.array(case.image, dtype=np.float32)))
        pred = predictor.head.decode(probs).cpu().numpy()
        for k, d in dice_per_class(pred, np.asarray(case.label), fg, empty=math.nan).items():
            if not math.isnan(d):
                per_class[k].append(d)
    seconds = time.perf_counter() - t0
    return class_means({names[k]: (float(np.sum(v)), len(v)) for k, v in per_class.items()}), seconds


def main() -> None:
    from medseg.data.splits import fold_cases, load_or_create_splits
    from medseg.inference.predictor import Predictor
    from medseg.preprocess.cache import list_cached_cases

    ap = argparse.ArgumentParser()
    ap.add_argument("work", type=Path)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--bundles", type=Path, nargs=2, default=None, metavar=("BUNDLE_A", "BUNDLE_B"))
    ap.add_argument("--tta", action="store_true", help="also score each row with mirroring TTA")
    args = ap.parse_args()
    bundles = args.bundles or [args.work / "models" / name / f"fold_{args.fold}" for name in ("unet2d_cpu", "unet3d_cpu")]
    case_ids = list_cached_cases(args.work)
    _, val = fold_cases(load_or_create_splits(args.work, case_ids), args.fold, case_ids)
    print(f"{len(val)} validation cases of fold {args.fold}; torch threads {torch.get_num_threads()}")
    a, b = (path.parent.name for path in bundles)  # the model folder: unet2d_cpu, unet3d_cpu, ...
    rows = [(a, [bundles[0]]), (b, [bundles[1]]), (f"{a} + {b}", bundles)]
    for tta in (False, True) if args.tta else (False,):
        for name, paths in rows:
            predictor = Predictor(paths, device="cpu", precision=args.precision, tta=tta)
            means, seconds = score(predictor, args.work, val)
            classes = ", ".join(f"{k} {v:.4f}" for k, v in means.items() if k != "mean")
            label = f"{name}, TTA" if tta else name
            print(f"RESULT {label} mean {means['mean']:.4f} ({classes}); {seconds:.0f} s for {len(val)} cases", flush=True)


if __name__ == "__main__":
    main()
