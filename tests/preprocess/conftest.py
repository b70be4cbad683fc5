"""Tiny synthetic MSD-style datasets written to tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


def save_nifti(array: np.ndarray, path: Path, spacing=(1.0, 1.0, 1.0)) -> None:
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))


def write_msd(root: Path, n_cases: int, shape=(24, 20, 16), spacings=None, seed: int = 0) -> Path:
    """An MSD folder with `n_cases` cases: a box (label 1) and a ball (label 2) in noise."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(n_cases):
        cid = f"case_{i:03d}"
        label = np.zeros(shape, np.uint8)
        label[4:10, 5:12, 3:9] = 1
        idx = np.indices(shape)
        label[((idx[0] - 16) ** 2 + (idx[1] - 10) ** 2 + (idx[2] - 9) ** 2) < 16] = 2
        image = (rng.normal(50, 10, shape) + 40 * label).astype(np.float32)
        image[:2] = 0
        spacing = spacings[i] if spacings else (1.0, 1.0, 1.0)
        save_nifti(image, root / "imagesTr" / f"{cid}.nii.gz", spacing)
        save_nifti(label, root / "labelsTr" / f"{cid}.nii.gz", spacing)
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    meta = {
        "name": "Synthetic",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "box", "2": "ball"},
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def msd_factory(tmp_path):
    def make(n_cases: int, **kwargs) -> Path:
        return write_msd(tmp_path / "dataset", n_cases, **kwargs)

    return make


@pytest.fixture
def write_nifti():
    return save_nifti
