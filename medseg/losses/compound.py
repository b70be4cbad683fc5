"""Dice + voxel-wise (cross-entropy, binary cross-entropy, focal) losses with an ignore label.

Called as `loss(logits (B, K, *S), target)`, where `target` is (B, 1, *S) integer labels or, for the
sigmoid losses, also (B, K, *S) binary multi-label maps. Voxels whose target equals `ignore_index`
are excluded from every term: from the Dice numerator and denominator and from the voxel-wise mean.
Everything is computed in float32, even when the logits come from a bf16 autocast region.

Conventions, applied to every loss:
- Dice: soft Dice 1 - (2 sum p g + s) / (sum p + sum g + s) per class (and per sample unless
  `batch_dice`), computed by MONAI's `DiceLoss`; class weight w_k multiplies class k's Dice term
  before the mean over classes (MONAI's convention, so weights of all ones change nothing).
- Voxel-wise term: the focal loss FL = -a_t (1 - p_t)^gamma log p_t; gamma = 0 and alpha = None
  give exactly cross-entropy (softmax) or binary cross-entropy (sigmoid). With class weights the
  mean is weighted: sum_v w_{y_v} FL_v / sum_v w_{y_v} (torch's CrossEntropyLoss convention; for
  sigmoid, w_k weighs channel k's elements).
- alpha (focal): a scalar gives alpha to foreground and 1 - alpha to background (softmax: class 0 is
  background; sigmoid: a 0 in the target is background); a sequence gives one alpha per class.
- `include_background=False` drops class 0 from the Dice term only (softmax/one-hot channels).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import ConfigError


class SegmentationLoss(nn.Module):
    """lambda_dice * Dice + lambda_voxel * focal/CE/BCE, with softmax or sigmoid activation."""

    def __init__(
        self,
        *,
        lambda_dice: float = 1.0,
        lambda_voxel: float = 1.0,
        sigmoid: bool = False,
        gamma: float = 0.0,
        alpha: float | Sequence[float] | None = None,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = 255,
        include_background: bool = True,
        batch_dice: bool = False,
        smooth: float = 1e-5,
    ):
        super().__init__()
        from monai.losses import DiceLoss

        if class_weights is not None and min(class_weights) < 0:
            raise ConfigError(f"loss class_weights {list(class_weights)} contain a negative value; expected weights >= 0")
        if gamma < 0:
            raise ConfigError(f"focal gamma={gamma}; expected >= 0")
        self.lambda_dice, self.lambda_voxel = float(lambda_dice), float(lambda_voxel)
        self.sigmoid, self.gamma, self.alpha = sigmoid, float(gamma), alpha
        self.ignore_index, self.include_background = ignore_index, include_background
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        # The target is one-hot encoded and masked here (not by MONAI), so one DiceLoss serves every
        # target layout; it returns per-class terms, weighted below.
        self.dice = DiceLoss(batch=batch_dice, smooth_nr=smooth, smooth_dr=smooth, reduction="none")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self._forward(logits.float(), target)

    def _forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        k = logits.shape[1]
        if target.shape[0] != logits.shape[0] or target.shape[2:] != logits.shape[2:] or target.shape[1] not in (1, k):
            raise ConfigError(
                f"loss target has shape {tuple(target.shape)}; expected (B, 1, *S) labels or (B, K, *S) maps "
                f"matching logits {tuple(logits.shape)}"
            )
        if not self.sigmoid and (k == 1 or target.shape[1] != 1):
            raise ConfigError(
                f"a softmax loss got logits {tuple(logits.shape)} and target {tuple(target.shape)}; expected K >= 2 "
                "channels (background included) and (B, 1, *S) integer labels, or use a sigmoid loss"
            )
        valid = torch.ones_like(target, dtype=torch.bool) if self.ignore_index is None else target != self.ignore_index
        labels = torch.where(valid, target, torch.zeros_like(target)).long()
        if self.sigmoid and (k == 1 or target.shape[1] > 1):
            onehot = (labels > 0).float()  # binary target or multi-label maps
        else:
            if labels.max() >= k:
                raise ConfigError(f"loss target holds label {int(labels.max())} but the logits have only {k} classes")
            onehot = F.one_hot(labels[:, 0], k).movedim(-1, 1).float()
        weights = None
        if self.class_weights is not None:
            if len(self.class_weights) != k:
                raise ConfigError(f"loss class_weights has {len(self.class_weights)} values; expected one per class ({k})")
            weights = torch.tensor(self.class_weights, device=logits.device)
        mask = valid.float()  # (B, 1 or K, *S), broadcasts over channels

        total = logits.new_zeros(())
        if self.lambda_dice:
            probs = torch.sigmoid(logits) if self.sigmoid else torch.softmax(logits, dim=1)
            probs, onehot_d, w = probs * mask, onehot * mask, weights
            if not self.include_background and k > 1:
                probs, onehot_d = probs[:, 1:], onehot_d[:, 1:]
                w = None if weights is None else weights[1:]
            per_class = self.dice(probs, onehot_d).reshape(-1, probs.shape[1])  # (B or 1, K)
            if w is not None:
                per_class = per_class * w
            total = total + self.lambda_dice * per_class.mean()
        if self.lambda_voxel:
            total = total + self.lambda_voxel * self._focal(logits, onehot, labels, mask, weights)
        return total

    def _focal(self, logits, onehot, labels, mask, weights) -> torch.Tensor:
        """Masked, class-weighted mean of the focal loss; CE/BCE when gamma = 0 and alpha is None."""
        k = logits.shape[1]
        shape = (1, k) + (1,) * (logits.ndim - 2)
        if self.sigmoid:
            logp_t = -F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")  # log p_t, per element
            voxel_weight = mask if weights is None else mask * weights.view(shape)
            alpha_t = None
            if self.alpha is not None:
                a = torch.as_tensor(self.alpha, dtype=logits.dtype, device=logits.device)
                a = a.view(shape) if a.ndim else a
                alpha_t = onehot * a + (1 - onehot) * (1 - a)
        else:
            log_probs = torch.log_softmax(logits, dim=1)
            logp_t = log_probs.gather(1, labels)  # (B, 1, *S)
            voxel_weight = mask if weights is None else mask * weights[labels]
            alpha_t = None
            if self.alpha is not None:
                a = torch.as_tensor(self.alpha, dtype=logits.dtype, device=logits.device)
                if a.ndim == 0:
                    a = torch.cat([1 - a.view(1), a.repeat(k - 1)])
                if a.numel() != k:
                    raise ConfigError(f"focal alpha has {a.numel()} values; expected one per class ({k}) or a scalar")
                alpha_t = a[labels]
        loss = -logp_t
        if self.gamma:
            loss = loss * (1 - logp_t.exp()).pow(self.gamma)
        if alpha_t is not None:
            loss = loss * alpha_t
        voxel_weight = voxel_weight.expand_as(loss)
        # sum / max(sum of weights, tiny): an all-ignored batch gives 0, not NaN
        return (loss * voxel_weight).sum() / voxel_weight.sum().clamp(min=1e-8)
