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


@pytest.mark.slow
def test_fold_all_on_two_processes_trains_one_fold_per_process(tiny_workdir, tmp_path, dead_tracking_uri):
    """`torchrun --nproc_per_node 2 -m medseg train W --fold all`: rank 0 folds 0, 2, 4 and rank 1
    folds 1, 3, each a one-process run; the five-fold ensemble loads when both are done."""
    import torch

    import medseg
    from test_distributed import _free_port

    cfg = yaml.safe_load(Path("configs/unet3d_cpu.yaml").read_text())
    cfg.update(epochs=1, iterations_per_epoch=1, batch_size=2, validate_every=1, num_workers=0, precision="fp32",
               val_overlap=0.0)
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=dead_tracking_uri)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "medseg", "train", str(tiny_workdir), "--config", str(tmp_path / "f.yaml"),
           "--fold", "all"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "5 folds over 2 processes" in proc.stdout and "rank 0 trains fold(s) [0, 2, 4]" in proc.stdout
    root = tiny_workdir / "models" / "f"
    for k in range(5):
        state = torch.load(root / f"fold_{k}" / "training_state.pt", weights_only=True)
        assert state["loader"]["world_size"] == 1, k  # a one-process run, not a DDP share
    predictor = medseg.load_model(root, device="cpu")
    assert len(predictor.bundles) == 5


def _gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", Path("benchmarks/gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_says_in_one_line_when_there_is_no_gpu(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _gpu_check().main([]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0] and "--device cpu --tiny" in lines[0]


@pytest.mark.slow
def test_gpu_check_tiny_cpu_run_prints_every_row(capsys):
    """The GPU check's code (training rows, both logit buffers, the 1-process DDP group) on tiny sizes."""
    assert _gpu_check().main(["--device", "cpu", "--tiny", "--iterations", "1"]) == 0
    out = capsys.readouterr().out
    for row in ("train tiny 16^3          | fp32 ", "bf16 + channels-last", "fp32 buffer", "fp16 buffer (--fp16-buffer)",
                "DDP 1 process, tiny 16^3 | gloo"):
        assert row in out, out
    speeds = [float(x) for x in __import__("re").findall(r"\| ([0-9.]+) it/s", out)]
    assert len(speeds) == 3 and all(s > 0 for s in speeds)
