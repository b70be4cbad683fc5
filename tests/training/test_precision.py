import numpy as np
import pytest
import torch

import medseg.precision as precision_mod
from medseg.precision import Precision, resolve_precision
from medseg.training.loop import train


@pytest.fixture
def no_bf16(monkeypatch):
    monkeypatch.setattr(precision_mod, "cpu_has_bf16", lambda: False)


@pytest.fixture
def has_bf16(monkeypatch):
    monkeypatch.setattr(precision_mod, "cpu_has_bf16", lambda: True)


def test_forced_values_are_kept(has_bf16):
    for p in ("fp32", "bf16", "fp16"):
        plan = resolve_precision(p, "cpu")
        assert plan.resolved is Precision(p)
        assert plan.channels_last  # on the CPU every precision is faster channels-last
        assert not plan.use_grad_scaler  # GradScaler only for CUDA fp16


def test_auto_uses_bf16_channels_last_where_supported(has_bf16):
    plan = resolve_precision("auto", "cpu")
    assert plan.resolved is Precision.bf16 and plan.memory_format(3) is torch.channels_last_3d


def test_auto_falls_back_to_fp32_without_bf16_hardware(tiny_config, no_bf16, tiny_workdir, dead_tracking_uri):
    plan = resolve_precision("auto", "cpu")
    assert plan.resolved is Precision.fp32 and plan.autocast_dtype is None
    assert plan.describe().startswith("fp32 on cpu")
    cfg = tiny_config(epochs=1, iterations_per_epoch=1, precision="auto")
    result = train(tiny_workdir, cfg, preset_name="unet3d", fold=0)
    assert result.precision == "fp32"


@pytest.mark.parametrize("trained_in", ["bf16", "fp32"])
def test_bundle_trained_in_one_precision_predicts_in_the_other(trained_in, tiny_config, tiny_workdir, dead_tracking_uri):
    from medseg.bundle import load_bundle
    from medseg.inference.sliding_window import sliding_window_predict
    from medseg.preprocess.cache import load_case

    cfg = tiny_config(epochs=1, precision=trained_in)
    result = train(tiny_workdir, cfg, preset_name="unet3d", fold=0)
    bundle = load_bundle(result.bundle_dir)
    assert bundle.meta["precision"] == trained_in
    state = torch.load(result.bundle_dir / "model_best.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())  # weights stay fp32
    net = bundle.build_network()
    image = torch.from_numpy(np.array(load_case(tiny_workdir, "case_00").image))
    fp32 = sliding_window_predict(image, net, [16, 16, 16], precision=resolve_precision("fp32", "cpu"))
    bf16 = sliding_window_predict(image, net, [16, 16, 16], precision=resolve_precision("bf16", "cpu"))
    assert fp32.shape == (3, *image.shape[1:]) and torch.isfinite(fp32).all()
    assert (fp32 - bf16).abs().max() < 0.1 * fp32.abs().max() + 0.05  # same network, bf16 rounding only
