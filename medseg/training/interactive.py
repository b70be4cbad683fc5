"""Training a promptable model: each sample gets a class-agnostic target and simulated prompts.

Per batch (RITM / SAM-Med3D style): each sample picks one object (a present foreground class, or
one connected component of it); a first prompt (a box, or a click at the object's interior); then
k corrective clicks (k drawn from 0..max_corrective_clicks, one k per batch), each from the model's
own prediction of the round before (fed back as the previous-mask channel), at the interior of the
largest error region. Prompt kinds are dropped at random. The network's input is the image channels
plus `medseg.interactive.prompts.PROMPT_CHANNELS`; its target is 1 on the object, 0 elsewhere
(unannotated voxels keep the ignore label).
"""

from __future__ import annotations

import numpy as np
import torch

from medseg.interactive.prompts import PROMPT_CHANNELS, paint_ball
from medseg.interactive.simulate import corrective_click, first_prompt, pick_object
from medseg.schema import StrictModel

IGNORE = 255


class InteractiveOptions(StrictModel):
    """`interactive:` in a training config (configs/interactive3d.yaml)."""

    max_corrective_clicks: int = 5
    p_box: float = 0.5           # first prompt: a box (else one click)
    p_component: float = 0.5     # target one connected component (else a whole class)
    p_drop_box: float = 0.2      # after corrective clicks, the box channel is dropped
    radius_mm: float = 2.0       # clicks are balls of this radius
    box_jitter: int = 2          # voxels each box side may move
    exclude_labels: list[int] = []  # label values never chosen as objects (held-out classes: background to the model)


class PromptSimulator:
    """`(model, image (B, C, *S), target (B, [1,] *S) channels) -> (inputs (B, C + 4, *S), target 0/1/255 of the target's shape)`."""

    def __init__(self, options: InteractiveOptions, spacing, seed: int = 0, exclude_channels: tuple[int, ...] = ()):
        """exclude_channels: the label channels of `options.exclude_labels` (never an object)."""
        self.options = options
        self.exclude = tuple(exclude_channels)
        self.spacing = np.asarray(spacing, np.float64)
        self.rng = np.random.default_rng(seed)

    @torch.no_grad()
    def _predict(self, model, inputs: torch.Tensor) -> np.ndarray:
        out = model(inputs)
        out = out[0] if isinstance(out, (list, tuple)) else out
        return (out.argmax(1) == 1).cpu().numpy()

    def __call__(self, model, image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        options, rng = self.options, self.rng
        channel_dim = target.ndim == image.ndim  # (B, 1, *S) as the sampler gives it, or (B, *S)
        labels = (target[:, 0] if channel_dim else target).cpu().numpy()
        batch, spatial = labels.shape[0], labels.shape[1:]
        prompts = np.zeros((batch, PROMPT_CHANNELS, *spatial), np.float32)
        objects = np.zeros((batch, *spatial), bool)
        for b in range(batch):
            obj = pick_object(labels[b], rng, options.p_component, exclude=self.exclude)
            if obj is None:  # nothing annotated here: no prompt, no object (the model learns to stay empty)
                continue
            objects[b] = obj
            first = first_prompt(obj, rng, options.p_box, options.box_jitter)
            if "box" in first:
                lo, hi = first["box"]
                prompts[b, 2][tuple(slice(l, h + 1) for l, h in zip(lo, hi))] = 1
            else:
                paint_ball(prompts[b, 0], first["click"], options.radius_mm, self.spacing)
        rounds = int(rng.integers(0, options.max_corrective_clicks + 1))
        device = image.device
        for _ in range(rounds):
            inputs = torch.cat([image, torch.from_numpy(prompts).to(device, image.dtype)], 1)
            predicted = self._predict(model, inputs)
            for b in range(batch):
                if not objects[b].any():
                    continue
                click = corrective_click(predicted[b], objects[b], rng)
                prompts[b, 3] = predicted[b]
                if click is not None:
                    paint_ball(prompts[b, 0 if click["positive"] else 1], click["click"], options.radius_mm, self.spacing)
        if rounds and rng.random() < options.p_drop_box:
            prompts[:, 2] = 0
        new_target = np.where(labels == IGNORE, IGNORE, objects.astype(labels.dtype))
        inputs = torch.cat([image, torch.from_numpy(prompts).to(device, image.dtype)], 1)
        new_target = torch.from_numpy(new_target).to(target.device, target.dtype)
        return inputs, new_target[:, None] if channel_dim else new_target
