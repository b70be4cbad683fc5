"""Helpers of the export tests (a module of its own: test files import it by name)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from module_loader import load_module

REPO = Path(__file__).resolve().parents[2]
_inference = load_module(REPO / "tests" / "inference" / "conftest.py", "_export_helpers_inference")


def blob_volume(seed: int = 1, shape=(37, 29, 21)):
    """A 3 mm scan of bright balls (the tiny bundle's task) of an odd size: several windows, padding at edges."""
    from medseg.volume import Volume

    x, _ = _inference.blob_batch(np.random.default_rng(seed), 1, shape=shape)
    return Volume(x[0, 0].numpy(), np.diag([3.0, 3.0, 3.0, 1.0]))


def assert_same_mask(mask: np.ndarray, reference: np.ndarray, what: str) -> None:
    """The reference's mask, up to voxels that another runtime's float32 rounding can flip: a voxel
    whose two best class scores tie to ~1e-5 sits on a boundary of the reference mask. So at most 1
    in 2000 voxels may differ, and each one must touch a voxel of another label in the reference."""
    from scipy import ndimage

    differ = mask != reference
    assert differ.sum() <= max(1, reference.size // 2000), f"{what}: {int(differ.sum())} of {reference.size} voxels differ"
    edge = np.zeros_like(differ)
    for value in np.unique(reference):
        inside = reference == value
        edge |= inside & ~ndimage.binary_erosion(inside, border_value=1)
    assert not (differ & ~edge).any(), f"{what}: a voxel inside a region of the reference mask differs"
