"""THE sliding-window implementation: patch-wise prediction over a whole volume.

`sliding_window_predict` tiles the image with overlapping patches, runs several patches per batch,
and returns the importance-weighted average of the network's logits, (K, *S) float32.
`sliding_window_predict_2d` runs a 2D network slice by slice along one axis of a 3D volume, through
the same code (a 2D slice is a 3D patch of thickness 1).

Written here rather than using MONAI's `sliding_window_inference` because it accumulates into one
bounded buffer (float32 or float16, on the device or the CPU), reuses one cached Gaussian map and
does no per-window padding; `benchmarks/bench_infer.py` measures the difference.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Callable, Sequence

import numpy as np
import torch

from medseg.precision import PrecisionPlan

Network = Callable[[torch.Tensor], torch.Tensor]


@functools.lru_cache(maxsize=8)
def _gaussian_cpu(patch_size: tuple[int, ...], sigma_scale: float) -> torch.Tensor:
    weights = None
    for size in patch_size:
        centre = (size - 1) / 2
        sigma = max(size * sigma_scale, 1e-6)
        axis = np.exp(-0.5 * ((np.arange(size) - centre) / sigma) ** 2)
        weights = axis if weights is None else np.multiply.outer(weights, axis)
    weights = weights / weights.max()
    # as nnU-Net: no zero weights, so every voxel is covered even at a patch's corners
    weights = np.maximum(weights, weights[weights > 0].min())
    return torch.from_numpy(weights.astype(np.float32))


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = 1 / 8) -> torch.Tensor:
    """Separable Gaussian, peak 1 at the patch centre, sigma = patch * sigma_scale; shape `patch_size`."""
    return _gaussian_cpu(tuple(int(p) for p in patch_size), float(sigma_scale))


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Evenly spread start offsets covering [0, size) with patches of `patch` (size >= patch)."""
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1 - overlap)))
    n = math.ceil((size - patch) / step) + 1
    return sorted({int(round(s)) for s in np.linspace(0, size - patch, n)})


