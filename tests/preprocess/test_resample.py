"""Resampling gives the same grid whatever the memory order of its input (NIfTI arrays are Fortran-ordered)."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.preprocess.resample import resize3d


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("coarse_axis", [None, 2])
def test_fortran_and_c_ordered_inputs_resample_alike(order, coarse_axis):
    rng = np.random.default_rng(0)
    c_array = rng.normal(size=(17, 12, 9)).astype(np.float32)
    f_array = np.asfortranarray(c_array)
    flipped = np.array(c_array[::-1, :, ::-1], order="F")  # as a reoriented NIfTI volume
    new_shape = (23, 8, 5)
    expected = resize3d(c_array, new_shape, order, coarse_axis)
    assert expected.shape == new_shape
    np.testing.assert_allclose(resize3d(f_array, new_shape, order, coarse_axis), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(resize3d(flipped, new_shape, order, coarse_axis),
                               resize3d(np.ascontiguousarray(flipped), new_shape, order, coarse_axis), rtol=0, atol=1e-5)
