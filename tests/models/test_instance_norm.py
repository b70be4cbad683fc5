"""The channels-last instance norm equals torch's instance norm, forward and backward, and keeps the layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medseg.models.common import InstanceNorm2d, InstanceNorm3d


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("batch", [1, 3])
def test_matches_torch_instance_norm_on_channels_last_input(spatial_dims, batch):
    torch.manual_seed(0)
    ours_cls, ref_cls = (InstanceNorm3d, nn.InstanceNorm3d) if spatial_dims == 3 else (InstanceNorm2d, nn.InstanceNorm2d)
    fmt = torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
    ours, ref = ours_cls(8, affine=True), ref_cls(8, affine=True)  # 8 float32 channels: the channels-last path
    assert set(ours.state_dict()) == set(ref.state_dict())
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-1, 1)
    ours.load_state_dict(ref.state_dict())

    shape = (batch, 8, 9, 11, 7)[: 2 + spatial_dims]
    x = (torch.randn(shape) * 3 + 2).contiguous(memory_format=fmt)
    x_ours = x.clone().requires_grad_()
    x_ref = x.contiguous().requires_grad_()
    y_ours, y_ref = ours(x_ours), ref(x_ref)
    assert y_ours.is_contiguous(memory_format=fmt), "the output must stay channels-last"
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-5, atol=1e-5)

    upstream = torch.randn(shape)
    (y_ours * upstream).sum().backward()
    (y_ref * upstream).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels", [16, 4])  # 4 bf16 channels: too narrow for the channels-last kernel
def test_bf16_autocast_matches_and_contiguous_input_takes_torch_path(channels):
    torch.manual_seed(0)
    ours, ref = InstanceNorm3d(channels, affine=True), nn.InstanceNorm3d(channels, affine=True)
    x = torch.randn(2, channels, 8, 10, 6).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_cl = ours(x.contiguous(memory_format=torch.channels_last_3d))
        y_ref = ref(x)
        y_contig = ours(x)
    assert y_cl.dtype == y_ref.dtype
    assert y_cl.is_contiguous(memory_format=torch.channels_last_3d) == (channels == 16)
    torch.testing.assert_close(y_cl.float(), y_ref.float(), rtol=0, atol=2e-2)  # bf16 rounding of the outputs
    assert y_contig.is_contiguous()
    torch.testing.assert_close(y_contig, y_ref, rtol=0, atol=0)
