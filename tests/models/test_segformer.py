"""SegFormer 2D/3D: shapes on odd and anisotropic inputs, gradients everywhere, spatial-reduction key
lengths, the paper's sizes, overfitting one case, a bf16-trained bundle predicting in fp32."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from medseg.errors import ConfigError
from medseg.losses import build_loss
from medseg.models import build_model, count_gflops, count_parameters
from medseg.models.segformer import EfficientAttention, stage_strides

ODD = {2: (37, 51), 3: (37, 51, 29)}
# a small SegFormer for the tests: 4 stages of one block each
TINY = dict(widths=[8, 16, 16, 16], heads=[1, 2, 2, 2], depths=[1, 1, 1, 1], decoder_width=16)


def _build(dims: int, patch=None, spacing=None, **options):
    torch.manual_seed(0)
    return build_model(f"segformer{dims}d", {"patch_size": patch}, in_channels=2, num_classes=3, spacing=spacing, **options)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("attention", ["sdpa", "identity"])
def test_odd_sizes_keep_their_shape_and_every_parameter_gets_a_gradient(dims, attention):
    model = _build(dims, attention=attention, **TINY).train()
    x = torch.randn(2, 2, *ODD[dims])
    out = model(x)
    assert out.shape == (2, 3, *ODD[dims])
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    has_attention = any(isinstance(m, EfficientAttention) for m in model.modules())
    assert has_attention == (attention == "sdpa")


def test_anisotropic_spacing_keeps_the_thick_axis_until_the_others_catch_up():
    # 0.8 x 0.8 x 4 mm: z is not halved in the first stage (4 / 0.8 >= 2), then with x and y
    assert stage_strides(3, [64, 160, 20], [0.8, 0.8, 4.0]) == [[4, 4, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    # short sides stop halving at 4 voxels or fewer: 40 -> 10 -> 5 -> 3, 56 -> 14 -> 7 -> 4 -> 2
    assert stage_strides(3, [40, 56, 40], [1.0, 1.0, 1.0]) == [[4, 4, 4], [2, 2, 2], [2, 2, 2], [1, 2, 1]]
    assert stage_strides(2) == [[4, 4], [2, 2], [2, 2], [2, 2]]  # the paper's, given no patch or spacing
    model = _build(3, [64, 160, 20], [0.8, 0.8, 4.0], **TINY).eval()
    seen = []
    model.stages[0].register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape[2:])))
    with torch.no_grad():
        out = model(torch.randn(1, 2, 21, 30, 9))
    assert out.shape == (1, 3, 21, 30, 9) and seen == [(6, 8, 9)]  # ceil(21/4), ceil(30/4), 9/1


def test_spatial_reduction_gives_the_documented_key_lengths(monkeypatch):
    """Keys/values of a stage of map size S come from a map reduced R times: prod(ceil(S_d / R)) of them."""
    model = _build(3).eval()  # segformer3d: reductions 4, 2, 1, 1; heads 1, 2, 5, 8
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        calls.append((tuple(q.shape), tuple(k.shape)))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        model(torch.randn(1, 2, 37, 51, 29))
    # stage maps (strides 4, 2, 2, 2): 10x13x8, 5x7x4, 3x4x2, 2x2x1
    # keys: ceil(10/4) * ceil(13/4) * ceil(8/4) = 3*4*2; ceil(5/2)*ceil(7/2)*ceil(4/2) = 3*4*2; 3*4*2 and 2*2*1 unreduced
    expected = [((1, 1, 1040, 32), (1, 1, 24, 32)), ((1, 2, 140, 32), (1, 2, 24, 32)),
                ((1, 5, 24, 32), (1, 5, 24, 32)), ((1, 8, 4, 32), (1, 8, 4, 32))]
    assert calls == [e for e in expected for _ in range(2)]  # 2 blocks per stage
    assert model.stages[0].blocks[0].attn.key_length((10, 13, 8)) == 24


def test_variants_have_the_papers_sizes_and_attention_counts_in_gflops():
    # parameters as published: MiT-B0/B1/B2 with their decoders at 150 ADE20K classes (3.8 M, 13.7 M,
    # 27.5 M) and SegFormer3D at 4 MR channels, 3 classes (4.5 M)
    with torch.device("meta"):  # sizes only: no initialisation of 27 M weights
        sizes = {v: count_parameters(build_model("segformer2d", {}, in_channels=3, num_classes=150, variant=v)) for v in ("b0", "b1", "b2")}
        sizes["3d"] = count_parameters(build_model("segformer3d", {}, in_channels=4, num_classes=3))
    assert sizes["b0"] == pytest.approx(3.8e6, rel=0.02) and sizes["b1"] == pytest.approx(13.7e6, rel=0.01)
    assert sizes["b2"] == pytest.approx(27.5e6, rel=0.01) and sizes["3d"] == pytest.approx(4.5e6, rel=0.01)
    # the CPU attention kernel is counted: one unreduced head over 64 tokens of 8 channels is
    # q @ k^T and attn @ v, 2 * (2 * 64 * 64 * 8) flops, on top of the linear layers
    attn = EfficientAttention(2, 8, 1, 1)

    class Tokens(torch.nn.Module):
        def forward(self, x):
            return attn(x.flatten(2).transpose(1, 2), (8, 8))

    linear = 2 * 64 * 8 * (8 + 16 + 8)  # q, kv, proj
    assert count_gflops(Tokens(), (1, 8, 8, 8)) * 1e9 == pytest.approx(linear + 2 * 2 * 64 * 64 * 8)


def test_bad_sizes_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="not a multiple of its 3 heads") as info:
        _build(2, widths=[8, 16, 16, 16], heads=[1, 2, 3, 2])
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"option widths="):
        _build(3, widths=[8, 16, 16])
    with pytest.raises(ConfigError, match="unknown option.*deep_supervision"):
        _build(3, deep_supervision=True)


def _case(size: int, dims: int):
    """(2, 1, *S) noisy images of a bright ball/disc (the second flipped) and their (2, 1, *S) labels."""
    g = torch.Generator().manual_seed(0)
    axis = torch.arange(size, dtype=torch.float32) - size / 2 + 0.5
    r2 = sum(axis.view([-1 if i == k else 1 for i in range(dims)]) ** 2 for k in range(dims))
    label = (r2 < (size / 4) ** 2).long()[None, None]
    image = label.float() + 0.3 * torch.randn(label.shape, generator=g)
    return torch.cat([image, image.flip(2)]), torch.cat([label, label.flip(2)])


def _overfit(dims: int, steps: int) -> float:
    """Foreground Dice on its one training batch after at most `steps` AdamW steps."""
    torch.manual_seed(0)
    image, label = _case(32, dims)
    model = build_model(f"segformer{dims}d", {"patch_size": [32] * dims}, in_channels=1, num_classes=2,
                        widths=[16, 32, 32, 32], heads=[1, 2, 2, 2], depths=[1, 1, 1, 1], decoder_width=32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss_fn = build_loss("dice_ce")
    dice = 0.0
    for step in range(steps):
        optimizer.zero_grad()
        loss_fn(model(image), label).backward()
        optimizer.step()
        if step % 10 == 9:
            with torch.no_grad():
                pred = model(image).argmax(1, keepdim=True) == 1
            dice = float(2 * (pred & (label == 1)).sum() / (pred.sum() + (label == 1).sum()))
            if dice > 0.95:
                break
    return dice


def test_overfits_one_2d_case():
    assert _overfit(2, 40) > 0.95  # about 30 steps, 4 s


@pytest.mark.slow
def test_overfits_one_3d_case():
    assert _overfit(3, 80) > 0.95  # about 60 steps, 20 s


def _tiny_workdir(root):
    """A plan and cache of 5 synthetic 20x20x18 MR cases (ball = 1, box = 2; one per fold), as tests/training builds."""
    from medseg.preprocess import preprocess_case
    from medseg.preprocess.cache import write_case
    from medseg.preprocess.plan import ChannelNormalization, ConfigurationPlan, Plan
    from medseg.volume import Volume

    plan = Plan(dataset_name="Tiny", channel_names=["MR"], modalities=["MR"], labels={0: "background", 1: "ball", 2: "box"},
                target_spacing=[1.0, 1.0, 1.0], normalization=[ChannelNormalization(scheme="zscore")],
                configurations={"3d": ConfigurationPlan(spatial_dims=3, patch_size=[16, 16, 16], batch_size=2, features_per_stage=[4, 8],
                                                        strides=[[1, 1, 1], [2, 2, 2]], kernel_sizes=[[3, 3, 3], [3, 3, 3]])})
    root.mkdir(parents=True)
    plan.save(root / "plan.json")
    rng = np.random.default_rng(0)
    grid = np.indices((20, 20, 18)).transpose(1, 2, 3, 0)
    for i in range(5):
        label = np.zeros((20, 20, 18), np.uint8)
        label[np.linalg.norm(grid - rng.uniform(6, 12, size=3), axis=-1) < 4] = 1
        x = int(rng.integers(1, 10))
        label[x : x + 5, 14:18, 2:7] = 2
        image = (label * 1.5 + rng.normal(0, 0.5, label.shape)).astype(np.float32)
        write_case(root, f"case_{i:02d}", preprocess_case([Volume(image, np.eye(4))], plan, Volume(label, np.eye(4))), {})
    return root


# On a CPU with bf16 units this run used to end with wrong, often NaN, weights: torch's bf16 weight gradient of a 3D
# convolution along a 2-voxel axis is wrong there, and the tiny SegFormer's deepest maps are 2 voxels
# thin; medseg.models.common.Conv3d trains such calls in float32 (tests/models/test_bf16_conv.py).
@pytest.mark.slow
def test_bf16_trained_bundle_predicts_in_fp32(tmp_path, monkeypatch):
    """Trained under bf16 autocast + channels-last (the CPU path), saved as a bundle, rebuilt from it
    and run in fp32 and bf16 through the sliding window: fp32 weights, the same maps up to rounding."""
    from medseg.bundle import load_bundle
    from medseg.inference.sliding_window import sliding_window_predict
    from medseg.precision import resolve_precision
    from medseg.preprocess.cache import load_case
    from medseg.training.config import TrainConfig
    from medseg.training.loop import train

    with socket.socket() as s:  # tracking pointed at a port where nothing listens, as tests/training does
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{s.getsockname()[1]}")
    work = _tiny_workdir(tmp_path / "work")
    cfg = yaml.safe_load(open("configs/segformer3d_cpu.yaml"))
    cfg["model"]["options"].update(TINY)
    cfg.update(epochs=2, iterations_per_epoch=2, validate_every=1, num_workers=0, precision="bf16")
    result = train(work, TrainConfig.model_validate(cfg), preset_name="segformer3d_cpu", fold=0)
    bundle = load_bundle(result.bundle_dir)
    assert bundle.meta["precision"] == "bf16" and bundle.model_name == "segformer3d"
    state = torch.load(result.bundle_dir / "model_best.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    net = bundle.build_network()
    image = torch.from_numpy(np.array(load_case(work, "case_00").image))
    fp32 = sliding_window_predict(image, net, [16, 16, 16], precision=resolve_precision("fp32", "cpu"))
    bf16 = sliding_window_predict(image, net, [16, 16, 16], precision=resolve_precision("bf16", "cpu"))
    assert fp32.dtype == torch.float32 and fp32.shape == (3, *image.shape[1:]) and torch.isfinite(fp32).all()
    assert (fp32 - bf16).abs().max() < 0.1 * fp32.abs().max() + 0.05  # same network, bf16 rounding only


@pytest.mark.slow
def test_resumed_run_matches_an_uninterrupted_one_and_serves_with_tta_and_two_folds(tmp_path, monkeypatch):
    """Stopped after its first epoch and resumed, a deterministic run ends on the weights of an
    uninterrupted one; its bundle serves through the Predictor with mirroring TTA over two folds."""
    import shutil

    from medseg.inference.predictor import Predictor
    from medseg.training.config import TrainConfig
    from medseg.training.loop import train
    from medseg.volume import Volume

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{s.getsockname()[1]}")
    work = _tiny_workdir(tmp_path / "work")
    other = shutil.copytree(work, tmp_path / "other")
    cfg = yaml.safe_load(open("configs/segformer3d_cpu.yaml"))
    cfg["model"]["options"].update(TINY, dropout=0.1)  # dropout: a resume restoring the wrong RNG would differ
    cfg.update(epochs=2, iterations_per_epoch=2, validate_every=1, num_workers=0, precision="fp32", deterministic=True)
    config = TrainConfig.model_validate(cfg)
    whole = train(work, config, preset_name="sf", fold=0)
    assert train(other, config, preset_name="sf", fold=0, max_minutes=0).stopped_early
    resumed = train(other, config, preset_name="sf", fold=0, resume=True)
    assert resumed.weights_sha256 == whole.weights_sha256 and resumed.train_losses == whole.train_losses
    image = Volume(np.random.default_rng(1).normal(size=(23, 19, 17)).astype(np.float32), np.diag([1.0, 1.0, 1.0, 1.0]))
    out = Predictor([whole.bundle_dir, resumed.bundle_dir], device="cpu", precision="fp32", tta=True).predict([image])
    assert out.labels.array.shape == (23, 19, 17) and set(np.unique(out.labels.array)) <= {0, 1, 2}
