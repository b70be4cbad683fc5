"""SegFormer in 2D and 3D: a Mix Transformer encoder and an all-MLP decoder (Xie et al. 2021; the 3D
sizing of SegFormer3D, Perera et al. 2024). Written from the papers.

Encoder: 4 stages, each an overlapping patch embedding (a strided convolution: kernel 7 stride 4 in
the first stage, kernel 3 stride 2 after; kernel 3 stride 1 along an axis that is not downsampled), N blocks of (efficient self-attention,
Mix-FFN), then a LayerNorm. Efficient self-attention takes its keys and values from a strided
convolution of ratio R (then a LayerNorm), so a stage of N tokens attends to prod(ceil(S_d / R))
keys, not N. Mix-FFN is linear -> depthwise 3x3(x3) convolution -> GELU -> linear; its convolution
gives the position information, so there are no positional encodings.
Decoder: each stage projected to a common width by a linear layer, upsampled to the first stage's
(1/4) grid, concatenated, fused by a linear layer, classified, and upsampled to the input size.

Tokens are (B, N, C) with N the spatial positions in C order; `_to_map` / `_to_tokens` move between
them and (B, C, *S) maps as views of one channels-last buffer, so a channels-last model (the CPU
path of `medseg.precision`) converts nothing.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import nn

from medseg.errors import ConfigError
from medseg.models import ModelOptions, ModelPlan
from medseg.models.common import conv_cls, exporting

# widths, depths, heads and reduction ratios per stage; the decoder's width. B0-B2: the paper's
# Table 6 (MiT-B0..B2 and their decoders); segformer3d: SegFormer3D's sizes.
VARIANTS: dict[str, dict] = {
    "b0": dict(widths=[32, 64, 160, 256], depths=[2, 2, 2, 2], heads=[1, 2, 5, 8], reductions=[8, 4, 2, 1], decoder_width=256),
    "b1": dict(widths=[64, 128, 320, 512], depths=[2, 2, 2, 2], heads=[1, 2, 5, 8], reductions=[8, 4, 2, 1], decoder_width=256),
    "b2": dict(widths=[64, 128, 320, 512], depths=[3, 4, 6, 3], heads=[1, 2, 5, 8], reductions=[8, 4, 2, 1], decoder_width=768),
    "segformer3d": dict(widths=[32, 64, 160, 256], depths=[2, 2, 2, 2], heads=[1, 2, 5, 8], reductions=[4, 2, 1, 1], decoder_width=256),
}
HALVINGS = (2, 1, 1, 1)  # stride 4, then 2, 2, 2 where spacing and patch size allow


class _SegFormerOptions(ModelOptions):
    """The config's `model.options` for segformer2d/3d. The lists (4 values, one per stage) override
    the variant's; `attention: identity` replaces every attention layer by the identity (ablation)."""

    widths: list[PositiveInt] | None = Field(None, min_length=4, max_length=4)
    depths: list[PositiveInt] | None = Field(None, min_length=4, max_length=4)
    heads: list[PositiveInt] | None = Field(None, min_length=4, max_length=4)
    reductions: list[PositiveInt] | None = Field(None, min_length=4, max_length=4)
    decoder_width: PositiveInt | None = None
    mlp_ratio: PositiveInt = 4  # Mix-FFN hidden width / stage width
    attention: Literal["sdpa", "identity"] = "sdpa"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # before the classifier (the paper uses 0.1)


class SegFormer2DOptions(_SegFormerOptions):
    variant: Literal["b0", "b1", "b2", "segformer3d"] = "b0"
    # a local Hugging Face SegFormer folder (config.json + model.safetensors) a fresh training run
    # starts from (`medseg.models.hf_segformer`); never downloaded; a bundle ignores it
    pretrained: str | None = None


class SegFormer3DOptions(_SegFormerOptions):
    variant: Literal["b0", "b1", "b2", "segformer3d"] = "segformer3d"


def stage_strides(spatial_dims: int, patch_size: Sequence[int] | None = None, spacing: Sequence[float] | None = None) -> list[list[int]]:
    """Per-stage, per-axis strides of the 4 patch embeddings: 4, 2, 2, 2 made of halvings (2 in the first
    stage), each axis halved only where nnU-Net would pool it: while its current spacing is under twice
    the finest (thick slices wait until the fine axes catch up) and its current size is at least 4
    (the deepest maps keep 2 or more voxels). `spacing` (mm, 3D only) and `patch_size` may be None."""
    spacing = [float(s) for s in spacing][:spatial_dims] if spacing is not None and spatial_dims == 3 else [1.0] * spatial_dims
    size = [int(n) for n in patch_size] if patch_size is not None else None
    strides = []
    for halvings in HALVINGS:
        stride = [1] * spatial_dims
        for _ in range(halvings):
            finest = min(spacing)
            for d in range(spatial_dims):
                if spacing[d] < 2 * finest and (size is None or size[d] >= 4):
                    stride[d] *= 2
                    spacing[d] *= 2
                    if size is not None:
                        size[d] = math.ceil(size[d] / 2)
        strides.append(stride)
    return strides


