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
    """Callable step -> lr factor; `total` can be changed (when --epochs extends a run)."""

    def __init__(self, kind: str, total: int, exponent: float = 0.9, warmup: int = 0):
        self.kind, self.total, self.exponent, self.warmup = kind, int(total), exponent, int(warmup)

    def __call__(self, step: int) -> float:
        if self.kind == "poly":
            return poly_factor(step, self.total, self.exponent)
        if self.kind == "cosine":
            return cosine_factor(step, self.total, self.warmup)
        raise ValueError(f"unknown schedule {self.kind!r}")


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
