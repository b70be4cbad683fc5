"""Preemption: SIGTERM / SIGUSR1 mid-epoch checkpoints at the next iteration boundary and exits
resumable (75); the next start resumes without --resume, exactly; torchrun --max-restarts too."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from medseg.training import checkpoint as ckpt
from medseg.training.config import TrainConfig
from medseg.training.loop import train
from medseg.training.preempt import PREEMPTED_EXIT, Preempted, auto_resume


def _config(tmp_path: Path, dropout: float = 0.2) -> Path:
    """The 3D U-Net preset, 2 epochs x 4 iterations, deterministic, with dropout (so the torch RNG matters)."""
    cfg = yaml.safe_load(Path("configs/unet3d.yaml").read_text())
    cfg["model"]["options"] = {**cfg["model"]["options"], "dropout": dropout}
    cfg.update(epochs=2, iterations_per_epoch=4, batch_size=2, validate_every=1, num_workers=0, precision="fp32",
               deterministic=True, val_overlap=0.0)
    path = tmp_path / "pre.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _signal_at(call: int, signum=signal.SIGTERM):
    """A progress callback that signals this very process at its `call`-th step (1-based, over epochs)."""
    counter = itertools.count(1)

    def progress(it, total, loss):
        if next(counter) == call:
            os.kill(os.getpid(), signum)

    return progress


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_equals_the_uninterrupted_run(tiny_workdir, _tiny_template, tmp_path, dead_tracking_uri):
    config = TrainConfig.model_validate(yaml.safe_load(_config(tmp_path).read_text()))
    full = train(tiny_workdir, config, preset_name="pre", fold=0)

    work = shutil.copytree(_tiny_template, tmp_path / "preempted")
    with pytest.raises(Preempted) as info:  # SIGTERM during epoch 2's second step
        train(work, config, preset_name="pre", fold=0, progress=_signal_at(6))
    assert (info.value.epoch, info.value.iteration, info.value.signal_name) == (1, 2, "SIGTERM")
    state_path = work / "models" / "pre" / "fold_0" / ckpt.STATE_FILE
    state = torch.load(state_path, weights_only=True)
    assert state["epoch"] == 0 and state["resume_at"]["iteration"] == 2 and len(state["resume_at"]["losses"]) == 2
    assert "preempted run" in auto_resume(state_path, env={})
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is gone after the run

    lines = []
    resumed = train(work, config, preset_name="pre", fold=0, echo=lines.append)  # no resume=True: it finds the checkpoint
    assert any("resuming the preempted run" in line for line in lines)
    assert resumed.train_losses == full.train_losses and resumed.val_dice == full.val_dice
    assert resumed.weights_sha256 == full.weights_sha256
    assert torch.load(state_path, weights_only=True)["resume_at"] is None
    assert auto_resume(state_path, env={}) is None  # a finished run: a new start is refused, not resumed
    assert "restart 1" in auto_resume(state_path, env={"TORCHELASTIC_RESTART_COUNT": "1"})


_SIGNAL_FIRST_ATTEMPT = """
import os, signal, sys
import medseg.cli.train as cli
class Progress:
    calls = 0
    def __call__(self, it, total, loss):  # rank 0 only; the other rank learns of it at the same step
        Progress.calls += 1
        if Progress.calls == 6 and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
            os.kill(os.getpid(), signal.SIGUSR1)
cli._Progress = Progress
from medseg.cli.main import main
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_sigusr1_under_torchrun_max_restarts_resumes_by_itself(tiny_workdir, _tiny_template, tmp_path, dead_tracking_uri):
    """2 ranks, SIGUSR1 to rank 0 mid-epoch: both stop at that step, exit 75, torchrun restarts them,
    they resume from the checkpoint and end on identical weights with the uninterrupted loss curve."""
    from test_distributed import _free_port

    config = _config(tmp_path, dropout=0.0)  # each rank draws its own dropout masks: no 1-process curve to compare with
    (tmp_path / "preempt_once.py").write_text(_SIGNAL_FIRST_ATTEMPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=dead_tracking_uri)
    # c10d rendezvous: each restart meets in a new round, on the agent's shared store (under load the
    # restarted round hung in gloo's connect until medseg gave each round its own key prefix)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max-restarts", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", str(tmp_path / "preempt_once.py"),
           "train", str(tiny_workdir), "--config", str(config), "--fold", "0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"exiting with {PREEMPTED_EXIT}" in proc.stdout and "resuming the preempted run" in proc.stdout
    assert re.search(rf"exitcode\s*:\s*{PREEMPTED_EXIT}", proc.stderr), proc.stderr[-3000:]  # torchrun saw the 75
    sums = dict(re.findall(r"rank (\d)/2: final weights sha256 ([0-9a-f]{64})", proc.stderr))
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"]
    losses = [float(x) for x in re.findall(r"epoch \d/2: loss ([0-9.]+)", proc.stdout)]
    single = shutil.copytree(_tiny_template, tmp_path / "single")
    one = train(single, TrainConfig.model_validate(yaml.safe_load(config.read_text())), preset_name="pre", fold=0)
    assert losses == pytest.approx(one.train_losses, abs=1e-4)  # printed to 4 decimals