def sliding_window_predict(
    image: torch.Tensor,
    network: Network,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    batch_size: int = 2,
    gaussian: bool = True,
    precision: PrecisionPlan | None = None,
    device: torch.device | str | None = None,
    accumulate_device: torch.device | str | None = None,
    accumulate_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Weighted average of `network` logits over overlapping patches.

    image: (C, *S) with len(S) == len(patch_size); any device, float.
    network: (B, C, *P) -> (B, K, *P).
    device: where the network runs (default: the image's device).
    accumulate_device / accumulate_dtype: where and in what type the (K, *S) sum is kept (default
        the network's device, float32; float16 halves the buffer for very large volumes).
    Returns (K, *S) float32 on `accumulate_device`. Images smaller than the patch are zero-padded
    (symmetrically) and cropped back.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    patch = tuple(int(p) for p in patch_size)
    nd = len(patch)
    if image.ndim != nd + 1:
        raise ValueError(f"image must be (C, *S) with {nd} spatial dims for patch {patch}, got shape {tuple(image.shape)}")
    device = torch.device(device) if device is not None else image.device
    accumulate_device = torch.device(accumulate_device) if accumulate_device is not None else device
    memory_format = precision.memory_format(nd) if precision is not None and nd in (2, 3) else torch.contiguous_format

    shape = tuple(image.shape[1:])
    pad_before = [max(0, p - s) // 2 for s, p in zip(shape, patch)]
    pad_after = [max(0, p - s) - b for s, p, b in zip(shape, patch, pad_before)]
    if any(pad_before) or any(pad_after):
        pad = [v for b, a in zip(reversed(pad_before), reversed(pad_after)) for v in (b, a)]
        image = torch.nn.functional.pad(image, pad)
    padded = tuple(image.shape[1:])

    if gaussian:
        importance = gaussian_importance_map(patch).to(device)
    else:
        importance = torch.ones(patch, device=device)
    if accumulate_dtype != torch.float32:
        # weights that underflow in float16 would leave corner voxels summing to zero
        importance = importance.clamp_min(torch.finfo(accumulate_dtype).tiny)
    starts = list(itertools.product(*(window_starts(s, p, overlap) for s, p in zip(padded, patch))))

    output: torch.Tensor | None = None
    weight_sum = torch.zeros(padded, dtype=torch.float32, device=accumulate_device)
    importance_acc = importance.to(accumulate_device)
    autocast = precision.autocast() if precision is not None else None
    with torch.inference_mode():
        for first in range(0, len(starts), batch_size):
            group = starts[first : first + batch_size]
            slices = [tuple(slice(s, s + p) for s, p in zip(start, patch)) for start in group]
            batch = torch.stack([image[(slice(None), *sl)] for sl in slices]).to(device, torch.float32)
            batch = batch.contiguous(memory_format=memory_format)
            if autocast is not None:
                with autocast:
                    logits = network(batch)
            else:
                logits = network(batch)
            logits = logits.float() * importance  # (B, K, *P)
            if output is None:
                output = torch.zeros((logits.shape[1], *padded), dtype=accumulate_dtype, device=accumulate_device)
            logits = logits.to(accumulate_device)
            for b, sl in enumerate(slices):
                output[(slice(None), *sl)] += logits[b].to(accumulate_dtype)
                weight_sum[sl] += importance_acc
        assert output is not None  # there is always at least one window
        crop = tuple(slice(b, b + s) for b, s in zip(pad_before, shape))
        if output.dtype == torch.float32:
            output = output[(slice(None), *crop)]
            output /= weight_sum[crop]
        else:  # one class at a time, so the float32 result is the only full-size float32 copy
            result = torch.empty((output.shape[0], *shape), dtype=torch.float32, device=accumulate_device)
            for k in range(output.shape[0]):
                torch.div(output[(k, *crop)].float(), weight_sum[crop], out=result[k])
            output = result
    return output.contiguous() if not output.is_contiguous() else output


def sliding_window_predict_2d(
    image: torch.Tensor,
    network: Network,
    patch_size: Sequence[int],
    slice_axis: int,
    **kwargs,
) -> torch.Tensor:
    """A 2D network applied slice by slice along `slice_axis` (0, 1 or 2) of a 3D image.

    image: (C, X, Y, Z); network: (B, C, P0, P1) -> (B, K, P0, P1); patch_size: (P0, P1), the
    patch over the two remaining axes in order. Returns (K, X, Y, Z) float32.
    Keyword arguments are those of `sliding_window_predict`.
    """
    if image.ndim != 4 or len(patch_size) != 2 or slice_axis not in (0, 1, 2):
        raise ValueError(f"need a (C, X, Y, Z) image, a 2D patch and slice_axis 0-2; got {tuple(image.shape)}, {patch_size}, {slice_axis}")
    patch3d = list(patch_size)
    patch3d.insert(slice_axis, 1)
    squeeze_dim = 2 + slice_axis

    def as_3d(batch: torch.Tensor) -> torch.Tensor:
        out = network(batch.squeeze(squeeze_dim))
        return out.unsqueeze(squeeze_dim)

    precision = kwargs.pop("precision", None)
    if precision is not None:
        # the 2D network wants 2D channels-last; the 3D window view cannot express that, so the
        # batch is converted inside `as_3d` instead
        fmt = precision.memory_format(2)

        def as_3d(batch: torch.Tensor) -> torch.Tensor:  # noqa: F811
            out = network(batch.squeeze(squeeze_dim).contiguous(memory_format=fmt))
            return out.unsqueeze(squeeze_dim)

        plan_2d = _NoLayoutPlan(precision)
        return sliding_window_predict(image, as_3d, patch3d, precision=plan_2d, **kwargs)
    return sliding_window_predict(image, as_3d, patch3d, **kwargs)


class _NoLayoutPlan:
    """A PrecisionPlan whose autocast applies but whose memory format is left to the caller."""

    def __init__(self, plan: PrecisionPlan):
        self._plan = plan

    def autocast(self):
        return self._plan.autocast()

    def memory_format(self, spatial_dims: int):
        return torch.contiguous_format
