"""Z-score normalisation: exact statistics and values whatever the input's dtype and memory order."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.preprocess.normalize import _mean_std, normalize
from medseg.preprocess.plan import ChannelNormalization


def layouts(array: np.ndarray):
    yield "C", array
    yield "Fortran", np.asfortranarray(array)
    yield "cropped, flipped", array[2:-1, ::-1, 1:]
    yield "singleton axis", array[:, :, :1]


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64])
def test_chunked_statistics_equal_numpys_for_every_layout(dtype):
    rng = np.random.default_rng(0)
    base = (rng.normal(size=(13, 11, 9)) * 300).astype(dtype)
    for name, x in layouts(base):
        mean, std = _mean_std(x, chunk=50)  # many slabs
        assert mean == pytest.approx(x.mean(dtype=np.float64), rel=1e-12, abs=1e-9), name
        assert std == pytest.approx(x.std(dtype=np.float64), rel=1e-12), name


def test_zscore_of_a_fortran_int16_volume_equals_the_cast_then_normalised_values():
    rng = np.random.default_rng(1)
    image = np.asfortranarray(rng.integers(-1000, 2000, size=(1, 20, 16, 12)).astype(np.int16))
    out = normalize(image, [ChannelNormalization(scheme="zscore", use_nonzero_mask=False)])
    x = image[0].astype(np.float32)
    mean, std = x.mean(dtype=np.float64), x.std(dtype=np.float64)
    expected = (x - np.float32(mean)) / np.float32(std)
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_allclose(out[0], expected, rtol=1e-6, atol=1e-6)
    assert abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-5
