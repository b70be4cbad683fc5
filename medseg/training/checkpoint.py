"""Training state for exact resume: optimizer, scheduler, grad scaler, epoch, RNG states.

Saved as `training_state.pt` in the bundle folder next to the weights; written to a temporary
name and renamed so an interrupted write never leaves a broken checkpoint.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np

STATE_FILE = "training_state.pt"


def rng_states() -> dict[str, Any]:
    """The python, numpy and torch global RNG states."""
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_states(states: dict[str, Any]) -> None:
    import torch

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """torch.save `state` atomically (tmp + rename)."""
    import torch

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Load a training state written by `save_state` (our own file: RNG states need full unpickling)."""
    import torch

    return torch.load(Path(path), map_location="cpu", weights_only=False)


def save_weights(path: str | os.PathLike, state_dict: dict[str, Any]) -> Path:
    """A plain state_dict loadable with torch.load(weights_only=True), written atomically."""
    return save_state(path, {k: v.detach().cpu().contiguous() for k, v in state_dict.items()})
