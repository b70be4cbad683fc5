"""An exponential moving average of the weights (`weight_ema: <decay>` in a training config).

After every optimizer step the averaged copy moves towards the live weights:
avg <- d * avg + (1 - d) * live, with d = min(decay, (1 + n) / (10 + n)) after n updates, so the
first updates are not tied to the random initialisation (the warm-up of timm's ModelEma). The live
weights train as before; validation, `model_best.pt`, `model_last.pt` and so the bundle use the
average. Buffers (BatchNorm statistics) are the live model's. `training_state.pt` keeps both, so a
resumed run continues the same average.
"""

from __future__ import annotations


def _ema_with_warmup(decay: float):
    """AveragedModel's multi_avg_fn: one foreach lerp per device and dtype group."""
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    def update(averaged, current, num_averaged) -> None:
        n = float(num_averaged)
        get_ema_multi_avg_fn(min(decay, (1.0 + n) / (10.0 + n)))(averaged, current, num_averaged)

    return update


def averaged_copy(model, decay: float):
    """A `torch.optim.swa_utils.AveragedModel` of `model` (its `.module` is the averaged network);
    `update_parameters(model)` after each step. The first update copies the live weights."""
    from torch.optim.swa_utils import AveragedModel

    return AveragedModel(model, multi_avg_fn=_ema_with_warmup(decay), use_buffers=False)


def state_of(averaged) -> dict:
    """The average as a training state holds it: the network's weights and the update count."""
    return {"weights": {k: v.detach().cpu().clone() for k, v in averaged.module.state_dict().items()},
            "updates": int(averaged.n_averaged)}


def load_state(averaged, state: dict) -> None:
    """Inverse of `state_of`."""
    averaged.module.load_state_dict(state["weights"])
    averaged.n_averaged.fill_(int(state["updates"]))
