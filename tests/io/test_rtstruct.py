"""RTSTRUCT: contours in patient space, rasterised back on the source grid, valid per dciodvfy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.io.dicom import load_dicom_series
from medseg.io.dicom import read_rtstruct, write_rtstruct

from test_dicom_seg import dciodvfy_errors


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("series", ["tcia_mr_oblique/11_HCropVolume", "tcia_mr_oblique/11-T1post-18670"])
def test_round_trip_dice_and_validation(real_data, tmp_path, series):
    src = load_dicom_series(real_data / "dicom" / series)
    shape = src.volume.spatial_shape
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1) / np.array(shape)
    labels = np.zeros(shape, np.uint8)
    labels[np.linalg.norm(grid - [0.3, 0.4, 0.5], axis=-1) < 0.2] = 1
    ring = np.linalg.norm(grid[..., :2] - [0.7, 0.6], axis=-1)
    labels[(ring < 0.2) & (ring > 0.08) & (grid[..., 2] > 0.3)] = 2  # a ROI with a hole
    out = write_rtstruct(src.volume.with_array(labels), src.datasets[::-1], tmp_path / "rt.dcm", {0: "bg", 1: "ball", 2: "ring", 3: "absent"})
    masks = read_rtstruct(out, src.volume)
    assert set(masks) == {"ball", "ring"}
    assert dice(masks["ball"], labels == 1) >= 0.95
    assert dice(masks["ring"], labels == 2) >= 0.95
    assert not masks["ring"][ndimage.binary_erosion(labels == 0, iterations=2)].any()
    assert dciodvfy_errors(out) == []
