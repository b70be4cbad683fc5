"""DeepLabv3+ in 2D or 3D: residual encoder, atrous (dilated) convolutions, ASPP, low-level decoder.

MONAI offers no DeepLab; this one is built from MONAI's `Convolution` blocks. The encoder follows the
plan's stages; once the cumulative stride along an axis would exceed `output_stride`, that axis stops
downsampling and its dilation grows instead (Chen et al. 2018), keeping resolution while widening
the receptive field.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from pydantic import Field, PositiveInt
from torch import nn

from medseg.errors import ConfigError
from medseg.models import ModelOptions, ModelPlan
from medseg.models.common import act_spec, norm_spec, validate_topology


class DeepLabOptions(ModelOptions):
    """The config's `model.options` for deeplabv3plus2d/3d (see `DeepLabV3Plus`)."""

    output_stride: Literal[8, 16] = 16
    atrous_rates: list[PositiveInt] | None = None
    aspp_channels: PositiveInt | None = None
    low_level_channels: PositiveInt | None = None
    blocks_per_stage: int = Field(2, ge=1)
    norm: Literal["instance", "batch"] = "instance"
    deep_supervision: bool = False  # refused when true: DeepLabv3+ has one output


def build_deeplab(plan: ModelPlan, options: DeepLabOptions) -> "DeepLabV3Plus":
    """The registry's builder: the plan's stages, strides and kernels, one output per head channel."""
    return DeepLabV3Plus(plan.spatial_dims, plan.in_channels, plan.out_channels, plan.features_per_stage, plan.strides,
                         plan.kernel_sizes, **options.model_dump())


class ResidualBlock(nn.Module):
    """(conv, norm, act, conv, norm) + projected identity, then act. (B, C_in, *S) -> (B, C_out, *S / stride)."""

    def __init__(self, spatial_dims, in_channels, out_channels, kernel_size, stride, dilation, norm):
        super().__init__()
        common = dict(spatial_dims=spatial_dims, kernel_size=kernel_size, dilation=dilation, norm=norm, bias=False)
        self.conv1 = Convolution(in_channels=in_channels, out_channels=out_channels, strides=stride, act=act_spec(), **common)
        self.conv2 = Convolution(in_channels=out_channels, out_channels=out_channels, act=None, **common)
        self.skip = None
        if in_channels != out_channels or any(s != 1 for s in stride):
            self.skip = Convolution(
                spatial_dims, in_channels, out_channels, strides=stride, kernel_size=1, act=None, norm=norm, bias=False
            )
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.skip is None else self.skip(x)
        return self.act(self.conv2(self.conv1(x)) + identity)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, one dilated 3x3 branch per rate and an image-pooling branch."""

    def __init__(self, spatial_dims, in_channels, out_channels, rates: Sequence[int], norm):
        super().__init__()
        common = dict(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, norm=norm, act=act_spec(), bias=False)
        self.branches = nn.ModuleList([Convolution(kernel_size=1, **common)])
        self.branches.extend(Convolution(kernel_size=3, dilation=int(r), **common) for r in rates)
        # no norm on the pooled branch: instance norm of a single voxel is undefined
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool3d(1) if spatial_dims == 3 else nn.AdaptiveAvgPool2d(1),
            Convolution(spatial_dims, in_channels, out_channels, kernel_size=1, norm=None, act=act_spec(), bias=True),
        )
        self.project = Convolution(
            spatial_dims, out_channels * (len(rates) + 2), out_channels, kernel_size=1, norm=norm, act=act_spec(), bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3Plus(nn.Module):
    """(B, C, *S) -> (B, num_classes, *S) logits for any spatial size S.

    Options: `output_stride` (8 or 16), `atrous_rates` (default (6, 12, 18) at stride 16, doubled at 8),
    `aspp_channels` (default the last stage's features), `low_level_channels` (default 3/16 of
    aspp_channels, as 48/256 in the paper), `blocks_per_stage` (residual blocks per stage), `norm`.
    Low-level features come from the deepest encoder stage (before the last) whose stride is <= 4.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        features_per_stage: Sequence[int],
        strides: Sequence[Sequence[int]],
        kernel_sizes: Sequence[Sequence[int]] | None = None,
        *,
        output_stride: int = 16,
        atrous_rates: Sequence[int] | None = None,
        aspp_channels: int | None = None,
        low_level_channels: int | None = None,
        blocks_per_stage: int = 2,
        norm: str = "instance",
        deep_supervision: bool = False,
    ):
        super().__init__()
        features, strides, kernel_sizes = validate_topology(spatial_dims, features_per_stage, strides, kernel_sizes)
        if output_stride not in (8, 16):
            raise ConfigError(f"model option output_stride={output_stride}; expected 8 or 16")
        if deep_supervision:
            raise ConfigError("deep_supervision is not available for DeepLabv3+ (one output); set model.deep_supervision: false")
        if blocks_per_stage < 1:
            raise ConfigError(f"model option blocks_per_stage={blocks_per_stage}; expected >= 1")
        if atrous_rates is None:
            atrous_rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        norm_ = norm_spec(norm)
        aspp_channels = int(aspp_channels or features[-1])
        low_level_channels = int(low_level_channels or max(8, round(aspp_channels * 48 / 256)))
        self.interp_mode = "trilinear" if spatial_dims == 3 else "bilinear"

        cumulative = [1] * spatial_dims
        dilation = [1] * spatial_dims
        stage_strides = []  # cumulative stride of each stage's output
        self.encoder = nn.ModuleList()
        channels = in_channels
        for f, s, k in zip(features, strides, kernel_sizes):
            applied = []
            for d in range(spatial_dims):
                if cumulative[d] * s[d] > output_stride:
                    dilation[d] *= s[d]
                    applied.append(1)
                else:
                    cumulative[d] *= s[d]
                    applied.append(s[d])
            blocks = [ResidualBlock(spatial_dims, channels, f, k, applied, list(dilation), norm_)]
            blocks += [ResidualBlock(spatial_dims, f, f, k, [1] * spatial_dims, list(dilation), norm_) for _ in range(blocks_per_stage - 1)]
            self.encoder.append(nn.Sequential(*blocks))
            stage_strides.append(max(cumulative))
            channels = f
        candidates = [i for i in range(len(features) - 1) if stage_strides[i] <= 4]
        self.low_level_stage = candidates[-1]

        self.aspp = ASPP(spatial_dims, features[-1], aspp_channels, atrous_rates, norm_)
        self.low_level = Convolution(
            spatial_dims, features[self.low_level_stage], low_level_channels, kernel_size=1, norm=norm_, act=act_spec(), bias=False
        )
        conv = dict(spatial_dims=spatial_dims, out_channels=aspp_channels, kernel_size=3, norm=norm_, act=act_spec(), bias=False)
        self.decoder = nn.Sequential(
            Convolution(in_channels=aspp_channels + low_level_channels, **conv), Convolution(in_channels=aspp_channels, **conv)
        )
        self.head = (nn.Conv3d if spatial_dims == 3 else nn.Conv2d)(aspp_channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        low = None
        for i, stage in enumerate(self.encoder):
            x = stage(x)
            if i == self.low_level_stage:
                low = x
        x = self.aspp(x)
        low = self.low_level(low)
        x = F.interpolate(x, size=low.shape[2:], mode=self.interp_mode, align_corners=False)
        x = self.head(self.decoder(torch.cat([x, low], dim=1)))
        return F.interpolate(x, size=size, mode=self.interp_mode, align_corners=False)
