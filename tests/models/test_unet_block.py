"""medseg's U-Net block against MONAI's UnetBasicBlock, and a U-Net that builds without MONAI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from medseg.models.unet import ConvBlock


@pytest.mark.parametrize(
    ("spatial_dims", "kernel", "stride", "norm"),
    [(3, [3, 3, 3], [2, 2, 2], "instance"), (3, [3, 3, 1], [2, 2, 1], "instance"), (2, [3, 3], [1, 1], "batch")],
)
def test_conv_block_is_monai_unet_basic_block(spatial_dims, kernel, stride, norm):
    """Same parameter names and the same outputs, so weights move between the two unchanged."""
    from monai.networks.blocks.dynunet_block import UnetBasicBlock

    from medseg.models.common import act_spec, norm_spec

    torch.manual_seed(0)
    monai_block = UnetBasicBlock(spatial_dims, 3, 8, kernel_size=kernel, stride=stride, norm_name=norm_spec(norm), act_name=act_spec())
    ours = ConvBlock(spatial_dims, 3, 8, kernel_size=kernel, stride=stride, norm=norm)
    state = monai_block.state_dict()
    assert set(ours.state_dict()) == set(state)
    for p in monai_block.parameters():  # non-trivial affine parameters, so a swapped norm would show
        p.data.uniform_(0.5, 1.5)
    ours.load_state_dict(monai_block.state_dict())
    x = torch.randn(2, 3, *[9, 11, 7][:spatial_dims])
    monai_block.eval(), ours.eval()
    with torch.no_grad():
        expected, got = monai_block(x), ours(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_building_and_running_a_unet_does_not_import_monai():
    code = (
        "import sys, torch\n"
        "from medseg.models import build_model\n"
        "net = build_model('unet3d', {'features_per_stage': [4, 8], 'strides': [[1]*3, [2]*3]}, in_channels=1, num_classes=2)\n"
        "net(torch.zeros(1, 1, 8, 8, 8))\n"
        "print('monai' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
