"""Training validation: whole preprocessed cases through the predictor's own network-grid routine.

`predict_case` is `medseg.inference.predictor.predict_on_grid` (the sliding window with the
predictor's accumulation-device safeguard, the model's output head to stitch, activate and decode)
on one cached case; `validate` scores a fold's validation cases with it, split over the ranks.

The headline is the raw mean Dice of the epoch (`val_dice_mean`). `smoothed` is the exponential
moving average that picks the best checkpoint (`val_dice_smoothed`, as nnU-Net's EMA pseudo-Dice):
it starts at the first validation and keeps `alpha` of the past each time, so it lags the raw
Dice: after n validations the first one still weighs alpha^(n-1) (0.9^15 = 21% after 16), and a
run that climbs from 0.3 to 0.83 reads about 0.70 smoothed. It is never the number to report.
"""

from __future__ import annotations

import math

import numpy as np


def smoothed(previous: float | None, value: float, alpha: float) -> float:
    """The EMA after one more validation: `value` at the first, else alpha * previous + (1 - alpha) * value."""
    return value if previous is None else alpha * previous + (1 - alpha) * value


def predict_case(model, image: np.ndarray, plan, config, precision, device) -> np.ndarray:
    """Channel indices (X, Y, Z) (uint8; int32 above 256 channels) on the preprocessed grid of one
    preprocessed image (C, X, Y, Z), decoded by the model's output head as `medseg infer` does."""
    import torch

    from medseg.inference.predictor import predict_on_grid
    from medseg.models import model_head

    conf = plan.configurations[config.model.configuration]
    head = model_head(config.model.name)
    x = torch.from_numpy(np.array(image, dtype=np.float32))  # a writable copy of the memory map; windows move to `device`
    model.eval()
    out = predict_on_grid(model, x, conf, precision, head, num_classes=len(plan.labels), device=torch.device(device),
                          overlap=config.val_overlap, batch_size=conf.batch_size)
    return head.decode(out).cpu().numpy()


def validate(model, workdir, case_ids, plan, config, precision, device, labels: dict[int, str], dist=None) -> dict[str, float]:
    """Mean over cases of the raw Dice per foreground class on whole validation cases, plus "mean"
    (the mean of the class means).

    A class absent from both a case's label and its prediction is left out of that class's mean (as
    in nnU-Net and `medseg evaluate`); a class left with no case is left out of "mean" (reported
    as 1.0 only when every class is). dist: a `DistInfo`; rank r predicts cases r, r + N, ... and
    the per-class sums are all-reduced, so every rank returns the same numbers as one process would.
    """
    from medseg.metrics import dice_per_class
    from medseg.preprocess.cache import load_case
    from medseg.training.distributed import DistInfo, sum_over_ranks

    dist = dist or DistInfo()

    names = [labels[v] for v in sorted(labels)]  # cached labels and predictions hold channel k = k-th label value
    fg = list(range(1, len(names)))
    per_class: dict[int, list[float]] = {k: [] for k in fg}
    for case_id in case_ids[dist.rank :: dist.world_size]:
        case = load_case(workdir, case_id)
        pred = predict_case(model, case.image, plan, config, precision, device)
        for k, d in dice_per_class(pred, np.asarray(case.label), fg, empty=math.nan).items():
            if not math.isnan(d):
                per_class[k].append(d)
    # (sum, count) per class over every rank's cases; the mean of the pooled cases, as one process has it
    totals = sum_over_ranks(dist, [[float(np.sum(per_class[k])), len(per_class[k])] for k in fg]).reshape(len(fg), 2)
    return class_means({names[k]: (float(total), int(count)) for k, (total, count) in zip(fg, totals)})


def class_means(totals: dict[str, tuple[float, int]]) -> dict[str, float]:
    """{class name: (sum of case Dice, number of cases)} -> {name: mean, "mean": mean of the class
    means}; classes with no case are left out (every class without a case: all 1.0, nothing to miss)."""
    out = {name: total / count for name, (total, count) in totals.items() if count}
    if not out:
        out = {name: 1.0 for name in totals}
    out["mean"] = float(np.mean(list(out.values()))) if out else 1.0
    return out
