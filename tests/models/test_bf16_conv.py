"""medseg's Conv3d: float32 training where torch's CPU bf16 convolution returns a wrong weight gradient
(a stride-1 axis longer than 1 and shorter than the kernel), bf16 everywhere else."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medseg.models import build_model
from medseg.models.common import Conv3d


def _weight_grads(conv: nn.Conv3d, size, seed=0):
    """(the weight gradient under CPU bf16 autocast, the float32 one of the same bf16-rounded inputs)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, conv.in_channels, *size, generator=g).bfloat16().float().contiguous(memory_format=torch.channels_last_3d)
    conv = conv.to(memory_format=torch.channels_last_3d)
    conv.zero_grad()
    with torch.autocast("cpu", torch.bfloat16):
        y = conv(x)
    upstream = torch.randn(y.shape, generator=g).bfloat16().float()
    y.float().backward(upstream)
    weight = conv.weight.detach().bfloat16().float().requires_grad_()
    F.conv3d(x, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups).backward(upstream)
    return conv.weight.grad, weight.grad


@pytest.mark.parametrize("kernel, stride, groups, size", [
    (3, 1, 1, (2, 8, 8)),         # a 2-voxel axis at kernel 3: the gradient torch's bf16 kernel gets wrong on AVX512-BF16
    (3, 1, 1, (2, 3, 2)),
    (5, 1, 1, (4, 6, 6)),         # 2-4 voxels at kernel 5
    (3, 1, 16, (2, 8, 8)),        # depthwise, as SegFormer's Mix-FFN on its deepest maps
    (3, (1, 2, 2), 1, (2, 8, 8)),  # a patch embedding that keeps the thin axis
])
def test_the_weight_gradient_under_cpu_bf16_matches_float32_on_thin_maps(kernel, stride, groups, size):
    torch.manual_seed(0)
    conv = Conv3d(16, 16, kernel, stride=stride, padding=kernel // 2, groups=groups)
    for seed in range(3):
        got, want = _weight_grads(conv, size, seed)
        assert torch.isfinite(got).all()
        assert (got - want).abs().max() <= 0.02 * want.abs().max()


def test_bf16_is_kept_where_the_gradient_is_right_and_at_inference():
    conv = Conv3d(4, 4, 3, padding=1)
    thick, thin = torch.randn(1, 4, 6, 6, 6), torch.randn(1, 4, 2, 6, 6)
    with torch.autocast("cpu", torch.bfloat16):
        assert conv(thick).dtype == torch.bfloat16  # the fast path
        assert conv(thin).dtype == torch.float32  # the float32 weight gradient
        with torch.no_grad():
            assert conv(thin).dtype == torch.bfloat16  # nothing to train: no cost at inference
    assert conv(thin).dtype == torch.float32 and torch.allclose(conv(thin), F.conv3d(thin, conv.weight, conv.bias, padding=1))


@pytest.mark.parametrize("name", ["unet3d", "deeplabv3plus3d", "segformer3d"])
def test_build_model_gives_every_3d_convolution_the_safe_class(name):
    plan = {"patch_size": [16, 16, 16], "features_per_stage": [4, 8, 16], "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
            "kernel_sizes": [[3, 3, 3]] * 3, "spacing": [1.0, 1.0, 1.0]}
    net = build_model(name, plan, in_channels=1, num_classes=2, spacing=[1.0, 1.0, 1.0])
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    assert convs and all(type(m) is Conv3d for m in convs)  # MONAI's blocks (DeepLab) included
    plain = nn.Conv3d(convs[0].in_channels, convs[0].out_channels, convs[0].kernel_size, bias=convs[0].bias is not None)
    convs[0].load_state_dict(plain.state_dict())  # the same parameters: bundles load unchanged
