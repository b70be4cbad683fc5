"""Two "nodes" on one machine: two torchrun invocations with --nnodes 2 meeting at a c10d
rendezvous on 127.0.0.1 (gloo), as on two machines of a cluster (docs/distributed.md)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


@pytest.mark.slow
def test_two_torchrun_nodes_train_to_identical_weights(tiny_workdir, tmp_path, dead_tracking_uri):
    from test_distributed import _free_port

    cfg = yaml.safe_load(Path("configs/unet3d_cpu.yaml").read_text())
    cfg.update(epochs=1, iterations_per_epoch=2, batch_size=2, validate_every=1, num_workers=0, precision="fp32",
               deterministic=True, val_overlap=0.0)
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=dead_tracking_uri)
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = []
    for node_rank in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--node_rank", str(node_rank), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "medseg-test",
               "-m", "medseg", "train", str(tiny_workdir), "--config", str(tmp_path / "node.yaml"), "--fold", "0"]
        nodes.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-4000:]
    sums = dict(re.findall(r"rank (\d)/2: final weights sha256 ([0-9a-f]{64})", outputs[0][1] + outputs[1][1]))
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"]  # one replica on each node, the same weights
    stdout = outputs[0][0] + outputs[1][0]
    assert stdout.count("epoch 1/1") == 1 and stdout.count("bundle:") == 1  # only global rank 0 reports
    assert (tiny_workdir / "models" / "node" / "fold_0" / "model_best.pt").is_file()
