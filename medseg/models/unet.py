"""Convolutional U-Net in the nnU-Net style, 2D or 3D, with a plain or a residual encoder.

Plain (nnU-Net's default): each stage is two (conv, norm, LeakyReLU) layers; the first conv of a
stage carries its stride, so the encoder downsamples by strided convolution, never by pooling.
Residual (`encoder: residual`, nnU-Net's ResEnc presets, their recommendation since 2024): a stem
conv, then per stage `blocks_per_stage` residual blocks, the first carrying the stride; the
decoder is the same, usually with one conv per stage (`decoder_convs: 1`) as in ResEnc.
Stages, features, strides and kernel sizes come from the plan's `ConfigurationPlan`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from medseg.models import ModelOptions, ModelPlan
from medseg.models.common import conv_cls, exporting, norm_layer, validate_topology


class UNetOptions(ModelOptions):
    """The config's `model.options` for unet2d/unet3d."""

    upsample: Literal["transpose", "interp"] = "transpose"  # transposed conv, or interpolation + 1x1 conv
    norm: Literal["instance", "batch"] = "instance"
    deep_supervision: bool = False  # training mode returns one output per decoder level but the deepest
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    encoder: Literal["plain", "residual"] = "plain"
    # residual only: blocks per encoder stage; null: nnU-Net ResEnc-M's 1, 3, 4, 6, 6, 6, ... cut to the plan's stages
    blocks_per_stage: list[int] | None = None
    decoder_convs: int = Field(2, ge=1, le=2)  # (conv, norm, LeakyReLU) layers per decoder stage; ResEnc uses 1


def build_unet(plan: ModelPlan, options: UNetOptions) -> "UNet":
    """The registry's builder: the plan's stages, strides and kernels, one output per head channel."""
    return UNet(plan.spatial_dims, plan.in_channels, plan.out_channels, plan.features_per_stage, plan.strides,
                plan.kernel_sizes, **options.model_dump())


