"""Checkpoints: weights_only state files, per-rank RNG, crash safety at every step of the write."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.errors import InputError
from medseg.training import checkpoint as ckpt
from medseg.training.loop import train


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    ckpt.seed_everything(7)
    np.random.standard_normal()  # numpy keeps a cached gaussian: part of the state
    states = ckpt.rng_states()
    expected = (random.random(), float(np.random.standard_normal()), torch.rand(3).tolist())
    ckpt.save_state(tmp_path / "s.pt", {"format": ckpt.STATE_FORMAT, "model": {}, "rng": [states]})
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)["rng"][0]
    ckpt.seed_everything(99)
    ckpt.set_rng_states(loaded)
    assert (random.random(), float(np.random.standard_normal()), torch.rand(3).tolist()) == expected
    assert os.listdir(tmp_path) == ["s.pt"]  # no temporary file left


class _Planted:
    """A pickle that, if unpickled, creates a file (stands for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _plant(bundle: Path, marker: Path) -> None:
    bundle.mkdir(parents=True)
    torch.save({"format": ckpt.STATE_FORMAT, "model": {}, "payload": _Planted(marker)}, bundle / ckpt.STATE_FILE)


def test_planted_malicious_training_state_is_refused_and_runs_nothing(tiny_workdir, tmp_path, dead_tracking_uri, capsys):
    from medseg.cli.main import main

    marker = tmp_path / "pwned"
    _plant(tiny_workdir / "models" / "unet3d" / "fold_0", marker)
    live = tmp_path / "live"
    _plant(live, tmp_path / "ran")
    torch.load(live / ckpt.STATE_FILE, weights_only=False)  # the plant works: a full unpickle runs it
    assert (tmp_path / "ran").exists()
    # the CLI: one line, exit 1, nothing executed
    with pytest.raises(SystemExit) as info:
        main(["train", str(tiny_workdir), "--config", "configs/unet3d.yaml", "--fold", "0", "--resume"])
    assert info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "refused to load" in lines[0] and ckpt.STATE_FILE in lines[0], lines
    assert not marker.exists()
    # a pickle of the old format (numpy RNG state objects) is refused the same way, before any training
    torch.save({"epoch": 0, "rng": {0: {"numpy": np.random.get_state()}}}, tiny_workdir / "models" / "unet3d" / "fold_0" / ckpt.STATE_FILE)
    with pytest.raises(InputError, match="refused to load"):
        ckpt.load_state(tiny_workdir / "models" / "unet3d" / "fold_0" / ckpt.STATE_FILE)
    torch.save({"epoch": 0}, tmp_path / "plain.pt")  # loads as plain data but is no medseg state
    with pytest.raises(InputError, match="format 1, expected 2"):
        ckpt.load_state(tmp_path / "plain.pt")


@pytest.mark.slow
def test_stale_temporary_files_are_removed_and_never_uploaded(tiny_config, tiny_workdir, dead_tracking_uri):
    from medseg.preprocess.plan import Plan
    from medseg.training.artifacts import log_artifacts

    bundle = tiny_workdir / "models" / "unet3d" / "fold_0"
    bundle.mkdir(parents=True)
    stale = bundle / ".training_state.pt.tmp-4242"
    stale.write_bytes(b"half a checkpoint")
    result = train(tiny_workdir, tiny_config(epochs=1, iterations_per_epoch=1), preset_name="unet3d", fold=0)
    assert not stale.exists()
    assert not [p for p in bundle.iterdir() if ckpt.is_temporary(p)]

    class Recorder:
        def __init__(self):
            self.paths = []

        def log_artifact(self, path, artifact_path=None):
            self.paths.append((artifact_path, Path(path).name))

        def log_artifacts(self, directory, artifact_path=None):
            self.paths += [(artifact_path, p.name) for p in Path(directory).iterdir()]

    stale.write_bytes(b"left by a kill after the last write")
    (bundle / ".model_best.tmp-77.pt").write_bytes(b"medseg.io.atomic's naming")
    rec = Recorder()
    plan = Plan.load(bundle / "plan.json")  # no validation cases given: no overlays, so no model, config or device
    log_artifacts(rec, tiny_workdir, bundle, {"train_loss": [1.0], "val_mean": [], "ema": []}, None, [], plan, None, None, None)
    uploaded = {name for where, name in rec.paths if where == "bundle"}
    assert {"model_last.pt", "model_best.pt", ckpt.STATE_FILE, "bundle.json"} <= uploaded
    assert not [n for n in uploaded if ".tmp-" in n]
    assert result.epochs_done == 1


def _weights_sha(path: Path) -> str:
    return ckpt.tensors_sha256(torch.load(path, weights_only=True))


@pytest.mark.slow
def test_a_kill_at_every_step_of_the_checkpoint_write_resumes_exactly(tiny_config, tiny_workdir, _tiny_template, tmp_path,
                                                                    dead_tracking_uri, monkeypatch):
    """Snapshot the bundle folder before every step (write, fsync, rename, folder fsync) of every
    checkpoint file: exactly what a kill -9 at that instant leaves. Each snapshot must resume to the
    weights of the uninterrupted deterministic run, with no temporary file left."""
    cfg = tiny_config(epochs=3, iterations_per_epoch=2, deterministic=True, validate_every=2)
    full = train(tiny_workdir, cfg, preset_name="unet3d", fold=1)
    full_bundle = full.bundle_dir
    want_last, want_best = _weights_sha(full_bundle / "model_last.pt"), _weights_sha(full_bundle / "model_best.pt")

    work = shutil.copytree(_tiny_template, tmp_path / "killed")
    bundle = work / "models" / "unet3d" / "fold_1"
    shots = tmp_path / "shots"
    steps: list[tuple[str, str]] = []

    def snapshot(name: str, path: Path) -> None:
        i = len(steps)
        steps.append((name, path.name))
        dst = shots / f"{i:03d}"
        shutil.copytree(bundle, dst)
        if name == "fsync":  # killed inside torch.save's write: a half-written temporary file
            tmp = dst / f".{path.name}{ckpt.TMP_MARK}{os.getpid()}"
            tmp.write_bytes(tmp.read_bytes()[: tmp.stat().st_size // 2])

    monkeypatch.setattr(ckpt, "_step", snapshot)
    train(work, cfg, preset_name="unet3d", fold=1)
    monkeypatch.setattr(ckpt, "_step", lambda name, path: None)
    # epoch 0 writes three files (best = last until validation), epoch 1 three (first validation: a new best),
    # epoch 2 two or three (model_best.pt only on a new best)
    assert len(steps) >= 4 * 8 and {n for n, _ in steps} == {"write", "fsync", "rename", "fsync dir"}
    assert steps[:4] == [("write", ckpt.STATE_FILE), ("fsync", ckpt.STATE_FILE), ("rename", ckpt.STATE_FILE), ("fsync dir", ckpt.STATE_FILE)]

    resumed_from = set()
    for i, (name, file) in enumerate(steps):
        ws = shutil.copytree(_tiny_template, tmp_path / f"ws{i:03d}")
        shutil.copytree(shots / f"{i:03d}", ws / "models" / "unet3d" / "fold_1")
        if not (ws / "models" / "unet3d" / "fold_1" / ckpt.STATE_FILE).is_file():
            assert i < 3, (i, name, file)  # only before the very first state's rename is there nothing to resume
            with pytest.raises(InputError, match="nothing to resume"):
                train(ws, cfg, preset_name="unet3d", fold=1, resume=True)
            continue
        result = train(ws, cfg, preset_name="unet3d", fold=1, resume=True)
        out = ws / "models" / "unet3d" / "fold_1"
        assert result.weights_sha256 == full.weights_sha256, (i, name, file)
        assert _weights_sha(out / "model_last.pt") == want_last, (i, name, file)
        assert _weights_sha(out / "model_best.pt") == want_best, (i, name, file)
        assert result.train_losses == full.train_losses, (i, name, file)
        assert not [p.name for p in out.iterdir() if ckpt.is_temporary(p)], (i, name, file)
        resumed_from.add(torch.load(shots / f"{i:03d}" / ckpt.STATE_FILE, weights_only=True)["epoch"])
        shutil.rmtree(ws)
    assert resumed_from == {0, 1, 2}


_KILLER = """
import os, sys
import medseg.training.checkpoint as ckpt
calls = []
def step(name, path):
    calls.append(name)
    if len(calls) == int(os.environ.get("KILL_AT_STEP", "0")):
        os._exit(137)  # no cleanup, no finally: as kill -9
ckpt._step = step
from medseg.cli.main import main
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_a_real_os_exit_inside_the_write_then_resume_matches(tiny_workdir, _tiny_template, tmp_path, dead_tracking_uri):
    """A real process killed (os._exit) right before renaming the second epoch's training state."""
    import yaml

    cfg = yaml.safe_load(Path("configs/unet3d.yaml").read_text())
    cfg.update(epochs=2, iterations_per_epoch=2, validate_every=1, num_workers=0, precision="fp32", deterministic=True)
    (tmp_path / "k.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=dead_tracking_uri)
    args = ["train", None, "--config", str(tmp_path / "k.yaml"), "--fold", "1"]

    def run(work, *extra, kill=None):
        argv = [a if a is not None else str(work) for a in args] + list(extra)
        e = dict(env, KILL_AT_STEP=str(kill)) if kill else env
        return subprocess.run([sys.executable, "-c", _KILLER, *argv], env=e, capture_output=True, text=True, timeout=300)

    from medseg.training.config import load_train_config

    train(tiny_workdir, load_train_config(tmp_path / "k.yaml"), preset_name="k", fold=1)  # the uninterrupted run
    killed = shutil.copytree(_tiny_template, tmp_path / "killed")
    # epoch 0 writes state, last and best (12 steps); step 15 is the rename of epoch 1's state
    dead = run(killed, kill=15)
    assert dead.returncode == 137
    bundle = killed / "models" / "k" / "fold_1"
    assert [p for p in bundle.iterdir() if ckpt.is_temporary(p)]  # the kill left its temporary file
    assert torch.load(bundle / ckpt.STATE_FILE, weights_only=True)["epoch"] == 0
    again = run(killed, "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    assert not [p for p in bundle.iterdir() if ckpt.is_temporary(p)]
    for name in ("model_last.pt", "model_best.pt"):
        assert _weights_sha(bundle / name) == _weights_sha(tiny_workdir / "models" / "k" / "fold_1" / name), name
