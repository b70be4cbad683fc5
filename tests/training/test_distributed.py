"""DDP for every model and preset on the real Hippocampus plan (4 stages, 32-256 features), gloo on CPU."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from medseg.errors import ConfigError

# name -> (preset, model options replacing the preset's); deep supervision on and off for the U-Nets
VARIANTS = {
    "unet3d_ds": ("unet3d", {"deep_supervision": True}),
    "unet3d_plain": ("unet3d", {"deep_supervision": False}),
    "unet3d_cpu": ("unet3d_cpu", None),
    "unet2d_ds": ("unet2d", {"deep_supervision": True}),
    "unet2d_plain": ("unet2d", {"deep_supervision": False}),
    "deeplabv3plus3d": ("deeplabv3plus3d", None),
    "deeplabv3plus2d": ("deeplabv3plus2d", None),
    "segformer3d_cpu": ("segformer3d_cpu", None),
    "segformer2d": ("segformer2d", None),
}


def _config(preset: str, options: dict | None) -> dict:
    """The preset, shrunk to a 2-iteration deterministic run on small patches (global batch 2)."""
    cfg = yaml.safe_load(Path(f"configs/{preset}.yaml").read_text())
    if options is not None:
        cfg["model"]["options"] = {**cfg["model"]["options"], **options}
    three_d = cfg["model"]["configuration"] == "3d"
    cfg.update(epochs=1, iterations_per_epoch=2, batch_size=2, patch_size=[16, 16, 16] if three_d else [24, 32],
               num_workers=0, precision="fp32", deterministic=True, validate_every=1, val_overlap=0.0)
    return cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


# presets not in the torchrun matrix (for time), still checked for unused parameters
OTHER_PRESETS = {"segformer3d": ("segformer3d", None), "unet2d_cpu": ("unet2d_cpu", None), "resenc3d_cpu": ("resenc3d_cpu", None)}


@pytest.mark.parametrize("name", list(VARIANTS) + list(OTHER_PRESETS))
def test_every_parameter_gets_a_gradient_on_the_hippocampus_topology(name, _hippocampus_template):
    """What DDP (find_unused_parameters=False) needs: no parameter outside the loss's graph."""
    from medseg.losses import DeepSupervisionLoss, build_loss
    from medseg.models import build_model
    from medseg.preprocess.plan import Plan

    preset, options = {**VARIANTS, **OTHER_PRESETS}[name]
    cfg = _config(preset, options)
    plan = Plan.load(_hippocampus_template / "plan.json")
    patch = cfg["patch_size"]
    conf = plan.configurations[cfg["model"]["configuration"]]
    assert list(conf.features_per_stage) == [32, 64, 128, 256]  # the real plan's 4 stages
    conf = conf.model_copy(update={"patch_size": patch, "batch_size": 2})  # as training's effective plan
    torch.manual_seed(0)
    model = build_model(cfg["model"]["name"], conf, in_channels=1, num_classes=3, spacing=plan.target_spacing,
                        **cfg["model"]["options"]).train()
    out = model(torch.randn(1, 1, *patch))
    deep = bool(cfg["model"]["options"].get("deep_supervision"))
    assert isinstance(out, list) == deep
    if deep:
        assert len(out) == 2  # 3 decoder levels, the deepest dropped (nnU-Net's weight 0)
    loss = DeepSupervisionLoss(build_loss("dice_ce"))(out, torch.randint(0, 3, (1, 1, *patch)))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_deeplab_refuses_deep_supervision_in_one_line():
    from medseg.models import build_model

    with pytest.raises(ConfigError) as info:
        build_model("deeplabv3plus3d", {"features_per_stage": [8, 16], "strides": [[1] * 3, [2] * 3]}, in_channels=1, num_classes=3,
                    deep_supervision=True)
    assert "\n" not in str(info.value) and "deep_supervision" in str(info.value)


