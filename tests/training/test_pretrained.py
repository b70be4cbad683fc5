"""`model.options.pretrained`: a fresh segformer2d run starts from a local Hugging Face folder, a resumed
run keeps its own weights, and the bundle it writes needs the folder no more."""

from __future__ import annotations

import shutil

import torch
import yaml

SIZES = dict(widths=[8, 16, 16, 16], heads=[1, 2, 2, 2], depths=[1, 1, 1, 1], reductions=[8, 4, 2, 1], decoder_width=16)


def _hf_folder(path):
    from transformers import SegformerConfig, SegformerModel

    config = SegformerConfig(num_channels=3, hidden_sizes=SIZES["widths"], depths=SIZES["depths"],
                             num_attention_heads=SIZES["heads"], sr_ratios=SIZES["reductions"], drop_path_rate=0.0)
    torch.manual_seed(5)
    model = SegformerModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    model.save_pretrained(path)


def test_a_fresh_run_starts_from_the_folder_and_its_bundle_needs_it_no_more(tiny_workdir, dead_tracking_uri, tmp_path):
    from safetensors.torch import load_file

    from medseg.bundle import load_bundle
    from medseg.models.hf_segformer import hub_to_medseg
    from medseg.training.config import TrainConfig
    from medseg.training.loop import train

    folder = tmp_path / "mit"
    _hf_folder(folder)
    cfg = yaml.safe_load(open("configs/segformer2d.yaml"))
    cfg["model"]["options"].update(SIZES, pretrained=str(folder))
    cfg.update(epochs=2, iterations_per_epoch=1, validate_every=1, num_workers=0, precision="fp32", batch_size=2)
    config = TrainConfig.model_validate(cfg)
    lines: list[str] = []
    result = train(tiny_workdir, config, preset_name="sf2", fold=0, echo=lines.append, max_minutes=0)
    assert result.stopped_early
    assert any(line.startswith("pretrained: ") and "(encoder)" in line for line in lines), lines
    # the plan's 16x16 patch gives strides 4, 2, 1, 1: the checkpoint's 3x3 kernels still fit
    expected = hub_to_medseg(load_file(folder / "model.safetensors"), in_channels=1)
    state = torch.load(result.bundle_dir / "model_last.pt", weights_only=True)
    stem = "stages.0.embed.conv.weight"
    assert (state[stem] - expected[stem]).abs().max() < 0.05 < expected[stem].abs().max()  # one warm-up step away

    shutil.rmtree(folder)  # resume and serving need no checkpoint folder
    lines.clear()
    resumed = train(tiny_workdir, config, preset_name="sf2", fold=0, echo=lines.append, resume=True)
    assert not any(line.startswith("pretrained: ") for line in lines)
    net = load_bundle(resumed.bundle_dir).build_network()
    assert net(torch.zeros(1, 1, 16, 16)).shape == (1, 3, 16, 16)
