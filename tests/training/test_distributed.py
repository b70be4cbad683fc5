import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


@pytest.mark.slow
def test_two_process_torchrun_ends_with_identical_weights(tiny_workdir, tmp_path, dead_tracking_uri):
    cfg = yaml.safe_load(Path("configs/unet3d.yaml").read_text())
    cfg.update(epochs=2, iterations_per_epoch=2, validate_every=10, num_workers=0, precision="fp32")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=dead_tracking_uri)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(port), "-m", "medseg", "train", str(tiny_workdir), "--config", str(tmp_path / "tiny.yaml"),
                "--fold", "0"]
    proc = subprocess.run(torchrun, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sums = dict(re.findall(r"rank (\d)/2: final weights sha256 ([0-9a-f]{64})", proc.stderr))
    assert set(sums) == {"0", "1"}, proc.stderr[-2000:]
    assert sums["0"] == sums["1"]
    assert (tiny_workdir / "models" / "tiny" / "fold_0" / "model_best.pt").is_file()
    assert proc.stdout.count("epoch ") == 2  # only rank 0 reports
