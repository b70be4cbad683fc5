"""Intensity normalisation per channel, as the plan's `ChannelNormalization` says."""

from __future__ import annotations

import numpy as np

from medseg.preprocess.plan import ChannelNormalization


def _mean_std(x: np.ndarray, chunk: int = 1 << 22) -> tuple[float, float]:
    """Mean and (population) standard deviation accumulated in float64 over chunks of an array of
    any real dtype: the same values as `x.mean(dtype=float64)`, `x.std(dtype=float64)` without the
    full-size float64 temporary that `np.std` makes (2.4 GB for a 512x512x400 CT)."""
    n = x.size
    if n == 0:
        return 0.0, 0.0
    # slabs along the (non-singleton) axis with the largest stride: views of any array, no copy
    axis = max(range(x.ndim), key=lambda a: (x.shape[a] > 1, abs(x.strides[a])))
    step = max(1, chunk // (n // x.shape[axis]))
    slabs = [x[(slice(None),) * axis + (slice(i, i + step),)] for i in range(0, x.shape[axis], step)]
    mean = sum(float(part.sum(dtype=np.float64)) for part in slabs) / n
    squares = 0.0
    for part in slabs:
        d = part.astype(np.float64).ravel(order="K") - mean
        squares += float(np.dot(d, d))
    return mean, (squares / n) ** 0.5


def normalize(image: np.ndarray, schemes: list[ChannelNormalization], nonzero: np.ndarray | None = None) -> np.ndarray:
    """(C, X, Y, Z) -> float32 (C, X, Y, Z). `nonzero`: (X, Y, Z) bool, the region z-scores use.

    Works in place in the output array, so the peak is the output plus one chunk. The output
    keeps the input's memory order, so the copy never transposes.
    """
    out = np.empty_like(image, dtype=np.float32)
    for c, scheme in enumerate(schemes):
        x = out[c]
        if scheme.scheme == "ct":
            np.copyto(x, image[c], casting="unsafe")
            np.clip(x, scheme.clip_low, scheme.clip_high, out=x)
            np.subtract(x, scheme.mean, out=x)
            np.divide(x, max(scheme.std, 1e-8), out=x)
        elif scheme.scheme == "zscore":
            use_mask = scheme.use_nonzero_mask and nonzero is not None and nonzero.any()
            # statistics from the input itself, then one pass that casts and subtracts together
            # (float32 arithmetic: the same values as casting first)
            mean, std = _mean_std(image[c][nonzero] if use_mask else image[c])
            np.subtract(image[c], np.float32(mean), out=x, dtype=np.float32, casting="unsafe")
            np.divide(x, max(std, 1e-8), out=x)
            if use_mask:
                x[~nonzero] = 0
        else:
            np.copyto(x, image[c], casting="unsafe")
    return out
