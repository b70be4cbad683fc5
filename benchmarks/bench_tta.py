"""Mirroring TTA in validation and inference: what it adds in Dice and costs in seconds per case
(issue 22, part 2). Same bundle, same fold-0 validation cases, on the preprocessed grid exactly as
training validation scores them (the predictor's `predict_on_grid` with the arguments
`medseg.training.validation.predict_case` passes, plus `tta`): plain against `tta=True` (the 8 mirrorings of a 3D case, nnU-Net's default),
interleaved per case so both share every slowdown. Also the bundle's last checkpoint against its
best (EMA-picked) one, plain.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_tta.py --work WORK --bundle WORK/models/unet3d_cpu/fold_0
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--cases", type=int, default=0, help="the first N validation cases (0: all)")
    args = ap.parse_args()

    from medseg.bundle import load_bundle
    from medseg.data.splits import fold_cases, load_or_create_splits
    from medseg.inference.predictor import predict_on_grid
    from medseg.metrics import dice_per_class
    from medseg.models import model_head
    from medseg.precision import resolve_precision
    from medseg.preprocess.cache import list_cached_cases, load_case

    bundle = load_bundle(args.bundle)
    plan, config = bundle.plan, bundle.config
    conf_name = config["model"]["configuration"]
    conf = plan.configurations[conf_name]
    head = model_head(bundle.model_name)
    precision = resolve_precision("auto", "cpu")
    nets = {"best": bundle.build_network("best"), "last": bundle.build_network("last")}
    cases = list_cached_cases(args.work)
    _, val_ids = fold_cases(load_or_create_splits(args.work, cases), args.fold, cases)
    val_ids = val_ids[: args.cases] if args.cases else val_ids
    fg = list(range(1, len(plan.labels)))
    names = [plan.labels[v] for v in sorted(plan.labels)]

    def run(net, image, tta):
        t = time.perf_counter()
        with torch.no_grad():
            out = predict_on_grid(net, image, conf, precision, head, num_classes=len(plan.labels), device=torch.device("cpu"),
                                  overlap=config.get("val_overlap", 0.5), batch_size=conf.batch_size, tta=tta)
        return head.decode(out).cpu().numpy(), time.perf_counter() - t

    rows = {"best, plain": ("best", False), "best, mirroring TTA": ("best", True), "last, plain": ("last", False)}
    dice = {r: {k: [] for k in fg} for r in rows}
    seconds = {r: [] for r in rows}
    print(f"{len(val_ids)} fold-{args.fold} validation cases, {precision.describe()}, {torch.get_num_threads()} threads", flush=True)
    for i, case_id in enumerate(val_ids):
        case = load_case(args.work, case_id)
        image = torch.from_numpy(np.array(case.image, dtype=np.float32))
        order = list(rows) if i % 2 == 0 else list(rows)[::-1]  # interleaved: both share every slowdown
        for r in order:
            which, tta = rows[r]
            pred, s = run(nets[which], image, tta)
            seconds[r].append(s)
            for k, d in dice_per_class(pred, np.asarray(case.label), fg, empty=math.nan).items():
                if not math.isnan(d):
                    dice[r][k].append(d)
        print(f"{case_id}: " + ", ".join(f"{r} {seconds[r][-1]:.2f} s" for r in rows), flush=True)
    base = float(np.median(seconds["best, plain"]))
    print(f"| checkpoint, inference | {' | '.join(names[k] for k in fg)} | mean Dice | s per case (median) | x plain |")
    print("|---|" + "---|" * (len(fg) + 3))
    for r in rows:
        per = [float(np.mean(dice[r][k])) for k in fg]
        med = float(np.median(seconds[r]))
        print(f"| {r} | {' | '.join(f'{d:.4f}' for d in per)} | {np.mean(per):.4f} | {med:.2f} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
