import json

import numpy as np
import pytest
import torch

from cli_helpers import default_sigint
from medseg.training.loop import train


@pytest.mark.slow
def test_tiny_run_writes_bundle_and_an_mlflow_run(tiny_config, tiny_workdir, monkeypatch):
    from mlflow.tracking import MlflowClient

    from medseg.bundle import load_bundle
    from medseg.tracking import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    lines = []
    result = train(tiny_workdir, tiny_config(), preset_name="unet3d", fold=0, echo=lines.append)
    bundle_dir = tiny_workdir / "models" / "unet3d" / "fold_0"
    assert result.bundle_dir == bundle_dir
    for name in ("bundle.json", "plan.json", "config.yaml", "model_best.pt", "model_last.pt", "training_state.pt"):
        assert (bundle_dir / name).is_file(), name
    bundle = load_bundle(bundle_dir)
    assert bundle.labels == {0: "background", 1: "ball", 2: "box"}
    net = bundle.build_network()
    assert net(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
    assert len(json.loads((tiny_workdir / "splits.json").read_text())) == 5
    assert sum(line.startswith("epoch ") for line in lines) == 2

    client = MlflowClient(tracking_uri(tiny_workdir))
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["config.model.name"] == "unet3d"
    assert run.data.params["plan.dataset_name"] == "Tiny"
    assert run.data.tags["fold"] == "0" and run.data.tags["precision"] == "fp32"
    losses = client.get_metric_history(result.run_id, "train_loss")
    assert [m.step for m in losses] == [0, 1]
    assert [m.value for m in losses] == pytest.approx(result.train_losses)
    assert len(client.get_metric_history(result.run_id, "val_dice_ball")) == 2
    for key in ("val_dice_mean", "lr", "epoch_time_s", "samples_per_s"):
        assert client.get_metric_history(result.run_id, key), key
    top = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "plan.json", "splits.json", "bundle", "plots"} <= top
    assert "bundle/model_best.pt" in {a.path for a in client.list_artifacts(result.run_id, "bundle")}
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert "plots/learning_curves.png" in plots and any("overlay_" in p for p in plots)

    # the bundle names its training run, so `evaluate --run BUNDLE` scores land beside the curves
    assert bundle.mlflow_run_id == result.run_id
    from medseg.cli.main import run_argv
    from medseg.io import write_volume
    from medseg.volume import Volume

    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:5, 2:5, 2:5] = 1
    for folder in ("pred", "ref"):
        (tiny_workdir / folder).mkdir()
        write_volume(Volume(mask, np.eye(4)), tiny_workdir / folder / "case.nii.gz")
    run_argv(["evaluate", "--pred", str(tiny_workdir / "pred"), "--ref", str(tiny_workdir / "ref"),
              "-o", str(tiny_workdir / "metrics.csv"), "--workdir", str(tiny_workdir), "--run", str(bundle_dir)])
    assert client.get_run(result.run_id).data.metrics["eval_dice_mean"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("augment", [{}, {"augment": {"strength_start": 2.0, "strength_end": 0.0}}], ids=["constant", "scheduled"])
def test_resume_repeats_an_uninterrupted_run_exactly(tiny_config, tiny_workdir, tmp_path, dead_tracking_uri, augment):
    import shutil

    other = shutil.copytree(tiny_workdir, tmp_path / "other")
    cfg = tiny_config(epochs=3, deterministic=True, validate_every=5, **augment)
    full = train(tiny_workdir, cfg, preset_name="unet3d", fold=1)
    first = train(other, cfg, preset_name="unet3d", fold=1, max_minutes=0)  # stops after one epoch
    assert first.stopped_early and first.epochs_done == 1
    resumed = train(other, cfg, preset_name="unet3d", fold=1, resume=True)
    assert resumed.epochs_done == 3
    assert resumed.train_losses == full.train_losses  # bit for bit
    assert resumed.weights_sha256 == full.weights_sha256
    assert full.train_losses[0] != full.train_losses[2]  # it did learn something
    extended = train(other, tiny_config(), preset_name="unet3d", fold=1, resume=True, epochs=4)  # the run's own config wins
    assert extended.epochs_done == 4 and extended.train_losses[:3] == full.train_losses


def test_unreachable_tracking_server_does_not_stop_training(tiny_config, tiny_workdir, dead_tracking_uri):
    result = train(tiny_workdir, tiny_config(epochs=1, iterations_per_epoch=2), preset_name="unet3d", fold=0)
    assert result.epochs_done == 1 and (result.bundle_dir / "model_last.pt").is_file()
    assert result.run_id is None  # the no-op tracker: nothing was recorded, nothing failed
    assert not (tiny_workdir / "mlruns.db").exists()


def test_2d_model_trains_on_slices(tiny_config, tiny_workdir, dead_tracking_uri):
    result = train(tiny_workdir, tiny_config("unet2d", epochs=1, iterations_per_epoch=2), preset_name="unet2d", fold=None)
    assert result.bundle_dir.name == "fold_none" and np.isfinite(result.train_losses[0])
    assert result.val_dice == {}  # --fold none: every case trains, no validation


def test_the_configs_deep_supervision_decay_weights_the_training_loss(tiny_config, tiny_workdir, dead_tracking_uri, monkeypatch):
    import medseg.losses
    from medseg.losses import DeepSupervisionLoss

    decays = []

    class Recording(DeepSupervisionLoss):
        def forward(self, outputs, target):
            decays.append((self.decay, isinstance(outputs, (list, tuple))))
            return super().forward(outputs, target)

    monkeypatch.setattr(medseg.losses, "DeepSupervisionLoss", Recording)
    config = tiny_config(epochs=1, iterations_per_epoch=2, validate_every=1,
                         loss={"name": "dice_ce", "deep_supervision_decay": 1.0})
    assert config.model.options["deep_supervision"]
    train(tiny_workdir, config, preset_name="unet3d", fold=0)
    assert decays == [(1.0, True)] * 2  # every step, on the list of decoder outputs


def test_a_scheduled_augmentation_strength_follows_the_lr_schedules_progress(tiny_config, tiny_workdir, dead_tracking_uri, monkeypatch):
    import monai.transforms as mt

    import medseg.data.augment
    from medseg.training import checkpoint as ckpt

    built = []
    real = medseg.data.augment.build_train_transforms

    def recording(augment, patch_size, spacing=None, strength=1.0):
        t = real(augment, patch_size, spacing, strength)
        built.append((strength, next(x.prob for x in t.transforms if isinstance(x, mt.RandAffined))))
        return t

    monkeypatch.setattr(medseg.data.augment, "build_train_transforms", recording)
    config = tiny_config(epochs=3, validate_every=3, augment={"affine": 0.3, "strength_start": 1.0, "strength_end": 0.0})
    assert config.optimizer.schedule == "poly" and config.optimizer.warmup_epochs == 0  # progress = step / 9
    result = train(tiny_workdir, config, preset_name="unet3d", fold=0)
    strengths = [s for s, _ in built]  # the epochs' builds only: the trainer's first build calls the name it imported
    assert strengths == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert [p for _, p in built] == pytest.approx([0.3, 0.2, 0.1])
    history = ckpt.load_state(result.bundle_dir / ckpt.STATE_FILE)["history"]
    assert list(history["augment_strength"]) == ["0", "1", "2"]
    assert list(history["augment_strength"].values()) == pytest.approx(strengths)


@pytest.mark.slow
def test_compiled_training_step_matches_eager(tiny_config, tiny_workdir, tmp_path, dead_tracking_uri):
    """`compile: true` changes speed, not results: same per-epoch losses as an eager run (fp32, same seed)."""
    import shutil

    other = shutil.copytree(tiny_workdir, tmp_path / "other")
    cfg = dict(epochs=2, deterministic=True, validate_every=5)
    eager = train(tiny_workdir, tiny_config(**cfg), preset_name="unet3d", fold=1)
    compiled = train(other, tiny_config(**cfg, compile=True), preset_name="unet3d", fold=1)
    assert compiled.train_losses == pytest.approx(eager.train_losses, rel=1e-3)
    assert eager.train_losses[0] != eager.train_losses[1]


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_marks_the_run_killed(tiny_workdir, tmp_path, monkeypatch):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import yaml
    from mlflow.tracking import MlflowClient

    from medseg.tracking import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the workdir's own store
    cfg = yaml.safe_load(Path("configs/unet3d.yaml").read_text())
    cfg.update(epochs=200, iterations_per_epoch=2, validate_every=1000, num_workers=0, precision="fp32")
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "medseg", "train", str(tiny_workdir), "--config", str(tmp_path / "long.yaml"),
                             "--fold", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    deadline = time.monotonic() + 240
    for line in proc.stdout:  # wait for the first finished epoch (its checkpoint is on disk)
        if line.startswith("epoch 2/"):
            break
        assert time.monotonic() < deadline
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "medseg: interrupted; resume with --resume", err[-2000:]
    assert err.count("interrupted") == 1 and "Traceback" not in err
    bundle = tiny_workdir / "models" / "long" / "fold_0"
    run_id = json.loads((bundle / "bundle.json").read_text())["mlflow_run_id"]
    assert MlflowClient(tracking_uri(tiny_workdir)).get_run(run_id).info.status == "KILLED"
    state = torch.load(bundle / "training_state.pt", weights_only=True)
    assert state["epoch"] >= 1  # the last finished epoch resumes


def test_fold_none_trains_on_fewer_cases_than_folds(tiny_config, tiny_workdir, dead_tracking_uri):
    """--fold none needs no cross-validation split, so 3 cases (fewer than 5 folds) are enough."""
    import shutil

    from medseg.preprocess.cache import list_cached_cases

    for case_id in list_cached_cases(tiny_workdir)[3:]:
        shutil.rmtree(tiny_workdir / "preprocessed" / case_id)
    assert len(list_cached_cases(tiny_workdir)) == 3
    result = train(tiny_workdir, tiny_config(epochs=1, iterations_per_epoch=1), preset_name="unet3d", fold=None)
    assert result.bundle_dir.name == "fold_none" and (result.bundle_dir / "model_best.pt").is_file()
    assert not (tiny_workdir / "splits.json").exists()
