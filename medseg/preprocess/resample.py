"""Resampling between voxel grids of the same field of view (scipy.ndimage.zoom, grid mode).

All functions map the *extent* of the input grid onto the output grid (voxel centres at
(i + 0.5) * in_size / out_size - 0.5, as skimage.transform.resize and nnU-Net do), so a grid and
its resampled version cover the same millimetres and `resampled_affine` describes the new grid.
For anisotropic data the coarse axis is interpolated separately with order 0 (nnU-Net's rule),
the other axes with the requested order.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def resampled_affine(affine: np.ndarray, old_shape, new_shape) -> np.ndarray:
    """Affine (4, 4) of the grid of `new_shape` covering the same extent as `affine`/`old_shape`."""
    scale = np.asarray(old_shape, dtype=float) / np.asarray(new_shape, dtype=float)
    step = np.eye(4)
    step[:3, :3] = np.diag(scale)
    step[:3, 3] = (scale - 1) / 2
    return affine @ step


def _zoom(array: np.ndarray, new_shape, order: int) -> np.ndarray:
    """One 3D array resized to `new_shape` with spline `order`, axes of unchanged size untouched."""
    if tuple(array.shape) == tuple(new_shape):
        return array
    if not array.flags.c_contiguous and array.T.flags.c_contiguous:
        # Fortran order (NIfTI): zoom the transpose, which scipy then reads in memory order
        # (1.8 -> 0.3 s for a 512x512x300 CT); the result is the same grid, transposed back
        return _zoom(array.T, tuple(new_shape)[::-1], order).T
    factors = [n / o for n, o in zip(new_shape, array.shape)]
    out = ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
    if out.shape != tuple(new_shape):  # guard against float rounding in zoom's output shape
        raise RuntimeError(f"zoom produced {out.shape}, expected {tuple(new_shape)}")
    return out


def resize3d(array: np.ndarray, new_shape, order: int, coarse_axis: int | None = None) -> np.ndarray:
    """(X, Y, Z) -> `new_shape`; along `coarse_axis` (if given) nearest neighbour is used."""
    new_shape = tuple(int(s) for s in new_shape)
    if coarse_axis is None or order == 0:
        return _zoom(array, new_shape, order)
    in_plane = list(new_shape)
    in_plane[coarse_axis] = array.shape[coarse_axis]
    out = _zoom(array, in_plane, order)
    return _zoom(out, new_shape, 0)


def resample_image(image: np.ndarray, new_shape, order: int = 3, coarse_axis: int | None = None) -> np.ndarray:
    """(C, X, Y, Z) float -> (C, *new_shape) float32."""
    if tuple(image.shape[1:]) == tuple(new_shape):
        return image.astype(np.float32, copy=False)
    return np.stack([resize3d(c.astype(np.float32, copy=False), new_shape, order, coarse_axis) for c in image]).astype(
        np.float32, copy=False
    )


def resample_label(label: np.ndarray, new_shape, mode: str = "onehot_linear", coarse_axis: int | None = None) -> np.ndarray:
    """(X, Y, Z) integer labels -> `new_shape`, same dtype; never creates a value absent from the input.

    onehot_linear: each class's mask is resampled linearly and the most probable class wins.
    nearest: nearest neighbour.
    """
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(label.shape) == new_shape:
        return label
    if mode == "nearest":
        return _zoom(label, new_shape, 0)
    classes = np.unique(label)
    out = np.full(new_shape, classes[0], dtype=label.dtype)
    best = np.full(new_shape, -1.0, dtype=np.float32)
    for c in classes:
        p = resize3d((label == c).astype(np.float32), new_shape, 1, coarse_axis)
        better = p > best
        out[better] = c
        np.maximum(best, p, out=best)
    return out


def coarse_axis_of(spacing, threshold: float) -> int | None:
    """Index of the coarse axis when max/min spacing exceeds `threshold`, else None."""
    spacing = np.asarray(spacing, dtype=float)
    if spacing.max() / spacing.min() > threshold:
        return int(np.argmax(spacing))
    return None
