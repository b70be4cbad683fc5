"""Intensity normalisation per channel, as the plan's `ChannelNormalization` says."""

from __future__ import annotations

import numpy as np

from medseg.preprocess.plan import ChannelNormalization


def normalize(image: np.ndarray, schemes: list[ChannelNormalization], nonzero: np.ndarray | None = None) -> np.ndarray:
    """(C, X, Y, Z) -> float32 (C, X, Y, Z). `nonzero`: (X, Y, Z) bool, the region z-scores use."""
    out = np.empty(image.shape, dtype=np.float32)
    for c, scheme in enumerate(schemes):
        x = image[c].astype(np.float32, copy=False)
        if scheme.scheme == "ct":
            x = np.clip(x, scheme.clip_low, scheme.clip_high)
            out[c] = (x - scheme.mean) / max(scheme.std, 1e-8)
        elif scheme.scheme == "zscore":
            use_mask = scheme.use_nonzero_mask and nonzero is not None and nonzero.any()
            values = x[nonzero] if use_mask else x
            mean = float(values.mean(dtype=np.float64))
            std = float(values.std(dtype=np.float64))
            out[c] = (x - mean) / max(std, 1e-8)
            if use_mask:
                out[c][~nonzero] = 0
        else:
            out[c] = x
    return out
