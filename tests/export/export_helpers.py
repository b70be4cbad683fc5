"""Helpers of the export tests (a module of its own: test files import it by name)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from module_loader import load_module

REPO = Path(__file__).resolve().parents[2]
_inference = load_module(REPO / "tests" / "inference" / "conftest.py", "_export_helpers_inference")


def blob_volume(seed: int = 1, shape=(37, 29, 21)):
    """A 3 mm scan of bright balls (the tiny bundle's task) of an odd size: several windows, padding at edges."""
    from medseg.volume import Volume

    x, _ = _inference.blob_batch(np.random.default_rng(seed), 1, shape=shape)
    return Volume(x[0, 0].numpy(), np.diag([3.0, 3.0, 3.0, 1.0]))
