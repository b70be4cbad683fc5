import pytest

from medseg.errors import ConfigError
from medseg.training.config import load_train_config
from medseg.training.schedule import LrSchedule, cosine_factor, poly_factor


def test_unknown_key_is_refused_with_its_name(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: unet3d, configuration: 3d}\nepohcs: 3\n")
    with pytest.raises(ConfigError, match="epohcs"):
        load_train_config(path)


def test_overrides_win_and_none_is_ignored(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: unet3d, configuration: 3d}\nepochs: 7\n")
    assert load_train_config(path, {"epochs": 2, "seed": None}).epochs == 2
    assert load_train_config(path).optimizer.lr == 0.01


def test_poly_and_cosine_curves():
    assert poly_factor(0, 100) == 1.0 and poly_factor(100, 100) == 0.0
    assert poly_factor(50, 100) == pytest.approx(0.5**0.9)
    assert cosine_factor(0, 10, warmup=2) == 0.5 and cosine_factor(2, 10, warmup=2) == 1.0
    assert cosine_factor(10, 10) == pytest.approx(0.0, abs=1e-12)
    s = LrSchedule("poly", 100)
    s.total = 200  # --epochs extends a run: the same step is now earlier on the curve
    assert s(50) == pytest.approx(0.75**0.9)


@pytest.mark.parametrize("setting, field, found", [
    ("patch_size: [0, 16, 16]", "patch_size.0", "0"),
    ("patch_size: [16, -8, 16]", "patch_size.1", "-8"),
    ("patch_size: [16]", "patch_size", "[16]"),
    ("batch_size: 0", "batch_size", "0"),
    ("optimizer: {lr: -1}", "optimizer.lr", "-1"),
    ("optimizer: {lr: 0}", "optimizer.lr", "0"),
    ("optimizer: {momentum: 1.5}", "optimizer.momentum", "1.5"),
    ("optimizer: {weight_decay: -0.1}", "optimizer.weight_decay", "-0.1"),
    ("epochs: 0", "epochs", "0"),
    ("iterations_per_epoch: -3", "iterations_per_epoch", "-3"),
    ("validate_every: 0", "validate_every", "0"),
    ("grad_clip: 0", "grad_clip", "0"),
    ("num_workers: -1", "num_workers", "-1"),
    ("val_overlap: 1.0", "val_overlap", "1.0"),
    ("foreground_oversampling: 1.5", "foreground_oversampling", "1.5"),
    ("augment: {flip: 2}", "augment.flip", "2"),
    ("loss: {deep_supervision_decay: 0}", "loss.deep_supervision_decay", "0"),
    ("model: {name: unet3d, configuration: 3d, features_per_stage: [32, 0]}", "model.features_per_stage.1", "0"),
])
def test_out_of_range_values_are_one_line_errors_naming_file_and_field(tmp_path, setting, field, found):
    path = tmp_path / "c.yaml"
    head = "" if setting.startswith("model:") else "model: {name: unet3d, configuration: 3d}\n"
    path.write_text(head + setting + "\n")
    with pytest.raises(ConfigError) as info:
        load_train_config(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: field '{field}': found {found};"), text


def test_out_of_range_value_from_the_cli_exits_1_with_one_line(tmp_path, capsys):
    from medseg.cli.main import main

    path = tmp_path / "c.yaml"
    path.write_text("model: {name: unet3d, configuration: 3d}\noptimizer: {lr: -1}\n")
    with pytest.raises(SystemExit) as info:
        main(["train", str(tmp_path), "--config", str(path)])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optimizer.lr" in err[0] and "Traceback" not in err[0]


def test_width_scales_the_plans_features_and_the_resolved_config_records_them(tmp_path):
    from training.conftest import tiny_plan

    from medseg.models import build_model
    from medseg.training.loop import effective_plan

    path = tmp_path / "c.yaml"
    path.write_text("model: {name: unet3d, configuration: 3d, width: 0.5}\n")
    plan = tiny_plan()  # features 4, 8
    resolved = load_train_config(path).resolve_with_plan(plan)
    assert resolved.model.features_per_stage == [2, 4] and resolved.model.width == 1.0
    assert type(resolved).model_validate(resolved.model_dump(mode="json")) == resolved  # a resumed run reloads it
    conf = effective_plan(plan, resolved).configurations["3d"]
    net = build_model("unet3d", conf, in_channels=1, num_classes=3, spacing=plan.target_spacing)
    assert [m.out_channels for m in net.modules() if hasattr(m, "out_channels")][0] == 2

    path.write_text("model: {name: unet3d, configuration: 3d, width: 0.5, features_per_stage: [8, 16]}\n")
    with pytest.raises(ConfigError, match="set one of them") as info:
        load_train_config(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
