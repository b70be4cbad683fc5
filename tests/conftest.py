"""Shared fixtures. Golden tests read the real files in ../shared/data (see its README)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real test data; tests that need it skip (with this reason) when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (it sits beside the repository on developer machines and CI)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Run every test on one torch thread. Tests use tiny tensors, where OpenMP threads that wait
    on each other cost far more than they give (measured on a loaded 2-core machine: a 16^3
    DeepLab step 1.6 s on two threads vs 0.02 s on one), and several tests start subprocesses
    (torchrun ranks, loader workers) that would otherwise oversubscribe the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