@pytest.mark.slow
def test_two_process_torchrun_matrix_matches_one_process(hippocampus_workdir, tmp_path, dead_tracking_uri):
    """Every model and preset, deep supervision on and off, 2 ranks (gloo): identical weights on both
    ranks, and in deterministic mode the loss curve and validation Dice of a 1-process run at the
    same global batch."""
    from medseg.training.config import TrainConfig
    from medseg.training.loop import train

    # validation (shared out over the ranks) on a 3D and a 2D variant, fold 2 (2 validation cases);
    # the others train on every case (fold none) to keep the matrix short
    matrix = [[name, _config(*VARIANTS[name]), 2 if name in ("unet3d_ds", "unet2d_plain") else None, False] for name in VARIANTS]
    # per-rank RNG on --resume: with dropout each rank's masks come from its own torch RNG, so a rank
    # restoring another rank's state would end on other weights than the uninterrupted run
    dropout = _config("unet3d", {"deep_supervision": True, "dropout": 0.2})
    dropout.update(epochs=2, iterations_per_epoch=1, deterministic=True)
    resume_pair = [["dropout_full", dropout, None, False], ["dropout_resumed", dropout, None, True]]
    (tmp_path / "matrix.json").write_text(json.dumps(matrix + resume_pair))
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=dead_tracking_uri)
    proc = _torchrun(["tests/training/ddp_matrix.py", str(hippocampus_workdir), str(tmp_path / "matrix.json"), str(tmp_path)], env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    single_dir = hippocampus_workdir.parent / "single"
    import shutil

    shutil.copytree(hippocampus_workdir, single_dir, ignore=shutil.ignore_patterns("models"))
    for rank in ranks:
        assert rank["dropout_resumed"]["sha256"] == rank["dropout_full"]["sha256"]
        assert rank["dropout_resumed"]["losses"] == rank["dropout_full"]["losses"]
    for name, config, fold, _ in matrix:
        r0, r1 = ranks[0][name], ranks[1][name]
        assert r0["sha256"] == r1["sha256"], name  # DDP kept the replicas identical
        assert r0["losses"] == r1["losses"] and r0["val_dice"] == r1["val_dice"], name
        assert bool(r0["val_dice"]) == (fold is not None), name
        one = train(single_dir, TrainConfig.model_validate(config), preset_name=name, fold=fold)
        assert r0["losses"] == pytest.approx(one.train_losses, rel=1e-4), name
        assert r0["val_dice"] == pytest.approx(one.val_dice, abs=1e-4), name
        assert (hippocampus_workdir / "models" / name / f"fold_{'none' if fold is None else fold}" / "model_best.pt").is_file()


@pytest.mark.slow
def test_torchrun_cli_reports_once_and_saves_every_ranks_rng(tiny_workdir, tmp_path, dead_tracking_uri):
    """The issue's command (`torchrun --nproc_per_node 2 -m medseg train WORK --config unet3d_cpu`),
    shortened: identical weights on both ranks, one report, each rank's own RNG state in the
    checkpoint, and the loss curve of one process (resume per rank: the matrix test's dropout pair)."""
    from medseg.training.config import load_train_config
    from medseg.training.loop import train

    cfg = yaml.safe_load(Path("configs/unet3d_cpu.yaml").read_text())
    cfg.update(epochs=2, iterations_per_epoch=2, validate_every=5, num_workers=0, precision="fp32", deterministic=True)
    (tmp_path / "cpu.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=dead_tracking_uri)
    proc = _torchrun(["-m", "medseg", "train", str(tiny_workdir), "--config", str(tmp_path / "cpu.yaml"), "--fold", "0"], env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    sums = dict(re.findall(r"rank (\d)/2: final weights sha256 ([0-9a-f]{64})", proc.stderr))
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"], proc.stderr[-2000:]
    assert proc.stdout.count("epoch ") == 2 and proc.stdout.count("validation Dice") == 1  # only rank 0 reports
    state = torch.load(tiny_workdir / "models" / "cpu" / "fold_0" / "training_state.pt", weights_only=True)
    assert state["epoch"] == 1 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # each rank's own
    losses = [float(x) for x in re.findall(r"epoch \d/2: loss ([0-9.]+)", proc.stdout)]
    one = train(_copy_without_models(tiny_workdir, tmp_path / "single"), load_train_config(tmp_path / "cpu.yaml"),
                preset_name="cpu", fold=0)
    assert losses == pytest.approx(one.train_losses, abs=1e-4)  # printed to 4 decimals


def _copy_without_models(src: Path, dst: Path) -> Path:
    import shutil

    return Path(shutil.copytree(src, dst, ignore=shutil.ignore_patterns("models")))
