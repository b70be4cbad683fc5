"""Output heads: what a network's output channels mean, how window outputs are stitched, how they are decoded.

Every registered model family declares one head (`medseg.models.MODELS[name].head`). The predictor
never hard-codes an activation: per fold it asks the head to `stitch` the windows into one map on the
preprocessed grid, to `activate` it, averages the folds with `ensemble`, and maps the result to the
original grid (resampled linearly, like any dense map) where `decode` turns it into channel indices.

A head is plain torch; it knows nothing of files, plans or bundles, so it sits beside the models and
the inference code calls it. A new kind of output (instances, border/core, prompts) is a subclass
that overrides the steps that differ, registered on the family that produces it.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Iterable

import torch

# Runs the network over overlapping windows of the whole preprocessed image and returns the weighted
# mean of the window outputs, (C_out, *S). Keyword `gaussian`: Gaussian (True) or uniform (False)
# weights. Supplied by the predictor (medseg.inference.sliding_window), so heads import no inference code.
WindowRunner = Callable[..., torch.Tensor]


class OutputHead:
    """Base contract. Tensors are (C_out, *S) on one grid, S = (X, Y, Z); channel k of a dense head
    is the k-th label value of the plan (`plan.label_values`)."""

    name: ClassVar[str] = "head"
    # how overlapping window outputs are weighted when summed: "gaussian" (peak at the window centre,
    # as nnU-Net) or "uniform"
    window_weighting: ClassVar[str] = "gaussian"

    def out_channels(self, num_classes: int) -> int:
        """Channels the network must output for a plan of `num_classes` classes (background included)."""
        raise NotImplementedError

    def stitch(self, run_windows: WindowRunner) -> torch.Tensor:
        """Window outputs -> one (C_out, *S) map on the preprocessed grid (default: their weighted mean)."""
        return run_windows(gaussian=self.window_weighting == "gaussian")

    def activate(self, stitched: torch.Tensor) -> torch.Tensor:
        """The stitched map of one fold -> what folds are averaged over (may work in place)."""
        raise NotImplementedError

    def ensemble(self, outputs: Iterable[torch.Tensor]) -> torch.Tensor:
        """Activated maps of each fold (consumed one by one: one extra map in memory) -> their mean."""
        total, n = None, 0
        for out in outputs:
            if total is None:
                total = out
            else:
                total += out
                del out
            n += 1
        if total is None:
            raise ValueError("ensemble of no outputs")
        if n > 1:
            total /= n
        return total

    def decode(self, activated: torch.Tensor) -> torch.Tensor:
        """(C_out, *S) activated map (or a slab of one) -> (*S) channel indices, uint8 (int32 above 256 channels)."""
        raise NotImplementedError


def argmax0(x: torch.Tensor) -> torch.Tensor:
    """argmax over dim 0 (first maximum wins, as np.argmax), as uint8/int32 labels; K - 1 elementwise
    passes, several times faster than torch.argmax over the outer dimension on the CPU."""
    best = x[0].clone()
    labels = torch.zeros(x.shape[1:], dtype=torch.uint8 if x.shape[0] <= 256 else torch.int32, device=x.device)
    for k in range(1, x.shape[0]):
        better = x[k] > best
        labels.masked_fill_(better, k)
        torch.maximum(best, x[k], out=best)
    return labels


def softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 0 in place: no second (K, *S) float buffer on a large volume."""
    logits -= logits.amax(0, keepdim=True)
    logits.exp_()
    logits /= logits.sum(0, keepdim=True)
    return logits


class SemanticSoftmaxHead(OutputHead):
    """One logit per class; windows stitched as the Gaussian-weighted mean of logits; softmax, then
    folds averaged as probabilities; decoded by argmax (the most probable class per voxel)."""

    name = "semantic_softmax"
    window_weighting = "gaussian"

    def out_channels(self, num_classes: int) -> int:
        return int(num_classes)

    def activate(self, stitched: torch.Tensor) -> torch.Tensor:
        return softmax_(stitched)

    def decode(self, activated: torch.Tensor) -> torch.Tensor:
        return argmax0(activated)


SEMANTIC_SOFTMAX = SemanticSoftmaxHead()

__all__ = ["OutputHead", "SEMANTIC_SOFTMAX", "SemanticSoftmaxHead", "WindowRunner", "argmax0", "softmax_"]
