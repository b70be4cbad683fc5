"""Every registered model: odd input sizes, output shape, finite gradients, deep supervision, bf16."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medseg.errors import ConfigError
from medseg.models import MODELS, build_model, count_gflops, count_parameters, spatial_dims_of

ODD = {2: (37, 51), 3: (37, 51, 29)}
FEATURES = [8, 16, 32]


def _build(name: str, **options) -> nn.Module:
    d = spatial_dims_of(name)
    torch.manual_seed(0)
    return build_model(name, _topology(FEATURES, [[1] * d, [2] * d, [2] * d]), in_channels=2, num_classes=3, **options)


def _topology(features, strides, kernel_sizes=None) -> dict:
    """The convolution-topology fields of a plan configuration (what U-Net and DeepLab need)."""
    return {"features_per_stage": features, "strides": strides, "kernel_sizes": kernel_sizes}


def _options(name: str) -> dict:
    # deep supervision on for U-Nets so every head receives a gradient
    return {"deep_supervision": True} if name.startswith("unet") else {}


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_backward_on_odd_sizes(name):
    d = spatial_dims_of(name)
    model = _build(name, **_options(name)).train()
    x = torch.randn(1, 2, *ODD[d])
    out = model(x)
    outputs = out if isinstance(out, list) else [out]
    assert outputs[0].shape == (1, 3, *ODD[d])
    sum(o.square().mean() for o in outputs).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} received no gradient"
        assert torch.isfinite(p.grad).all(), pname
    if name.startswith("unet"):
        # 3 stages, 2 decoder levels: the deepest level's output (nnU-Net's weight 0) is not built
        assert [tuple(o.shape[2:]) for o in outputs] == [ODD[d]]
        deep = build_model(name, _topology([4, 8, 8, 8], [[1] * d] + [[2] * d] * 3), in_channels=2, num_classes=3,
                           deep_supervision=True).train()
        # 4 stages: outputs of ceil(S / 2^level) for every decoder level but the deepest, full resolution first
        assert [tuple(o.shape[2:]) for o in deep(x)] == [ODD[d], tuple((s + 1) // 2 for s in ODD[d])]
        assert sorted(deep.heads) == ["1", "2"]
        model.eval()
        with torch.no_grad():
            single = model(x)
        assert isinstance(single, torch.Tensor) and single.shape == (1, 3, *ODD[d])


@pytest.mark.parametrize("name", list(MODELS))
def test_bf16_autocast_channels_last_matches_fp32(name):
    d = spatial_dims_of(name)
    model = _build(name).eval()
    x = torch.randn(1, 2, *[s // 2 + 1 for s in ODD[d]])
    with torch.no_grad():
        ref = model(x)
        fmt = torch.channels_last_3d if d == 3 else torch.channels_last
        model = model.to(memory_format=fmt)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x.to(memory_format=fmt))
    assert low.shape == ref.shape
    assert torch.isfinite(low).all()
    # bf16 keeps ~3 significant digits; rounding accumulates over the layers but the maps agree closely
    err = (low.float() - ref).abs()
    assert err.mean() < 0.1 * ref.std(), (err.mean(), ref.std())
    assert torch.corrcoef(torch.stack([low.float().flatten(), ref.flatten()]))[0, 1] > 0.98


def test_unet_anisotropic_strides_interp_upsampling_and_batch_norm():
    model = build_model(
        "unet3d", _topology([4, 8, 8, 8], [[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 1]], [[3, 3, 1], [3, 3, 3], [3, 3, 3], [3, 3, 3]]),
        in_channels=1, num_classes=2, upsample="interp", norm="batch", deep_supervision=True,
    ).train()
    outputs = model(torch.randn(2, 1, 21, 18, 7))
    # cumulative strides (1,1,1), (2,2,1): sizes ceil(S / stride); the deepest level, (4,4,2), has no output
    assert [tuple(o.shape) for o in outputs] == [(2, 2, 21, 18, 7), (2, 2, 11, 9, 7)]
    assert any(isinstance(m, nn.BatchNorm3d) for m in model.modules())
    assert not any(isinstance(m, nn.ConvTranspose3d) for m in model.modules())


@pytest.mark.parametrize("output_stride, expected", [(16, (4, 4)), (8, (8, 8))])
def test_deeplab_output_stride_replaces_strides_by_dilation(output_stride, expected):
    model = build_model(
        "deeplabv3plus2d", _topology([4, 8, 8, 8, 8, 8], [[1, 1]] + [[2, 2]] * 5), in_channels=1, num_classes=2,
        output_stride=output_stride, atrous_rates=[2, 3],
    ).eval()
    seen = {}
    model.aspp.register_forward_pre_hook(lambda module, args: seen.update(aspp_in=tuple(args[0].shape[2:])))
    out = model(torch.randn(1, 1, 64, 64))
    assert seen["aspp_in"] == expected  # 64 / output_stride, not 64 / 32
    assert out.shape == (1, 2, 64, 64)
    dilations = {m.dilation for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)}
    assert (2, 2) in dilations and (3, 3) in dilations


def test_unknown_model_suggests_the_closest_name():
    with pytest.raises(ConfigError, match=r"unknown model 'unet3', did you mean 'unet3d'\? Known: unet2d, unet3d"):
        build_model("unet3", _topology(FEATURES, [[1] * 3] * 3), in_channels=1, num_classes=2)


def test_unknown_option_and_bad_topology_are_config_errors():
    with pytest.raises(ConfigError, match="unknown option.*upsampel"):
        _build("unet3d", upsampel="interp")
    with pytest.raises(ConfigError, match="strides has 2 stages"):
        build_model("unet2d", _topology(FEATURES, [[1, 1], [2, 2]]), in_channels=1, num_classes=2)
    with pytest.raises(ConfigError, match="upsample"):
        _build("unet2d", upsample="nearest")


def test_count_parameters_and_gflops_by_hand():
    conv = nn.Conv3d(2, 4, kernel_size=3, padding=1, bias=True)
    assert count_parameters(conv) == 2 * 4 * 27 + 4
    # each of 4 * 5*6*7 outputs takes 2*27 multiply-adds = 2 flops each
    assert count_gflops(conv, (1, 2, 5, 6, 7)) == pytest.approx(2 * 2 * 27 * 4 * 5 * 6 * 7 / 1e9)
    model = _build("unet3d")
    assert count_gflops(model, (1, 2, 16, 16, 16)) > 0 and model.training  # training flag restored


def test_weights_trained_with_deep_supervision_load_without_it():
    four = _topology([4, 8, 8, 8], [[1] * 3] + [[2] * 3] * 3)
    trained = build_model("unet3d", four, in_channels=2, num_classes=3, deep_supervision=True)
    plain = build_model("unet3d", four, in_channels=2, num_classes=3, deep_supervision=False)
    assert set(trained.state_dict()) > set(plain.state_dict())  # side heads only with deep supervision
    plain.load_state_dict(trained.state_dict())  # the full-resolution head has one name: bundles load in any mode
    x = torch.randn(1, 2, 12, 10, 9)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), trained.eval()(x))
