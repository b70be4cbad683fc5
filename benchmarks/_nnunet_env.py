"""A private virtual environment with nnU-Net v2, for the benchmarks that compare against it.

Kept apart from medseg's .venv so neither constrains the other. torch is pinned to the release
medseg's Makefile installs so pip reuses the local wheel where there is one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ENV_DIR = Path(__file__).resolve().parent / ".venv-nnunet"
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")


def ensure_nnunet_env() -> Path:
    """Create the environment on first use; return the folder holding its executables."""
    bin_dir = ENV_DIR / "bin"
    marker = ENV_DIR / ".complete"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "venv", str(ENV_DIR)], check=True)
        pip = [str(bin_dir / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run(pip + [TORCH_SPEC], check=True)
        # the pin again, or pip upgrades torch to satisfy nnunetv2's torchvision (which the
        # benchmarks never import): both tools must run on the same torch build
        subprocess.run(pip + ["nnunetv2", TORCH_SPEC], check=True)
        marker.touch()
    return bin_dir


if __name__ == "__main__":
    print(ensure_nnunet_env())
