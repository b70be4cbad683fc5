"""CRF refinement of probabilities (`medseg infer --crf`): mean-field CRF as MONAI's CRF block.

`crf_refine(probs (K, *S), image (C, *S)) -> probs (K, *S)` runs on the preprocessed grid (before
inversion, so the cost scales with the network's grid, not the scan's). It runs
`monai.networks.blocks.CRF` when MONAI's compiled extension (`monai._C`, needed by its
permutohedral-lattice filter) is installed; the PyPI wheels ship without it, so otherwise the same
mean-field update (softmax(logits + update_factor * (w_b * bilateral + w_g * gaussian messages)))
runs with exact windowed filters of radius `radius` in pure torch.
"""

from __future__ import annotations

import itertools
import logging
import math

import torch

log = logging.getLogger(__name__)

DEFAULTS = dict(iterations=5, bilateral_weight=1.0, gaussian_weight=1.0, bilateral_spatial_sigma=5.0,
                bilateral_color_sigma=0.5, gaussian_spatial_sigma=5.0, update_factor=3.0)


def _has_monai_extension() -> bool:
    """Whether MONAI's compiled `monai._C` is installed (checked on disk: importing monai is slow)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("monai")
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(any(Path(loc).glob("_C*.so")) or any(Path(loc).glob("_C*.pyd")) for loc in spec.submodule_search_locations)


def _messages(q: torch.Tensor, image: torch.Tensor, p: dict, radius: int) -> torch.Tensor:
    """w_b * bilateral + w_g * gaussian message over neighbours d != 0 within `radius`: the mean of
    q(x + d) weighted by a Gaussian in space (gaussian term) or in space and intensity (bilateral).
    Normalised, so the CRF's pull (at most update_factor * (w_b + w_g) in logits) does not grow
    with the window."""
    nd = q.ndim - 2
    pad = [radius] * (2 * nd)
    qp = torch.nn.functional.pad(q, pad, mode="replicate")
    ip = torch.nn.functional.pad(image, pad, mode="replicate")
    shape = q.shape[2:]
    bilateral = torch.zeros_like(q)
    gaussian = torch.zeros_like(q)
    norm_b = torch.zeros_like(q[:, :1])
    norm_g = 0.0
    for d in itertools.product(range(-radius, radius + 1), repeat=nd):
        if not any(d):
            continue
        sl = (slice(None), slice(None)) + tuple(slice(radius + o, radius + o + s) for o, s in zip(d, shape))
        r2 = float(sum(o * o for o in d))
        spatial_b = math.exp(-0.5 * r2 / p["bilateral_spatial_sigma"] ** 2)
        spatial_g = math.exp(-0.5 * r2 / p["gaussian_spatial_sigma"] ** 2)
        weight = torch.exp(((ip[sl] - image) ** 2).sum(1, keepdim=True) * (-0.5 / p["bilateral_color_sigma"] ** 2)) * spatial_b
        neighbour = qp[sl]
        bilateral.addcmul_(weight, neighbour)
        norm_b += weight
        gaussian.add_(neighbour, alpha=spatial_g)
        norm_g += spatial_g
    return p["bilateral_weight"] * bilateral / norm_b + p["gaussian_weight"] * gaussian / norm_g


def crf_refine(probs: torch.Tensor, image: torch.Tensor, radius: int = 2, use_monai: bool | None = None, **params) -> torch.Tensor:
    """probs: (K, *S) probabilities; image: (C, *S) the (normalised) image guiding the bilateral term.

    params: those of `monai.networks.blocks.CRF` (iterations, bilateral_weight, gaussian_weight,
    bilateral_spatial_sigma, bilateral_color_sigma, gaussian_spatial_sigma, update_factor).
    Returns refined (K, *S) float32 probabilities.
    """
    from medseg.errors import ConfigError

    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"crf: unknown parameter(s) {sorted(unknown)}; known: {', '.join(DEFAULTS)}")
    p = {**DEFAULTS, **params}
    logits = torch.log(probs.float().clamp_min(1e-6))[None]
    ref = image.float()[None]
    if use_monai is None:
        use_monai = _has_monai_extension()
    with torch.inference_mode():
        if use_monai:
            from monai.networks.blocks import CRF

            return CRF(**p)(logits, ref)[0]
        q = torch.softmax(logits, dim=1)
        for _ in range(int(p["iterations"])):
            q = torch.softmax(logits + p["update_factor"] * _messages(q, ref, p, radius), dim=1)
    return q[0]
