"""Learning-rate schedules as a function of the global iteration.

The scheduler is a `LambdaLR` stepped once per iteration; its state is just its step count, so a
resumed run continues on the exact same curve, and extending `epochs` stretches the curve from
where it is (the remaining iterations are re-planned over the new total).
"""

from __future__ import annotations

import math


def poly_factor(step: int, total: int, exponent: float = 0.9) -> float:
    """nnU-Net's poly decay: (1 - step/total) ** exponent, 1 at step 0, 0 at the end."""
    return max(0.0, 1.0 - step / max(total, 1)) ** exponent


def cosine_factor(step: int, total: int, warmup: int = 0) -> float:
    """Linear warm-up over `warmup` steps, then half a cosine from 1 down to 0 at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class LrSchedule:
    """Callable step -> lr factor; `total` can be changed (when --epochs extends a run), and
    `retarget` re-sizes it without a jump (the time budget's re-plans, `medseg.training.budget`).

    The decay is a function of progress q in [0, 1] (poly: (1 - q) ** exponent; cosine: half a
    cosine after the linear warm-up), q = step / total (cosine: counted after the warm-up). After
    `retarget(step, new_total)` q runs linearly from its value at `step` to 1 at `new_total`, so
    the curve stays continuous and still ends at its final value. Its attributes are the
    scheduler's saved state (LambdaLR keeps a callable object's __dict__), anchor included.
    """

    def __init__(self, kind: str, total: int, exponent: float = 0.9, warmup: int = 0):
        if kind not in ("poly", "cosine"):
            raise ValueError(f"unknown schedule {kind!r}")
        self.kind, self.total, self.exponent, self.warmup = kind, int(total), exponent, int(warmup)
        self.anchor: tuple[int, float] | None = None  # (step, progress there) of the last retarget

    def _start(self) -> int:
        return self.warmup if self.kind == "cosine" else 0

    def progress(self, step: int) -> float:
        """q in [0, 1]: how far the decay is at `step` (0 before and during the warm-up)."""
        s0, q0 = self.anchor if self.anchor is not None else (self._start(), 0.0)
        return min(1.0, max(0.0, q0 + (step - s0) * (1.0 - q0) / max(self.total - s0, 1)))

    def retarget(self, step: int, total: int) -> None:
        """End the decay at `total` instead, continuing from the factor it has at `step`."""
        if total <= step:
            raise ValueError(f"a re-sized schedule must end after step {step}, got total {total}")
        s0 = max(int(step), self._start())  # during the warm-up nothing has decayed yet
        self.anchor = (s0, self.progress(s0))
        self.total = int(total)

    def __call__(self, step: int) -> float:
        if self.anchor is None:  # the plain curves, exactly as before re-sizing existed
            if self.kind == "poly":
                return poly_factor(step, self.total, self.exponent)
            return cosine_factor(step, self.total, self.warmup)
        if self.kind == "cosine" and self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        q = self.progress(step)
        if self.kind == "poly":
            return (1.0 - q) ** self.exponent
        return 0.5 * (1.0 + math.cos(math.pi * q))


def build_optimizer_and_scheduler(params, opt_config, total_steps: int, steps_per_epoch: int):
    """(optimizer, LambdaLR scheduler, LrSchedule) from an `OptimizerConfig`."""
    import torch

    if opt_config.name == "sgd":
        optimizer = torch.optim.SGD(
            params, lr=opt_config.lr, momentum=opt_config.momentum, nesterov=opt_config.nesterov, weight_decay=opt_config.weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(params, lr=opt_config.lr, weight_decay=opt_config.weight_decay)
    schedule = LrSchedule(opt_config.schedule, total_steps, opt_config.poly_exponent, opt_config.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return optimizer, scheduler, schedule
