"""CRF refinement: isolated flipped voxels in a noisy probability map are corrected."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.errors import ConfigError
from medseg.postprocess.crf import crf_refine


def noisy_sphere(seed=0, shape=(18, 18, 18), flips=0.04):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    truth = np.linalg.norm(grid - np.array(shape) / 2, axis=-1) < 5.5
    fg = np.where(truth, 0.8, 0.2)
    flipped = rng.random(shape) < flips  # isolated voxels whose probability is inverted
    fg = np.where(flipped, 1 - fg, fg)
    probs = torch.tensor(np.stack([1 - fg, fg]), dtype=torch.float32)
    image = torch.tensor((truth * 2.0 + rng.normal(0, 0.1, shape))[None], dtype=torch.float32)
    return probs, image, truth, flipped


def test_crf_removes_isolated_flipped_voxels_and_keeps_the_sphere():
    probs, image, truth, flipped = noisy_sphere()
    before = probs.argmax(0).numpy() == 1
    assert (before != truth).sum() == flipped.sum() > 150
    refined = crf_refine(probs, image, iterations=2)
    after = refined.argmax(0).numpy() == 1
    assert refined.shape == probs.shape
    torch.testing.assert_close(refined.sum(0), torch.ones(truth.shape))
    assert (after != truth).sum() <= 0.02 * flipped.sum()  # >= 98% of the flipped voxels corrected
    assert after[9, 9, 9] and not after[0, 0, 0]


def test_crf_rejects_unknown_parameters():
    probs, image, _, _ = noisy_sphere(shape=(6, 6, 6))
    with pytest.raises(ConfigError, match="unknown parameter"):
        crf_refine(probs, image, sigma=3)
