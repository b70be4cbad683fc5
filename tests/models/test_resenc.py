"""The residual-encoder U-Net (`encoder: residual`, nnU-Net's ResEnc): the block's pooled skip,
ResEnc-M's blocks per stage, one-conv decoder stages, shapes and gradients like the plain U-Net,
and one-line config errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg.errors import ConfigError
from medseg.models import build_model, count_parameters
from medseg.models.unet import RESENC_M_BLOCKS, ConvBlock, ResEncBlock

TOPOLOGY = {"features_per_stage": [8, 16, 32, 32], "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 1], [2, 2, 2]]}


def _resenc(**options):
    torch.manual_seed(0)
    return build_model("unet3d", TOPOLOGY, in_channels=2, num_classes=3, encoder="residual", **options)


def test_the_skip_of_a_strided_block_is_average_pooling():
    """With its residual branch silenced (last norm's affine 0), a stride-2 block is LeakyReLU of the
    input averaged over 2x2x2: nothing of it dropped, as a strided 1x1 conv would drop 7/8."""
    block = ResEncBlock(3, 4, 4, [3, 3, 3], [2, 2, 2], "instance")
    with torch.no_grad():
        block.norm2.weight.zero_()
        block.norm2.bias.zero_()
    x = torch.randn(2, 4, 6, 8, 10)
    assert torch.allclose(block(x), F.leaky_relu(F.avg_pool3d(x, 2), 0.01), atol=1e-6)
    widen = ResEncBlock(3, 4, 8, [3, 3, 3], [1, 1, 1], "instance")  # channels change: a 1x1 conv + norm
    assert [type(m).__name__ for m in widen.skip] == ["Conv3d", "InstanceNorm3d"]
    assert len(ResEncBlock(3, 8, 8, [3, 3, 3], [1, 1, 1], "instance").skip) == 0  # the identity


def test_resenc_m_blocks_per_stage_and_one_conv_decoder():
    model = _resenc(decoder_convs=1)
    blocks = [sum(isinstance(m, ResEncBlock) for m in stage) for stage in model.encoder]
    assert blocks == list(RESENC_M_BLOCKS[:4]) == [1, 3, 4, 6]
    assert isinstance(model.encoder[0][0], ConvBlock) and not hasattr(model.encoder[0][0], "conv2")  # the stem
    assert all(not hasattr(dec, "conv2") for dec in model.decoder)
    chosen = _resenc(blocks_per_stage=[1, 1, 2, 2])
    assert [sum(isinstance(m, ResEncBlock) for m in stage) for stage in chosen.encoder] == [1, 1, 2, 2]
    assert count_parameters(chosen) < count_parameters(model.__class__(3, 2, 3, **TOPOLOGY, encoder="residual"))


def test_shapes_and_gradients_match_the_plain_unet_on_odd_sizes():
    x = torch.randn(1, 2, 37, 51, 29)
    plain = build_model("unet3d", TOPOLOGY, in_channels=2, num_classes=3, deep_supervision=True).train()
    model = _resenc(deep_supervision=True, decoder_convs=1).train()
    outputs = model(x)
    assert [o.shape for o in outputs] == [o.shape for o in plain(x)]
    assert outputs[0].shape == (1, 3, 37, 51, 29)
    sum(o.square().mean() for o in outputs).backward()
    for name, p in model.named_parameters():  # DDP needs a gradient for every parameter
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (1, 3, 37, 51, 29)


def test_residual_options_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="blocks_per_stage") as info:
        _resenc(blocks_per_stage=[1, 2])
    assert "4 positive counts" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="encoder: residual"):
        build_model("unet3d", TOPOLOGY, in_channels=2, num_classes=3, blocks_per_stage=[1, 1, 1, 1])
    with pytest.raises(ConfigError):
        build_model("unet3d", TOPOLOGY, in_channels=2, num_classes=3, encoder="resnet")
