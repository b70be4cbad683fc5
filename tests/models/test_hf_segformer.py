"""A local Hugging Face SegFormer folder as segformer2d's starting weights (`model.options.pretrained`),
checked against transformers' own SegFormer (the reference implementation) on the same weights."""

from __future__ import annotations

import pytest
import torch

from medseg.errors import ConfigError, InputError
from medseg.models import build_model, load_pretrained

# a small MiT: 4 stages of one block, the paper's reductions and kernels
SIZES = dict(widths=[8, 16, 24, 32], heads=[1, 2, 3, 4], depths=[1, 1, 1, 1], reductions=[8, 4, 2, 1], decoder_width=16)


def _hf_folder(path, semantic: bool = False, **overrides):
    """save_pretrained of a randomly initialised transformers SegFormer (every tensor random, so a
    wrong mapping cannot pass by ones and zeros lining up)."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerModel

    config = SegformerConfig(num_channels=3, num_encoder_blocks=4, hidden_sizes=SIZES["widths"], depths=SIZES["depths"],
                             num_attention_heads=SIZES["heads"], sr_ratios=SIZES["reductions"],
                             decoder_hidden_size=SIZES["decoder_width"], num_labels=5, drop_path_rate=0.0, **overrides)
    torch.manual_seed(3)
    model = (SegformerForSemanticSegmentation if semantic else SegformerModel)(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 and p.shape[0] in SIZES["widths"] else 0.0))
    model.save_pretrained(path)
    return model


def _ours(in_channels: int, **options):
    torch.manual_seed(0)
    return build_model("segformer2d", {"patch_size": (64, 64)}, in_channels=in_channels, num_classes=2, **SIZES, **options).eval()


def _stage_maps(model, x):
    maps = []
    for stage in model.stages:
        x = stage(x)
        maps.append(x)
    return maps


def test_encoder_matches_transformers_segformer_on_the_same_weights(tmp_path):
    hf = _hf_folder(tmp_path / "mit")
    ours = _ours(3, pretrained=str(tmp_path / "mit"))
    report = load_pretrained("segformer2d", ours, {"pretrained": str(tmp_path / "mit")})
    assert "from initialisation: classifier, fuse, fuse_norm, project" in report
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        theirs = hf(pixel_values=x, output_hidden_states=True).hidden_states
        mine = _stage_maps(ours, x)
    assert len(theirs) == 4
    for a, b in zip(mine, theirs):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_one_input_channel_sums_the_rgb_kernels(tmp_path):
    """A grey image through the adapted stem gives what the RGB checkpoint gives on that image repeated."""
    hf = _hf_folder(tmp_path / "mit")
    ours = _ours(1)
    load_pretrained("segformer2d", ours, {"pretrained": str(tmp_path / "mit")})
    grey = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        theirs = hf(pixel_values=grey.repeat(1, 3, 1, 1), output_hidden_states=True).hidden_states[-1]
        mine = _stage_maps(ours, grey)[-1]
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


def test_a_semantic_checkpoint_also_fills_the_decoder_projections(tmp_path):
    from safetensors.torch import load_file

    _hf_folder(tmp_path / "ade", semantic=True)
    ours = _ours(3)
    report = load_pretrained("segformer2d", ours, {"pretrained": str(tmp_path / "ade")})
    assert "decoder projections" in report and "from initialisation: classifier, fuse_norm" in report
    saved = load_file(tmp_path / "ade" / "model.safetensors")  # the Hub's layout, as transformers wrote it
    for i in range(4):
        assert torch.equal(ours.project[i].weight, saved[f"decode_head.linear_c.{i}.proj.weight"])
    assert torch.equal(ours.fuse.weight, saved["decode_head.linear_fuse.weight"].flatten(1))


def test_an_identity_ablation_takes_the_encoder_without_its_attention(tmp_path):
    _hf_folder(tmp_path / "mit")
    ours = _ours(3, attention="identity")
    report = load_pretrained("segformer2d", ours, {"pretrained": str(tmp_path / "mit")})
    assert report.startswith("pretrained: ")


def test_a_pickle_only_folder_is_refused_without_unpickling(tmp_path, monkeypatch):
    folder = tmp_path / "old"
    _hf_folder(folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")

    def no_pickles(*args, **kwargs):
        raise AssertionError("torch.load was called on a user's file")

    monkeypatch.setattr(torch, "load", no_pickles)
    with pytest.raises(InputError, match="pytorch_model.bin only, a pickle, which medseg never loads") as err:
        load_pretrained("segformer2d", _ours(3), {"pretrained": str(folder)})
    assert "\n" not in str(err.value)


def test_another_architecture_is_a_one_line_config_error(tmp_path):
    _hf_folder(tmp_path / "mit")
    ours = build_model("segformer2d", {"patch_size": (64, 64)}, in_channels=3, num_classes=2, variant="b0")
    with pytest.raises(ConfigError, match=r"config.json: hidden_sizes \[8, 16, 24, 32\] but the model has \[32, 64, 160, 256\]"):
        load_pretrained("segformer2d", ours, {"pretrained": str(tmp_path / "mit")})
    with pytest.raises(InputError, match="no config.json"):
        load_pretrained("segformer2d", ours, {"pretrained": str(tmp_path)})


def test_only_segformer2d_takes_a_checkpoint_folder():
    with pytest.raises(ConfigError, match="unknown option"):
        build_model("segformer3d", {"patch_size": (16, 16, 16)}, in_channels=1, num_classes=2, pretrained="x")


def test_an_incomplete_encoder_is_refused_and_the_model_left_as_built(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "cut"
    _hf_folder(folder)
    state = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in state.items() if "block.2.0.mlp" not in k}, folder / "model.safetensors")
    ours = _ours(3)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(InputError, match="the checkpoint lacks 6 of the encoder's") as err:
        load_pretrained("segformer2d", ours, {"pretrained": str(folder)})
    assert "\n" not in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())
