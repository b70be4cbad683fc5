"""`weight_ema`: a moving average of the weights that validation and the bundle use (medseg.training.weight_average)."""

import shutil

import pytest
import torch

from medseg.training import checkpoint as ckpt
from medseg.training.loop import train
from medseg.training.weight_average import averaged_copy


def test_the_average_starts_at_the_live_weights_then_follows_them_with_a_warmed_up_decay():
    net = torch.nn.Linear(3, 2)
    averaged = averaged_copy(net, decay=0.5)
    with torch.no_grad():
        net.weight.fill_(1.0)
    averaged.update_parameters(net)  # the first update copies
    assert torch.equal(averaged.module.weight, net.weight)
    with torch.no_grad():
        net.weight.fill_(3.0)
    averaged.update_parameters(net)  # one update done: d = min(0.5, 2/11)
    d = 2 / 11
    assert torch.allclose(averaged.module.weight, torch.full((2, 3), d * 1.0 + (1 - d) * 3.0))
    for _ in range(200):  # d reaches the decay: the average keeps half of the past
        averaged.update_parameters(net)
    before = averaged.module.weight.clone()
    with torch.no_grad():
        net.weight.fill_(5.0)
    averaged.update_parameters(net)
    assert torch.allclose(averaged.module.weight, 0.5 * before + 0.5 * 5.0)


def test_validation_and_the_bundle_use_the_averaged_weights(tiny_config, tiny_workdir, dead_tracking_uri):
    from medseg.bundle import load_bundle
    from medseg.precision import Precision, resolve_precision
    from medseg.training.validation import validate

    result = train(tiny_workdir, tiny_config(weight_ema=0.9), preset_name="unet3d", fold=0)
    state = ckpt.load_state(result.bundle_dir / ckpt.STATE_FILE)
    last = torch.load(result.bundle_dir / "model_last.pt", weights_only=True)
    averaged = state["averaged"]["weights"]
    assert state["averaged"]["updates"] == 2 * 3  # every optimizer step
    assert ckpt.tensors_sha256(last) == ckpt.tensors_sha256(averaged)
    assert ckpt.tensors_sha256(averaged) != ckpt.tensors_sha256(state["model"])  # the live weights moved on
    assert state["best_sha256"] in {ckpt.tensors_sha256(averaged), ckpt.tensors_sha256(
        torch.load(result.bundle_dir / "model_best.pt", weights_only=True))}

    bundle = load_bundle(result.bundle_dir)  # the last epoch's validation scored the average
    net = bundle.build_network()
    net.load_state_dict(last)
    config = tiny_config(weight_ema=0.9).resolve_with_plan(bundle.plan)
    dice = validate(net, tiny_workdir, _val_ids(tiny_workdir), bundle.plan, config,
                    resolve_precision(Precision.fp32, "cpu"), "cpu", bundle.labels)
    assert dice == pytest.approx(result.val_dice)


def _val_ids(workdir):
    from medseg.data.splits import fold_cases, load_or_create_splits
    from medseg.preprocess.cache import list_cached_cases

    cases = list_cached_cases(workdir)
    return fold_cases(load_or_create_splits(workdir, cases, seed=12345), 0, cases)[1]


@pytest.mark.slow
def test_a_resumed_run_continues_the_same_average(tiny_config, tiny_workdir, tmp_path, dead_tracking_uri):
    other = shutil.copytree(tiny_workdir, tmp_path / "other")
    cfg = tiny_config(epochs=3, deterministic=True, validate_every=5, weight_ema=0.8)
    full = train(tiny_workdir, cfg, preset_name="unet3d", fold=1)
    first = train(other, cfg, preset_name="unet3d", fold=1, max_minutes=0)  # stops after one epoch
    assert first.stopped_early
    resumed = train(other, cfg, preset_name="unet3d", fold=1, resume=True)
    assert resumed.weights_sha256 == full.weights_sha256
    for name in ("model_last.pt", "model_best.pt"):
        a = torch.load(full.bundle_dir / name, weights_only=True)
        b = torch.load(resumed.bundle_dir / name, weights_only=True)
        assert ckpt.tensors_sha256(a) == ckpt.tensors_sha256(b), name
