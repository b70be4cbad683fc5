"""The simulated user: what a promptable model is trained and scored with (RITM / SAM-Med3D style).

Masks are bool arrays (X, Y, Z) on one grid. Clicks are voxel indices on that grid. Everything is
deterministic for a given `numpy.random.Generator` seed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def interior_point(region: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    """The voxel of `region` farthest from its boundary (the maximum of the distance transform; ties
    broken by `rng`): where a user clicks to mean "this"."""
    padded = np.pad(region, 1)  # the grid's edge counts as boundary
    depth = ndimage.distance_transform_edt(padded)[1:-1, 1:-1, 1:-1]
    best = np.argwhere(depth == depth.max())
    return tuple(int(v) for v in best[rng.integers(len(best))])


def first_prompt(target: np.ndarray, rng: np.random.Generator, p_box: float = 0.5, box_jitter: int = 2) -> dict:
    """{"click": voxel, "positive": True} at the object's interior, or {"box": (lo, hi)} around it
    (inclusive voxel corners, each side moved by up to `box_jitter` voxels)."""
    if rng.random() < p_box:
        where = np.argwhere(target)
        jitter = rng.integers(-box_jitter, box_jitter + 1, size=(2, 3))
        lo = np.clip(where.min(0) + jitter[0], 0, np.asarray(target.shape) - 1)
        hi = np.clip(where.max(0) + jitter[1], lo, np.asarray(target.shape) - 1)
        return {"box": (tuple(map(int, lo)), tuple(map(int, hi)))}
    return {"click": interior_point(target, rng), "positive": True}


def corrective_click(prediction: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> dict | None:
    """A click at the interior of the largest error region: positive in a missed part (false
    negative), negative in a false positive. None when the prediction is exact."""
    best, best_size, positive = None, 0, True
    for errors, is_positive in ((target & ~prediction, True), (prediction & ~target, False)):
        if not errors.any():
            continue
        components, n = ndimage.label(errors, structure=ndimage.generate_binary_structure(3, 1))
        sizes = np.bincount(components.ravel())[1:]
        k = int(np.argmax(sizes)) + 1
        if sizes[k - 1] > best_size:
            best, best_size, positive = components == k, int(sizes[k - 1]), is_positive
    if best is None:
        return None
    return {"click": interior_point(best, rng), "positive": positive}


def pick_object(label: np.ndarray, rng: np.random.Generator, p_component: float = 0.5,
                exclude: tuple[int, ...] = ()) -> np.ndarray | None:
    """A class-agnostic target from a label map of channels/values (X, Y, Z): a present foreground
    class, or (with `p_component`) one connected component of it. None when nothing is present."""
    classes = [int(v) for v in np.unique(label) if v != 0 and v != 255 and int(v) not in exclude]
    if not classes:
        return None
    mask = label == classes[rng.integers(len(classes))]
    if rng.random() < p_component:
        components, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 3))
        if n > 1:
            mask = components == int(rng.integers(1, n + 1))
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * (a & b).sum() / total)
