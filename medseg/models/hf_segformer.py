"""Start a `segformer2d` from a local Hugging Face SegFormer checkpoint folder (`model.options.pretrained`).

The folder is what `save_pretrained` writes or a Hub snapshot holds: `config.json` and
`model.safetensors` (or shards with `model.safetensors.index.json`), e.g. an ImageNet MiT-B0 encoder
(SegformerForImageClassification) or an ADE20K SegFormer (SegformerForSemanticSegmentation).
Nothing is downloaded, and `pytorch_model.bin` (a pickle) is refused, never loaded.

What is loaded: the whole encoder (patch embeddings, attention, Mix-FFN, stage norms) and, when the
decoder width matches, the decoder's per-stage projections and fusing layer. The fusing layer's
norm (a LayerNorm here, a BatchNorm there) and the classifier (the checkpoint's classes are not
ours) start from their initialisation. The first embedding's RGB kernels are adapted to the
model's input channels (summed for one channel, as timm adapts ImageNet stems; otherwise cycled
and rescaled). Keys follow the Hub's layout (`segformer.encoder.block.I.J...`), which
transformers 4 and 5 both write.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from medseg.errors import ConfigError, InputError
from medseg.extras import require

# the Hub's names inside one encoder block -> ours (a stage's blocks are stages.I.blocks.J)
_BLOCK = {
    "layer_norm_1": "norm1",
    "attention.self.query": "attn.q",
    "attention.self.sr": "attn.sr",
    "attention.self.layer_norm": "attn.sr_norm",
    "attention.output.dense": "attn.proj",
    "layer_norm_2": "norm2",
    "mlp.dense1": "ffn.fc1",
    "mlp.dwconv.dwconv": "ffn.dwconv",
    "mlp.dense2": "ffn.fc2",
}


def read_checkpoint(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json as a dict, every tensor of the safetensors file(s)) of a Hugging Face folder."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InputError(f"{folder}: no config.json; expected a Hugging Face SegFormer folder (config.json + "
                         "model.safetensors); point model.options.pretrained at the folder save_pretrained wrote")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{config_path}: not readable JSON ({exc}); re-save the checkpoint folder") from None
    load_file = require("safetensors.torch").load_file
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            raise InputError(f"{index}: not a safetensors index (no weight_map); re-save the checkpoint folder") from None
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    elif (folder / "pytorch_model.bin").is_file():
        raise InputError(f"{folder}: holds pytorch_model.bin only, a pickle, which medseg never loads; convert it once "
                         "to model.safetensors (e.g. save_pretrained(folder, safe_serialization=True) in transformers)")
    else:
        raise InputError(f"{folder}: no model.safetensors; expected the weights beside config.json")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            state.update(load_file(str(folder / name)))
        except Exception as exc:  # safetensors raises its own error types for a damaged file
            raise InputError(f"{folder / name}: not a readable safetensors file ({type(exc).__name__}); re-save the checkpoint") from None
    return config, state


def _check_config(folder: Path, config: dict, model) -> None:
    """The checkpoint's architecture must be the model's: one line naming the first difference. Strides
    may differ (an axis too short to halve keeps stride 1 with the same 3x3 kernel); kernel shapes are
    checked tensor by tensor."""
    from medseg.models.segformer import EfficientAttention, MixFFN

    stages = model.stages
    ours = {
        "hidden_sizes": [s.norm.normalized_shape[0] for s in stages],
        "depths": [len(s.blocks) for s in stages],
    }
    attn = [next((m for m in s.modules() if isinstance(m, EfficientAttention)), None) for s in stages]
    if all(a is not None for a in attn):
        ours["num_attention_heads"] = [a.heads for a in attn]
        ours["sr_ratios"] = [a.reduction for a in attn]
    ffn = [next(m for m in s.modules() if isinstance(m, MixFFN)) for s in stages]
    ours["mlp_ratios"] = [f.fc1.out_features // f.fc1.in_features for f in ffn]
    for key, value in ours.items():
        theirs = config.get(key)
        if theirs is not None and list(theirs) != value:
            raise ConfigError(f"{folder}/config.json: {key} {list(theirs)} but the model has {value}; pick the matching "
                              "model.options.variant (b0, b1, b2) or set widths/depths/heads/reductions to the checkpoint's")


def _adapt_input(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """(C, 3, k, k) RGB kernels -> (C, in_channels, k, k): summed for one channel; cycled and
    rescaled by 3 / in_channels otherwise (the response to a constant image stays the same)."""
    if weight.shape[1] == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = math.ceil(in_channels / weight.shape[1])
    return weight.repeat(1, repeat, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def hub_to_medseg(state: dict[str, torch.Tensor], in_channels: int) -> dict[str, torch.Tensor]:
    """The Hub's SegFormer keys -> `medseg.models.segformer.SegFormer` keys (keys and values fused into
    `attn.kv`, the 1x1 fusing convolution as a linear layer). Keys without a counterpart are dropped."""
    prefix = "segformer." if any(k.startswith("segformer.") for k in state) else ""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(prefix) and not key.startswith("decode_head."):
            continue  # another model's head (e.g. an ImageNet classifier): not ours
        parts = key.removeprefix(prefix).split(".")
        if parts[:2] == ["encoder", "patch_embeddings"] and len(parts) == 5 and parts[3] in ("proj", "layer_norm"):
            i, kind = parts[2], {"proj": "conv", "layer_norm": "norm"}[parts[3]]
            if i == "0" and kind == "conv" and parts[4] == "weight":
                value = _adapt_input(value, in_channels)
            out[f"stages.{i}.embed.{kind}.{parts[4]}"] = value
        elif parts[:2] == ["encoder", "layer_norm"] and len(parts) == 4:
            out[f"stages.{parts[2]}.norm.{parts[3]}"] = value
        elif parts[:2] == ["encoder", "block"] and len(parts) > 5:
            i, j, inner, leaf = parts[2], parts[3], ".".join(parts[4:-1]), parts[-1]
            if inner not in _BLOCK:
                continue  # keys and values are fused below; anything else is not ours
            out[f"stages.{i}.blocks.{j}.{_BLOCK[inner]}.{leaf}"] = value
            base = key[: key.index(inner)]
            k, v = state.get(f"{base}attention.self.key.{leaf}"), state.get(f"{base}attention.self.value.{leaf}")
            if inner == "attention.self.query" and k is not None and v is not None:
                out[f"stages.{i}.blocks.{j}.attn.kv.{leaf}"] = torch.cat([k, v])
        elif key.startswith("decode_head.linear_c.") and len(parts) == 5:
            out[f"project.{parts[2]}.{parts[4]}"] = value
        elif key == "decode_head.linear_fuse.weight":
            out["fuse.weight"] = value.flatten(1)  # (D, 4D, 1, 1) -> (D, 4D)
    return out


def load_hf_segformer(model, folder: str | Path) -> str:
    """Copy a Hugging Face SegFormer folder's weights into `model` (a 2D `SegFormer`, in place).
    Returns one line saying what was loaded and what starts from its initialisation."""
    folder = Path(folder)
    config, state = read_checkpoint(folder)
    if model.spatial_dims != 2:
        raise ConfigError(f"{folder}: Hugging Face SegFormer checkpoints are 2D; model.options.pretrained needs segformer2d")
    _check_config(folder, config, model)
    mapped = hub_to_medseg(state, model.stages[0].embed.conv.in_channels)
    if not any(k.startswith("stages.") for k in mapped):
        raise InputError(f"{folder}: no SegFormer encoder weights (segformer.encoder.*) among its {len(state)} tensors; "
                         "expected a SegformerModel, SegformerForImageClassification or SegformerForSemanticSegmentation folder")
    own = model.state_dict()
    decoder_fits = all(mapped[k].shape == own[k].shape for k in mapped if k in own and not k.startswith("stages."))
    loaded = {}
    for key, value in mapped.items():
        if key not in own or (not key.startswith("stages.") and not decoder_fits):
            continue  # identity ablation: no attention; another decoder width: decoder from its init
        if value.shape != own[key].shape:
            raise ConfigError(f"{folder}: {key} is {tuple(value.shape)} in the checkpoint, {tuple(own[key].shape)} in the model; "
                              "match model.options (variant, widths, heads, reductions) to the checkpoint's config.json, "
                              "or use a patch of at least 16 per side (a 7x7 first embedding)")
        loaded[key] = value.to(own[key].dtype)
    encoder = [k for k in own if k.startswith("stages.")]
    missing = [k for k in encoder if k not in loaded]
    if missing:  # checked before any weight is copied: the model is left as built
        raise InputError(f"{folder}: the checkpoint lacks {len(missing)} of the encoder's {len(encoder)} tensors "
                         f"(first: {missing[0]}); expected a complete SegFormer encoder")
    with torch.no_grad():
        for key, value in loaded.items():
            own[key].copy_(value)
    fresh = sorted({k.split(".")[0] for k in own if k not in loaded})
    return (f"pretrained: {len(loaded)} of {len(own)} tensors from {folder} (encoder"
            f"{' and decoder projections' if decoder_fits and any(k.startswith('project.') for k in loaded) else ''}); "
            f"from initialisation: {', '.join(fresh)}")
