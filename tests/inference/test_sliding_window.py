"""The sliding window is exact for a known function: a network doubling its input.

Exact up to float32 rounding of the weighted average (a few ulps, hence rtol 5e-6).
"""

from __future__ import annotations

import pytest
import torch

from medseg.inference.sliding_window import (
    gaussian_importance_map,
    sliding_window_predict,
    sliding_window_predict_2d,
    window_starts,
)
from medseg.precision import resolve_precision


def mult_two(batch: torch.Tensor) -> torch.Tensor:
    return 2 * batch


@pytest.mark.parametrize("shape", [(1, 17, 23, 11), (2, 9, 30, 13)])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.7])
@pytest.mark.parametrize("gaussian", [True, False])
def test_doubling_network_gives_twice_the_input(shape, overlap, gaussian):
    image = torch.rand(shape) + 0.5
    out = sliding_window_predict(image, mult_two, (8, 7, 5), overlap=overlap, batch_size=3, gaussian=gaussian)
    assert out.shape == image.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, 2 * image, rtol=5e-6, atol=0)


def test_image_smaller_than_patch_is_padded_and_cropped_back():
    image = torch.rand(1, 5, 12, 3) + 0.5
    calls = []

    def net(batch):
        calls.append(tuple(batch.shape))
        return torch.cat([2 * batch, -batch], dim=1)

    out = sliding_window_predict(image, net, (8, 8, 8), overlap=0.5)
    assert all(c[2:] == (8, 8, 8) for c in calls)
    assert out.shape == (2, 5, 12, 3)
    torch.testing.assert_close(out[0], 2 * image[0], rtol=5e-6, atol=0)
    torch.testing.assert_close(out[1], -image[0], rtol=5e-6, atol=0)


def test_float16_accumulation_is_close_and_returns_float32():
    image = torch.rand(1, 21, 19, 17)
    out = sliding_window_predict(image, mult_two, (8, 8, 8), accumulate_dtype=torch.float16)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, 2 * image, rtol=2e-3, atol=2e-3)


def test_bf16_precision_plan_runs_channels_last_under_autocast():
    image = torch.rand(1, 12, 12, 12)
    plan = resolve_precision("bf16", "cpu")
    seen = {}

    def net(batch):
        seen["channels_last"] = batch.is_contiguous(memory_format=torch.channels_last_3d)
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        return 2 * batch

    out = sliding_window_predict(image, net, (8, 8, 8), precision=plan)
    assert seen == {"channels_last": True, "autocast": True}
    torch.testing.assert_close(out, 2 * image, rtol=5e-6, atol=0)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_2d_network_slice_by_slice(slice_axis):
    image = torch.rand(2, 7, 9, 11) + 0.5
    seen = []

    def net2d(batch):
        seen.append(batch.ndim)
        return 2 * batch

    patch = [6, 5]
    out = sliding_window_predict_2d(image, net2d, patch, slice_axis=slice_axis, overlap=0.5, batch_size=4)
    assert set(seen) == {4}
    torch.testing.assert_close(out, 2 * image, rtol=5e-6, atol=0)


def test_windows_cover_every_voxel_and_gaussian_peaks_in_the_centre():
    for size, patch in [(10, 10), (11, 4), (100, 33)]:
        starts = window_starts(size, patch, 0.5)
        covered = set()
        for s in starts:
            covered.update(range(s, s + patch))
        assert covered == set(range(size)) and starts[-1] == size - patch
    g = gaussian_importance_map((9, 9, 9))
    assert g[4, 4, 4] == 1 and g.min() > 0 and g[0, 4, 4] < g[2, 4, 4] < g[4, 4, 4]


def test_mirroring_averages_over_all_flips():
    from medseg.inference.tta import mirror_axes_combinations, mirrored

    assert len(mirror_axes_combinations(3)) == 8 and mirror_axes_combinations(2)[0] == ()
    x = torch.arange(24.0).reshape(1, 1, 2, 3, 4)
    # a flip-equivariant network is unchanged by mirroring
    torch.testing.assert_close(mirrored(mult_two, 3)(x), 2 * x)

    # a network adding its voxel index along the last axis: mirroring averages index and
    # reversed index, i.e. adds (n - 1) / 2 everywhere
    def add_position(batch):
        return batch + torch.arange(batch.shape[-1], dtype=batch.dtype)

    torch.testing.assert_close(mirrored(add_position, 3)(x), x + 1.5)