def _to_map(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """(B, N, C) tokens -> (B, C, *shape) map (a view: channels-last when the tokens are contiguous)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *shape)


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *S) map -> (B, N, C) tokens (a view for a channels-last map)."""
    return x.flatten(2).transpose(1, 2)


class PatchEmbedding(nn.Module):
    """Overlapping patch embedding: (B, C_in, *S) -> (B, prod(ceil(S / stride)), C) tokens, LayerNorm'd.

    Kernel max(3, 2s - 1) and padding kernel // 2 per axis give ceil(S / s) positions for any size S:
    the far end is padded as needed and the decoder crops back."""

    def __init__(self, spatial_dims: int, in_channels: int, width: int, stride: Sequence[int]):
        super().__init__()
        kernel = tuple(max(3, 2 * s - 1) for s in stride)
        self.conv = conv_cls(spatial_dims)(in_channels, width, kernel, stride=tuple(stride), padding=tuple(k // 2 for k in kernel))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        x = self.conv(x)
        return self.norm(_to_tokens(x)), tuple(x.shape[2:])


class EfficientAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from a map reduced by `reduction` along every
    axis (a convolution of kernel = stride = R, then a LayerNorm): (B, N, C) -> (B, N, C), attending to
    `key_length(shape)` = prod(ceil(S_d / R)) positions. R = 1: plain self-attention."""

    def __init__(self, spatial_dims: int, width: int, heads: int, reduction: int):
        super().__init__()
        self.heads, self.reduction = heads, reduction
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        if reduction > 1:
            self.sr = conv_cls(spatial_dims)(width, width, reduction, stride=reduction)
            self.sr_norm = nn.LayerNorm(width)

    def key_length(self, shape: Sequence[int]) -> int:
        return math.prod(math.ceil(n / self.reduction) for n in shape)

    def reduce(self, x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """(B, N, C) -> the (B, key_length(shape), C) tokens keys and values are made from."""
        if self.reduction == 1:
            return x
        m = _to_map(x, shape)
        pad = [(-n) % self.reduction for n in shape]
        if any(pad) or exporting():  # F.pad lists the last axis first; exported: the size is symbolic
            m = F.pad(m, [v for p in reversed(pad) for v in (0, p)])
        return self.sr_norm(_to_tokens(self.sr(m)))

    def forward(self, x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).view(b, n, self.heads, c // self.heads).transpose(1, 2)
        kv = self.kv(self.reduce(x, shape))
        k, v = kv.view(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, C / heads)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    """linear -> depthwise 3x3(x3) convolution -> GELU -> linear: (B, N, C) -> (B, N, C)."""

    def __init__(self, spatial_dims: int, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.dwconv = conv_cls(spatial_dims)(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        x = _to_tokens(self.dwconv(_to_map(self.fc1(x), shape)))
        return self.fc2(F.gelu(x))


class Block(nn.Module):
    """x + attention(LN(x)), then x + MixFFN(LN(x)). With attention="identity" the attention branch
    is gone (its parameters too, so DDP finds none unused): the block is its Mix-FFN alone."""

    def __init__(self, spatial_dims: int, width: int, heads: int, reduction: int, mlp_ratio: int, attention: str):
        super().__init__()
        self.attn = None
        if attention == "sdpa":
            self.norm1 = nn.LayerNorm(width)
            self.attn = EfficientAttention(spatial_dims, width, heads, reduction)
        self.norm2 = nn.LayerNorm(width)
        self.ffn = MixFFN(spatial_dims, width, width * mlp_ratio)

    def forward(self, x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        if self.attn is not None:
            x = x + self.attn(self.norm1(x), shape)
        return x + self.ffn(self.norm2(x), shape)


class Stage(nn.Module):
    """Patch embedding, blocks, LayerNorm: (B, C_in, *S) -> (B, C, *ceil(S / stride)) map."""

    def __init__(self, spatial_dims, in_channels, width, stride, depth, heads, reduction, mlp_ratio, attention):
        super().__init__()
        self.embed = PatchEmbedding(spatial_dims, in_channels, width, stride)
        self.blocks = nn.ModuleList(Block(spatial_dims, width, heads, reduction, mlp_ratio, attention) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, shape = self.embed(x)
        for block in self.blocks:
            x = block(x, shape)
        return _to_map(self.norm(x), shape)


class SegFormer(nn.Module):
    """(B, C_in, *S) -> (B, num_classes, *S) logits for any spatial size S.

    `strides`: the 4 patch embeddings' per-axis strides (`stage_strides`); stage k's map has size
    ceil(S / cumulative stride k). The decoder upsamples every stage by its exact factor to the first
    stage's grid and crops (the far-end padding of the embeddings), then the logits by the first
    stride to the input grid, cropped to S.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, strides: Sequence[Sequence[int]], *,
                 widths: Sequence[int], depths: Sequence[int], heads: Sequence[int], reductions: Sequence[int],
                 decoder_width: int, mlp_ratio: int = 4, attention: str = "sdpa", dropout: float = 0.0):
        super().__init__()
        for w, h in zip(widths, heads):
            if w % h:
                raise ConfigError(f"model option widths {list(widths)} / heads {list(heads)}: width {w} is not a multiple of "
                                  f"its {h} heads; give widths divisible by heads")
        self.spatial_dims = spatial_dims
        self.strides = [list(s) for s in strides]
        self.cumulative = [[math.prod(s[d] for s in self.strides[: i + 1]) for d in range(spatial_dims)] for i in range(4)]
        self.stages = nn.ModuleList()
        channels = in_channels
        for i in range(4):
            self.stages.append(Stage(spatial_dims, channels, widths[i], self.strides[i], depths[i], heads[i], reductions[i],
                                     mlp_ratio, attention))
            channels = widths[i]
        self.project = nn.ModuleList(nn.Linear(w, decoder_width) for w in widths)
        # a norm and an activation after the fusing linear layer: without them it and the classifier
        # would collapse into one linear map
        self.fuse = nn.Linear(4 * decoder_width, decoder_width, bias=False)
        self.fuse_norm = nn.LayerNorm(decoder_width)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(decoder_width, num_classes)
        self.mode = "trilinear" if spatial_dims == 3 else "bilinear"
        self.apply(_init)

    def _upsample(self, x: torch.Tensor, factor: Sequence[int], size: Sequence[int]) -> torch.Tensor:
        """(B, C, *s) -> (B, C, *size): upsampled by `factor` per axis, then cropped to `size`."""
        if any(f != 1 for f in factor):
            x = F.interpolate(x, scale_factor=tuple(float(f) for f in factor), mode=self.mode, align_corners=False)
        return x[(..., *(slice(0, n) for n in size))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        grid = maps[0].shape[2:]  # the 1/4 grid
        fused = []
        for i, (m, project) in enumerate(zip(maps, self.project)):
            m = _to_map(project(_to_tokens(m)), m.shape[2:])
            factor = [c // c0 for c, c0 in zip(self.cumulative[i], self.cumulative[0])]
            fused.append(self._upsample(m, factor, grid))
        # the stages in reverse order, as the paper concatenates them
        t = _to_tokens(torch.cat(fused[::-1], dim=1))
        t = self.classifier(self.dropout(F.relu(self.fuse_norm(self.fuse(t)))))
        return self._upsample(_to_map(t, grid), self.cumulative[0], size)


def _init(m: nn.Module) -> None:
    """Truncated-normal (std 0.02) linear layers, unit LayerNorms, He (fan-out) convolutions: the
    initialisation transformers train from scratch with. Skipped on the meta device (a bundle builds
    there before loading its weights): trunc_normal_ on meta tensors imports sympy, 10 s of start-up."""
    if any(p.is_meta for p in m.parameters(recurse=False)):
        return
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.Conv2d, nn.Conv3d)):
        fan_out = math.prod(m.kernel_size) * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def resolve_sizes(options: _SegFormerOptions) -> dict:
    """The variant's widths/depths/heads/reductions/decoder width, with the options' overrides."""
    sizes = dict(VARIANTS[options.variant])
    for key in sizes:
        if getattr(options, key) is not None:
            sizes[key] = list(getattr(options, key)) if key != "decoder_width" else getattr(options, key)
    return sizes


def build_segformer(plan: ModelPlan, options: _SegFormerOptions) -> SegFormer:
    """The registry's builder: strides from the plan's patch size and spacing, sizes from the options."""
    strides = stage_strides(plan.spatial_dims, plan.patch_size, plan.spacing)
    return SegFormer(plan.spatial_dims, plan.in_channels, plan.out_channels, strides, mlp_ratio=options.mlp_ratio,
                     attention=options.attention, dropout=options.dropout, **resolve_sizes(options))


def _register_cpu_attention_flops() -> None:
    """torch's FlopCounterMode counts the CUDA attention kernels but not the CPU one that
    scaled_dot_product_attention runs here; count it the same way, so `medseg models` includes attention."""
    from torch.utils import flop_counter

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op in flop_counter.flop_registry or op.default in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(op)
    def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


_register_cpu_attention_flops()
