"""Agreement with MONAI's metric implementations on random blob masks with anisotropic spacing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_surface_dice,
)
from scipy import ndimage

from medseg.metrics import dice_per_class
from medseg.metrics.case import array_metrics

SPACING = (1.5, 0.8, 3.0)


def random_labels(seed: int, shape=(28, 24, 16)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    labels = np.zeros(shape, np.uint8)
    labels[noise > 0.05] = 1
    labels[noise > 0.15] = 2
    return labels


def one_hot(labels: np.ndarray, num_classes: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.from_numpy(labels).long(), num_classes).permute(3, 0, 1, 2)[None].float()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_monai(seed):
    pred, ref = random_labels(seed), random_labels(seed + 100)
    ours = {row["label"]: row for row in array_metrics(pred, ref, SPACING, labels=[1, 2], tolerance_mm=2.0)}
    p, r = one_hot(pred), one_hot(ref)
    dice = compute_dice(p, r, include_background=False)[0]
    hd95 = compute_hausdorff_distance(p, r, include_background=False, percentile=95, spacing=SPACING)[0]
    assd = compute_average_surface_distance(p, r, include_background=False, symmetric=True, spacing=SPACING)[0]
    nsd = compute_surface_dice(p, r, class_thresholds=[2.0, 2.0], include_background=False, spacing=SPACING)[0]
    fast = dice_per_class(pred, ref, [1, 2])
    for i, label in enumerate([1, 2]):
        assert ours[label]["dice"] == pytest.approx(float(dice[i]), abs=1e-6)
        assert fast[label] == pytest.approx(float(dice[i]), abs=1e-6)
        assert abs(ours[label]["hd95"] - float(hd95[i])) <= min(SPACING)
        assert ours[label]["assd"] == pytest.approx(float(assd[i]), abs=1e-4)
        assert ours[label]["nsd"] == pytest.approx(float(nsd[i]), abs=1e-6)