class ConvBlock(nn.Module):
    """Two (conv, norm, LeakyReLU 0.01) layers; the first conv carries the stride.

    (B, C_in, *S) -> (B, C_out, *S / stride), with "same" padding. This is MONAI's `UnetBasicBlock`
    with the same parameter names (conv1.conv.weight, norm1.weight, ...), so weights move freely
    between the two; written here so that building a U-Net does not import MONAI, which costs
    `medseg infer` about 4 s of start-up per call (docs/benchmarks.md, "Inference").
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: Sequence[int],
                 stride: Sequence[int], norm: str, dropout: float = 0.0, convs: int = 2):
        super().__init__()
        self.conv1 = _conv_layer(spatial_dims, in_channels, out_channels, kernel_size, stride, dropout)
        self.norm1 = norm_layer(norm, spatial_dims, out_channels)
        if convs == 2:  # one: a decoder stage of nnU-Net's ResEnc
            self.conv2 = _conv_layer(spatial_dims, out_channels, out_channels, kernel_size, [1] * spatial_dims, dropout)
            self.norm2 = norm_layer(norm, spatial_dims, out_channels)
        self.lrelu = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lrelu(self.norm1(self.conv1(x)))
        if hasattr(self, "conv2"):
            x = self.lrelu(self.norm2(self.conv2(x)))
        return x


def _conv_layer(spatial_dims: int, c_in: int, c_out: int, kernel_size: Sequence[int], stride: Sequence[int],
                dropout: float = 0.0) -> nn.Sequential:
    """A bias-free conv with "same" padding (its output: the input's size / stride, rounded up), then dropout."""
    padding = tuple((k - s + 1) // 2 for k, s in zip(kernel_size, stride))
    layers = [("conv", conv_cls(spatial_dims)(c_in, c_out, tuple(kernel_size), stride=tuple(stride), padding=padding, bias=False))]
    if dropout:
        layers.append(("dropout", (nn.Dropout3d if spatial_dims == 3 else nn.Dropout2d)(dropout)))
    return nn.Sequential(OrderedDict(layers))


class ResEncBlock(nn.Module):
    """nnU-Net's BasicBlockD: (conv, norm, LeakyReLU, conv, norm) plus the skip, then LeakyReLU.

    (B, C_in, *S) -> (B, C_out, *S / stride). The skip is the identity, or average pooling by the
    stride and/or a 1x1 conv + norm when the size or the channels change (the "D" skip of He et al.
    2019: pooled rather than a strided 1x1 conv, which would drop most of its input; DeepLab's
    `ResidualBlock` keeps the strided one, and dilates).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: Sequence[int],
                 stride: Sequence[int], norm: str, dropout: float = 0.0):
        super().__init__()
        self.conv1 = _conv_layer(spatial_dims, in_channels, out_channels, kernel_size, stride, dropout)
        self.norm1 = norm_layer(norm, spatial_dims, out_channels)
        self.conv2 = _conv_layer(spatial_dims, out_channels, out_channels, kernel_size, [1] * spatial_dims)
        self.norm2 = norm_layer(norm, spatial_dims, out_channels)
        skip: list[nn.Module] = []
        if any(s > 1 for s in stride):
            pool = nn.AvgPool3d if spatial_dims == 3 else nn.AvgPool2d
            skip.append(pool(tuple(stride), stride=tuple(stride), ceil_mode=True))
        if in_channels != out_channels:
            skip += [conv_cls(spatial_dims)(in_channels, out_channels, kernel_size=1, bias=False),
                     norm_layer(norm, spatial_dims, out_channels)]
        self.skip = nn.Sequential(*skip)  # empty: the identity
        self.lrelu = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.skip(x)
        x = self.lrelu(self.norm1(self.conv1(x)))
        return self.lrelu(self.norm2(self.conv2(x)) + residual)


RESENC_M_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6)  # nnU-Net's ResEnc-M encoder, blocks per stage


def residual_stage(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: Sequence[int],
                   stride: Sequence[int], norm: str, dropout: float, blocks: int, stem: bool) -> nn.Sequential:
    """One encoder stage of residual blocks, the first carrying the stride; the first stage starts
    with a stem (conv, norm, LeakyReLU) that maps the image channels to the stage's features."""
    layers: list[nn.Module] = []
    if stem:
        layers.append(ConvBlock(spatial_dims, in_channels, out_channels, kernel_size, stride, norm, convs=1))
        in_channels, stride = out_channels, [1] * spatial_dims
    for b in range(blocks):
        layers.append(ResEncBlock(spatial_dims, in_channels if b == 0 else out_channels, out_channels, kernel_size,
                                    stride if b == 0 else [1] * spatial_dims, norm, dropout))
    return nn.Sequential(*layers)


class _Upsample(nn.Module):
    """Upsample (B, C_in, *S) -> (B, C_out, *S * scale) by transposed conv or interpolation + 1x1 conv.

    "interp" runs the 1x1 conv first (on the small map: cheaper, same result up to the order of two
    linear maps) and avoids the checkerboard artefacts transposed convolutions can leave.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, scale: Sequence[int], mode: str):
        super().__init__()
        self.scale = tuple(float(s) for s in scale)
        self.mode = mode
        if mode == "transpose":
            transpose = nn.ConvTranspose3d if spatial_dims == 3 else nn.ConvTranspose2d
            self.conv = transpose(in_channels, out_channels, kernel_size=tuple(scale), stride=tuple(scale), bias=False)
        else:
            self.conv = conv_cls(spatial_dims)(in_channels, out_channels, kernel_size=1, bias=False)
            self.interp_mode = "trilinear" if spatial_dims == 3 else "bilinear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.mode == "transpose":
            return x
        return F.interpolate(x, scale_factor=self.scale, mode=self.interp_mode, align_corners=False)


class UNet(nn.Module):
    """nnU-Net-style U-Net: (B, C, *S) -> (B, num_classes, *S) logits, any spatial size S.

    Inputs whose sizes are not multiples of the total stride are zero-padded at the far end inside
    `forward` and the outputs cropped back. With `deep_supervision`, training mode returns a list of
    logits, full resolution first, the k-th of spatial size ceil(S / cumulative stride of stage k),
    one per decoder level except the deepest (nnU-Net gives that one weight 0; here it does not
    exist); eval mode always returns the single full-resolution tensor.
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
        upsample: str = "transpose",
        norm: str = "instance",
        deep_supervision: bool = False,
        dropout: float = 0.0,
        encoder: str = "plain",
        blocks_per_stage: Sequence[int] | None = None,
        decoder_convs: int = 2,
    ):
        super().__init__()
        from medseg.errors import ConfigError

        features, strides, kernel_sizes = validate_topology(spatial_dims, features_per_stage, strides, kernel_sizes)
        if upsample not in ("transpose", "interp"):
            raise ConfigError(f"model option upsample={upsample!r} is not supported; expected 'transpose' or 'interp'")
        if encoder == "plain" and blocks_per_stage is not None:
            raise ConfigError("model option blocks_per_stage is for encoder: residual; drop it or set encoder: residual")
        if encoder == "residual":
            blocks = list(blocks_per_stage) if blocks_per_stage is not None else list(RESENC_M_BLOCKS[:len(features)])
            if len(blocks) != len(features) or min(blocks) < 1:
                raise ConfigError(f"model option blocks_per_stage {blocks}: expected {len(features)} positive counts, "
                                  f"one per stage of the plan (features_per_stage {features})")
        self.spatial_dims = spatial_dims
        self.deep_supervision = deep_supervision
        self.strides = strides
        self.total_stride = [math.prod(s[d] for s in strides) for d in range(spatial_dims)]
        # cumulative stride of each stage's feature map relative to the input
        self.cumulative = [[math.prod(s[d] for s in strides[: i + 1]) for d in range(spatial_dims)] for i in range(len(strides))]
        block = dict(spatial_dims=spatial_dims, norm=norm, dropout=dropout)

        self.encoder = nn.ModuleList()
        channels = in_channels
        for i, (f, s, k) in enumerate(zip(features, strides, kernel_sizes)):
            if encoder == "residual":
                self.encoder.append(residual_stage(spatial_dims, channels, f, k, s, norm, dropout, blocks[i], stem=i == 0))
            else:
                self.encoder.append(ConvBlock(in_channels=channels, out_channels=f, kernel_size=k, stride=s, **block))
            channels = f
        self.upsamples = nn.ModuleList()
        self.decoder = nn.ModuleList()
        # heads keyed by decoder level ("0" = deepest), the names a list of every level would have, so
        # bundles load in either mode. Only levels with an output get a head: every parameter then
        # receives a gradient, which DistributedDataParallel requires.
        self.heads = nn.ModuleDict()
        n_levels = len(features) - 1
        self.output_levels = self._output_levels(n_levels, deep_supervision)
        for level, i in enumerate(range(len(features) - 2, -1, -1)):  # deepest decoder stage first
            self.upsamples.append(_Upsample(spatial_dims, features[i + 1], features[i], strides[i + 1], upsample))
            self.decoder.append(
                ConvBlock(in_channels=2 * features[i], out_channels=features[i], kernel_size=kernel_sizes[i],
                          stride=[1] * spatial_dims, convs=decoder_convs, **block)
            )
            if level in self.output_levels:
                self.heads[str(level)] = conv_cls(spatial_dims)(features[i], num_classes, kernel_size=1)
        self._register_load_state_dict_pre_hook(self._drop_absent_heads)

    @staticmethod
    def _output_levels(n_levels: int, deep_supervision: bool) -> list[int]:
        """Decoder levels (0 = deepest) with an output head.

        Without deep supervision only the full-resolution level. With it every level except the
        deepest, which nnU-Net weights 0: it is dropped rather than computed and ignored.
        """
        if not deep_supervision or n_levels == 1:
            return [n_levels - 1]
        return list(range(1, n_levels))

    def _drop_absent_heads(self, state_dict, prefix, *args) -> None:
        """Ignore the side heads of weights saved with more outputs (deep supervision, older bundles)."""
        head = prefix + "heads."
        for key in [k for k in state_dict if k.startswith(head)]:
            if key[len(head):].split(".")[0] not in self.heads:
                del state_dict[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        size = x.shape[2:]
        pad = [(-n) % t for n, t in zip(size, self.total_stride)]
        if any(pad) or exporting():  # exported: the size is symbolic, a zero pad costs nothing there
            # F.pad lists the last axis first: (z_lo, z_hi, y_lo, y_hi, ...)
            x = F.pad(x, [v for p in reversed(pad) for v in (0, p)])
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        want_all = self.deep_supervision and self.training
        outputs = []
        for level, (up, dec) in enumerate(zip(self.upsamples, self.decoder)):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
            stage = len(self.decoder) - 1 - level  # encoder stage this decoder level mirrors
            if (want_all and str(level) in self.heads) or stage == 0:
                crop = [-(-n // c) for n, c in zip(size, self.cumulative[stage])]  # ceil, also of a traced size
                outputs.append(self.heads[str(level)](x)[(...,) + tuple(slice(0, c) for c in crop)])
        if want_all:
            return outputs[::-1]  # full resolution first
        return outputs[-1]
