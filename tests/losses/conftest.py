"""Run these tests on one torch thread: on a shared, loaded 2-core machine OpenMP threads that
wait on each other make tiny convolutions and norms 50-100x slower (measured: 1.6 s vs 0.02 s)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
