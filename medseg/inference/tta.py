"""Test-time augmentation by mirroring: average a network's logits over flips of the spatial axes."""

from __future__ import annotations

import itertools
from typing import Callable

import torch


def mirror_axes_combinations(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every subset of the spatial axes of a (B, C, *S) tensor, the empty one (identity) first."""
    axes = range(2, 2 + spatial_dims)
    return [combo for r in range(spatial_dims + 1) for combo in itertools.combinations(axes, r)]


def mirrored(network: Callable[[torch.Tensor], torch.Tensor], spatial_dims: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A network (B, C, *S) -> (B, K, *S) whose logits are averaged over all 2**spatial_dims flips.

    Applied per batch of windows, so it adds no full-volume buffer.
    """
    combos = mirror_axes_combinations(spatial_dims)

    def predict(batch: torch.Tensor) -> torch.Tensor:
        total = None
        for axes in combos:
            x = torch.flip(batch, axes) if axes else batch
            y = network(x).float()
            y = torch.flip(y, axes) if axes else y
            total = y if total is None else total + y
        return total / len(combos)

    return predict
