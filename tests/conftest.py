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
