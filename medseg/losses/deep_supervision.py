"""Deep supervision: one loss per decoder output, weighted 1, 1/2, 1/4, ... as nnU-Net does
(or 1, d, d^2, ... for another `decay` d: `loss.deep_supervision_decay` in a training config)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from medseg.errors import ConfigError


def default_weights(n: int, decay: float = 0.5) -> list[float]:
    """1, decay, decay^2, ... for n outputs (full resolution first), normalised to sum to 1;
    decay 0.5 is nnU-Net's 1, 1/2, 1/4, ..., 1.0 weighs every output alike.

    nnU-Net also computes the lowest-resolution output and weights it 0; medseg's U-Net does not
    produce that output at all (an unused head would get no gradient, which DDP refuses), so every
    output here has a weight > 0 and the kept outputs get nnU-Net's relative weights.
    """
    if not 0 < decay <= 1:
        raise ConfigError(f"deep supervision decay {decay} is out of range; expected 0 < decay <= 1 (0.5: nnU-Net's weights)")
    weights = [decay**i for i in range(n)]
    return [w / sum(weights) for w in weights]


def downsample_target(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Strided indexing of (B, C, *S) labels to spatial `size`: never invents or blends labels.

    The step per axis is the largest s with ceil(S / s) == size, i.e. the model's cumulative stride,
    so target voxel s*i sits where the strided convolutions of the encoder centre output voxel i.
    """
    index = [slice(None), slice(None)]
    for full, want in zip(target.shape[2:], size):
        steps = [s for s in range(1, full + 1) if math.ceil(full / s) == want]
        if not steps:
            raise ConfigError(f"cannot downsample a target of size {full} to {want}; logits scales do not match the target")
        index.append(slice(None, None, steps[-1]))
    return target[tuple(index)]


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of `loss(logits_k, target downsampled to scale k)` over a list of logits.

    `outputs`: list of (B, K, *S_k), full resolution first (or one tensor: plain `loss`);
    `target`: (B, 1 or K, *S_0) at full resolution.
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None, decay: float = 0.5):
        super().__init__()
        self.loss = loss
        self.weights = None if weights is None else [float(w) for w in weights]
        self.decay = float(decay)  # `default_weights(n, decay)` when no weights are given

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target)
        weights = self.weights if self.weights is not None else default_weights(len(outputs), self.decay)
        if len(weights) != len(outputs):
            raise ConfigError(f"deep supervision has {len(weights)} weights for {len(outputs)} outputs; give one weight per output")
        total = outputs[0].new_zeros((), dtype=torch.float32)
        # no skipping of zero weights: a skipped output leaves its head without a gradient (DDP fails)
        for w, logits in zip(weights, outputs):
            total = total + w * self.loss(logits, downsample_target(target, logits.shape[2:]))
        return total
