"""Pieces shared by the model families: validation of the plan's topology, norm and activation specs."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import ConfigError

NORMS = ("instance", "batch")


def conv_cls(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv3d if spatial_dims == 3 else nn.Conv2d


class Conv3d(nn.Conv3d):
    """nn.Conv3d (same parameters and state dict) that trains in float32 where torch's CPU bf16
    convolution returns a wrong weight gradient: under CPU bf16 autocast, along a stride-1 axis whose
    input is longer than 1 and shorter than the kernel (measured with torch 2.13 on an AVX512-BF16 CPU:
    a 2-voxel axis at kernel 3, 2-4 voxels at kernel 5; every call, values up to 1e37 or NaN; the
    forward pass and the input gradient are right). Such maps are thin, so float32 costs little.
    `build_model` gives every 3D network this class (`use_safe_conv3d`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _cpu_bf16_weight_grad_is_wrong(self, x):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def _cpu_bf16_weight_grad_is_wrong(conv: nn.Conv3d, x: torch.Tensor) -> bool:
    """True when this call would train `conv` through the wrong CPU bf16 weight gradient (`Conv3d`)."""
    return (x.device.type == "cpu" and torch.is_grad_enabled() and conv.weight.requires_grad
            and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16 and not exporting()
            and any(s == 1 and 1 < n < k for n, k, s in zip(x.shape[2:], conv.kernel_size, conv.stride)))


def use_safe_conv3d(model: nn.Module) -> nn.Module:
    """Turn every plain nn.Conv3d of `model` (MONAI's blocks included) into `Conv3d`, in place: the
    same parameters, a float32 weight gradient where the CPU bf16 one is wrong. Returns `model`."""
    for module in model.modules():
        if type(module) is nn.Conv3d:
            module.__class__ = Conv3d
    return model


def norm_spec(norm: str) -> tuple:
    """MONAI norm spec; instance norm with learnable affine as nnU-Net uses."""
    if norm not in NORMS:
        raise ConfigError(f"model option norm={norm!r} is not supported; expected one of {', '.join(NORMS)}")
    return ("instance", {"affine": True}) if norm == "instance" else ("batch", {})


class _ChannelsLastInstanceNorm:
    """Instance norm that leaves a channels-last input channels-last.

    torch's `instance_norm` views (N, C, *S) as (1, N*C, *S), which a channels-last tensor cannot
    be, so it copies to NCDHW and the next convolution copies back: 19% of a bf16 inference step
    of nnU-Net's Hippocampus U-Net. Each sample of a channels-last batch is already a
    channels-last (1, C, *S) tensor, and batch norm over one sample with batch statistics is
    instance norm, so it runs in place of the copies; same values (tests/models), 2.5x faster
    on this layer. Batch norm's channels-last kernel vectorises over channels, so with fewer than
    32 bytes of channels per voxel (8 bf16 channels) the copies are faster and are kept (a 96^3
    map of 8 channels in bf16: 14 ms this way, 4 ms with the copies).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (exporting() or self.track_running_stats or x.is_contiguous() or not x.is_contiguous(memory_format=_channels_last(x.dim()))
                or x.shape[1] * x.element_size() < 32):
            return super().forward(x)
        samples = [F.batch_norm(x[n : n + 1], None, None, self.weight, self.bias, True, 0.0, self.eps) for n in range(x.shape[0])]
        return samples[0] if len(samples) == 1 else torch.cat(samples)


def exporting() -> bool:
    """True while torch traces or exports the network (ONNX, TorchScript, torch.export): sizes are then
    symbolic, so shape-dependent branches take their general form (always pad; the plain instance norm,
    one InstanceNormalization op, instead of the per-sample channels-last batch norms)."""
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_exporting()


def _channels_last(ndim: int) -> torch.memory_format:
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


class InstanceNorm3d(_ChannelsLastInstanceNorm, nn.InstanceNorm3d):
    """nn.InstanceNorm3d (same parameters and state dict) that keeps channels-last tensors channels-last."""


class InstanceNorm2d(_ChannelsLastInstanceNorm, nn.InstanceNorm2d):
    """nn.InstanceNorm2d (same parameters and state dict) that keeps channels-last tensors channels-last."""


def norm_layer(norm: str, spatial_dims: int, channels: int) -> nn.Module:
    """The torch module for `norm`: instance norm with learnable affine (as nnU-Net), or batch norm."""
    norm_spec(norm)  # validates the name
    if norm == "instance":
        return (InstanceNorm3d if spatial_dims == 3 else InstanceNorm2d)(channels, affine=True)
    return (nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d)(channels)


def act_spec() -> tuple:
    return ("leakyrelu", {"inplace": True, "negative_slope": 0.01})


def validate_topology(
    spatial_dims: int,
    features_per_stage: Sequence[int],
    strides: Sequence[Sequence[int] | int],
    kernel_sizes: Sequence[Sequence[int] | int] | None,
) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """Check the plan's per-stage features/strides/kernels and expand scalars to one value per axis."""
    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims={spatial_dims}; expected 2 or 3")
    features = [int(f) for f in features_per_stage]
    if len(features) < 2:
        raise ConfigError(f"features_per_stage has {len(features)} stage(s); expected at least 2 (e.g. [32, 64, 128])")
    if len(strides) != len(features):
        raise ConfigError(
            f"strides has {len(strides)} stages but features_per_stage has {len(features)}; give one stride per stage"
        )
    if kernel_sizes is None:
        kernel_sizes = [3] * len(features)
    if len(kernel_sizes) != len(features):
        raise ConfigError(
            f"kernel_sizes has {len(kernel_sizes)} stages but features_per_stage has {len(features)}; give one per stage"
        )

    def per_axis(value, what: str) -> list[int]:
        v = [int(value)] * spatial_dims if isinstance(value, int) else [int(x) for x in value]
        if len(v) != spatial_dims or min(v) < 1:
            raise ConfigError(f"{what} {list(value) if not isinstance(value, int) else value} is invalid; expected {spatial_dims} positive ints")
        return v

    strides = [per_axis(s, "stride") for s in strides]
    kernel_sizes = [per_axis(k, "kernel size") for k in kernel_sizes]
    if any(s != 1 for s in strides[0]):
        raise ConfigError(f"the first stage's stride is {strides[0]}; expected all ones so the output has the input's size")
    return features, strides, kernel_sizes
