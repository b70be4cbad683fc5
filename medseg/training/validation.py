"""Training validation: whole preprocessed cases through the predictor's own network-grid routine.

`predict_case` is `medseg.inference.predictor.predict_on_grid` (the sliding window with the
predictor's accumulation-device safeguard, the model's output head to stitch, activate and decode)
on one cached case; `validate` scores a fold's validation cases with it, split over the ranks.
"""

from __future__ import annotations

import numpy as np


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
    """Mean over cases of the Dice per foreground class on whole validation cases, plus "mean".

    dist: a `DistInfo`; rank r predicts cases r, r + N, ... and the per-class sums are all-reduced,
    so every rank returns the same numbers as one process would.
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
        for k, d in dice_per_class(pred, np.asarray(case.label), fg).items():
            per_class[k].append(d)
    # (sum, count) per class over every rank's cases; the mean of the pooled cases, as one process has it
    totals = sum_over_ranks(dist, [[float(np.sum(per_class[k])), len(per_class[k])] for k in fg]).reshape(len(fg), 2)
    per_class = {k: [total / count] if count else [] for k, (total, count) in zip(fg, totals)}
    out = {names[k]: float(np.mean(v)) for k, v in per_class.items()}
    out["mean"] = float(np.mean(list(out.values())))
    return out
