"""Training iterations per second on CPU: medseg (--precision auto and fp32) vs nnU-Net v2's train step.

Both sides run nnU-Net's own plan for MSD Hippocampus (3d_fullres): PlainConvUNet 32-64-128-256,
instance norm, deep supervision, patch 40x56x40, batch 9, Dice + CE, SGD(0.01, 0.99, nesterov),
gradient clipping at 12. One step = forward, loss, backward, clip, optimizer step, on a fixed
random batch (data loading is left out on both sides, it runs in loader workers in both tools).
nnU-Net runs in its own environment (benchmarks/.venv-nnunet) with its trainer's `train_step`
logic, which on CPU has no autocast: float32 only.

Usage: .venv/bin/python benchmarks/bench_train_throughput.py [--steps 5] [--threads 2] [--compile]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PATCH = [40, 56, 40]
BATCH = 9  # nnU-Net v2's plan for Dataset004_Hippocampus, 3d_fullres
FEATURES = [32, 64, 128, 256]
STRIDES = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]

NNUNET_SCRIPT = r"""
import json, sys, time, torch
from torch import nn
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
steps, threads, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads); torch.manual_seed(0)
# (input channels, stages, features, conv, kernel, strides, convs per stage, classes, decoder convs)
net = PlainConvUNet(1, 4, [32, 64, 128, 256], nn.Conv3d, 3, [1, 2, 2, 2], 2, 3, 2, conv_bias=True,
                    norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                    nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)
weights = [1 / 2**i for i in range(4)]; weights[-1] = 0; s = sum(weights); weights = [w / s for w in weights]
loss = DeepSupervisionWrapper(DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                                             weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss), weights)
opt = torch.optim.SGD(net.parameters(), 0.01, weight_decay=3e-5, momentum=0.99, nesterov=True)
x = torch.randn(batch, 1, 40, 56, 40)
full = torch.randint(0, 3, (batch, 1, 40, 56, 40)).float()
target = [full] + [nn.functional.interpolate(full, scale_factor=1 / 2**i, mode="nearest") for i in range(1, 4)]
def step():  # nnUNetTrainer.train_step on CPU (autocast is enabled only for cuda)
    opt.zero_grad(set_to_none=True)
    out = net(x); l = loss(out, target); l.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 12); opt.step()
    return l.item()
net.train(); step(); step()
t = time.perf_counter()
for _ in range(steps): step()
print(json.dumps({"its": steps / (time.perf_counter() - t)}))
"""


def medseg_its(precision: str, steps: int, threads: int, compile: bool = False) -> tuple[float, str]:
    """Iterations/s of medseg's training step (the same code as medseg.training.trainer.Trainer.train_epoch; `compile` as the
    config's `compile: true`, the compilation itself excluded by the warm-up steps)."""
    import torch

    from medseg.losses import DeepSupervisionLoss, build_loss
    from medseg.models import build_model
    from medseg.precision import resolve_precision

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    plan = resolve_precision(precision, "cpu")
    fmt = plan.memory_format(3)
    net = build_model("unet3d", {"features_per_stage": FEATURES, "strides": STRIDES}, in_channels=1, num_classes=3,
                      deep_supervision=True).to(memory_format=fmt)
    loss_fn = DeepSupervisionLoss(build_loss("dice_ce"))
    opt = torch.optim.SGD(net.parameters(), 0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    x = torch.randn(BATCH, 1, *PATCH).contiguous(memory_format=fmt)
    y = torch.randint(0, 3, (BATCH, 1, *PATCH))
    model = torch.compile(net) if compile else net

    def step():
        opt.zero_grad(set_to_none=True)
        with plan.autocast():
            out = model(x)
        out = [o.float() for o in out] if isinstance(out, (list, tuple)) else out.float()
        loss = loss_fn(out, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
        opt.step()

    net.train()
    step(), step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t), plan.describe()


def main() -> None:
    global BATCH
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--compile", action="store_true", help="also time medseg auto with torch.compile (compile: true)")
    args = ap.parse_args()
    BATCH = args.batch
    from _nnunet_env import ensure_nnunet_env

    bin_dir = ensure_nnunet_env()
    proc = subprocess.run([str(bin_dir / "python"), "-c", NNUNET_SCRIPT, str(args.steps), str(args.threads), str(BATCH)],
                          capture_output=True, text=True, check=True)
    nnunet = json.loads(proc.stdout.strip().splitlines()[-1])["its"]
    rows = {"nnunet_fp32": nnunet}
    for p in ("fp32", "auto"):
        rows[f"medseg_{p}"], desc = medseg_its(p, args.steps, args.threads)
        print(f"medseg {p}: {desc}")
    if args.compile:
        rows["medseg_auto_compiled"], _ = medseg_its("auto", args.steps, args.threads, compile=True)
    print(f"batch {BATCH}, patch {PATCH}, {args.threads} threads, {args.steps} timed steps after 2 warm-up")
    for k, v in rows.items():
        print(f"{k:22s} {v:.3f} it/s  ({1 / v:.2f} s/step)  x{v / nnunet:.2f} vs nnU-Net")


if __name__ == "__main__":
    main()
