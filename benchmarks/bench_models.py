"""Models and losses: size, cost and speed of medseg's networks, and agreement with nnU-Net's loss.

1. Forward + backward time on CPU (median of --repeats after a warm-up, models interleaved) for nnU-Net's plan of MSD
   Hippocampus (3d_fullres: 4 stages 32-64-128-256, patch 40x56x40), batch 2, 3 classes:
   medseg unet3d in fp32 and in bf16 autocast with channels-last, MONAI's DynUNet (the library
   alternative to our own U-Net) with the same topology, nnU-Net v2's PlainConvUNet (in
   benchmarks/.venv-nnunet), medseg deeplabv3plus3d and medseg segformer3d (SegFormer3D's sizes; strides
   from the plan's patch and spacing; also with its attention replaced by identity, the ablation).
2. Loss agreement: medseg `dice_ce` (include_background=False) against nnU-Net's DC_and_CE_loss
   (do_bg=False, its soft Dice is negative, so the two differ by exactly 1), with and without an
   ignore label.

Usage: .venv/bin/python benchmarks/bench_models.py [--repeats 3] [--threads 1] [--only unet3d,segformer3d] [--no-nnunet]
(--only: the medseg/MONAI rows whose label contains one of the words; --no-nnunet: no nnU-Net row, no loss table)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PATCH = [40, 56, 40]
BATCH = 2
CLASSES = 3
FEATURES = [32, 64, 128, 256]
STRIDES = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
SPACING = [1.0, 1.0, 1.0]  # the plan's target spacing (mm)

NNUNET_SCRIPT = r"""
import json, statistics, sys, time, torch
from torch import nn
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
repeats, threads, data = int(sys.argv[1]), int(sys.argv[2]), torch.load(sys.argv[3])
torch.set_num_threads(threads); torch.manual_seed(0)
net = PlainConvUNet(1, 4, [32, 64, 128, 256], nn.Conv3d, 3, [1, 2, 2, 2], 2, 3, 2, conv_bias=True,
                    norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                    nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)
x = torch.randn(2, 1, 40, 56, 40)
def step():
    net.zero_grad(set_to_none=True); net(x).square().mean().backward()
step(); times = []
for _ in range(repeats):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
out = {"params": sum(p.numel() for p in net.parameters()), "seconds": statistics.median(times), "loss": {}}
for ignore in (None, 255):
    loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=ignore, dice_class=MemoryEfficientSoftDiceLoss)
    target = data["target_ignore"] if ignore is not None else data["target"]
    out["loss"][str(ignore)] = float(loss(data["logits"], target.float()))
print(json.dumps(out))
"""


def medseg_rows(repeats: int, only: list[str] | None = None) -> list[dict]:
    import torch
    from monai.networks.nets import DynUNet

    from medseg.models import build_model, count_gflops, count_parameters

    x = torch.randn(BATCH, 1, *PATCH)
    entries = []  # (label, net, step)

    def bench(label, net, bf16=False):
        if only and not any(word in label for word in only):
            return
        fmt = torch.channels_last_3d if bf16 else torch.contiguous_format
        net = net.to(memory_format=fmt).train()
        xx = x.to(memory_format=fmt)

        def step():
            net.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = net(xx)
            out.float().square().mean().backward()

        entries.append((label, net, step))

    def ours(name, **options):
        torch.manual_seed(0)
        plan = {"features_per_stage": FEATURES, "strides": STRIDES, "patch_size": PATCH}
        return build_model(name, plan, in_channels=1, num_classes=CLASSES, spacing=SPACING, **options)

    bench("medseg unet3d fp32", ours("unet3d"))
    bench("medseg unet3d bf16 channels-last", ours("unet3d"), bf16=True)
    bench("medseg unet3d upsample=interp fp32", ours("unet3d", upsample="interp"))
    dyn = DynUNet(3, 1, CLASSES, kernel_size=[3] * 4, strides=STRIDES, upsample_kernel_size=STRIDES[1:], norm_name=("instance", {"affine": True}))
    bench("MONAI DynUNet fp32", dyn)
    bench("medseg deeplabv3plus3d fp32", ours("deeplabv3plus3d"))
    bench("medseg deeplabv3plus3d bf16 channels-last", ours("deeplabv3plus3d"), bf16=True)
    bench("medseg segformer3d fp32", ours("segformer3d"))
    bench("medseg segformer3d bf16 channels-last", ours("segformer3d"), bf16=True)
    bench("medseg segformer3d attention=identity fp32", ours("segformer3d", attention="identity"))
    # round-robin so that load from other jobs on the machine drifts over all models alike
    times = {label: [] for label, _, _ in entries}
    for _, _, step in entries:
        step()  # warm-up
    for _ in range(repeats):
        for label, _, step in entries:
            t = time.perf_counter()
            step()
            times[label].append(time.perf_counter() - t)
    rows = [
        {"model": label, "params": count_parameters(net), "gflops": count_gflops(net, (1, 1, *PATCH)), "seconds": statistics.median(times[label])}
        for label, net, _ in entries
    ]
    return rows


def loss_inputs(path: Path) -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(BATCH, CLASSES, *PATCH, generator=g)
    target = torch.randint(0, CLASSES, (BATCH, 1, *PATCH), generator=g)
    ignored = torch.rand(target.shape, generator=g) < 0.2
    data = {"logits": logits, "target": target, "target_ignore": torch.where(ignored, 255, target)}
    torch.save(data, path)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="", help="comma-separated words: only the rows whose label contains one")
    parser.add_argument("--no-nnunet", action="store_true", help="skip nnU-Net's row and the loss agreement table")
    args = parser.parse_args()
    import torch

    from medseg.losses import build_loss

    torch.set_num_threads(args.threads)
    rows = medseg_rows(args.repeats, [w for w in args.only.split(",") if w])
    if not args.no_nnunet:
        nn_result, data = nnunet_row(args.repeats, args.threads)
        rows.append({"model": "nnU-Net PlainConvUNet fp32", "params": nn_result["params"], "gflops": None, "seconds": nn_result["seconds"]})

    print(f"threads={args.threads} batch={BATCH} patch={'x'.join(map(str, PATCH))} forward+backward, median of {args.repeats}")
    print("| model | parameters | GFLOPs (batch 1 forward) | fwd+bwd (s) |")
    print("|---|---|---|---|")
    for r in rows:
        gf = "-" if r["gflops"] is None else f"{r['gflops']:.1f}"
        print(f"| {r['model']} | {r['params']:,} | {gf} | {r['seconds']:.2f} |")
    if args.no_nnunet:
        return
    print()
    print("| loss | medseg dice_ce | nnU-Net DC_and_CE | difference |")
    print("|---|---|---|---|")
    for ignore, key in ((None, "target"), (255, "target_ignore")):
        ours = float(build_loss("dice_ce", include_background=False, ignore_index=ignore)(data["logits"], data[key]))
        theirs = nn_result["loss"][str(ignore)]
        print(f"| ignore_index={ignore} | {ours:.6f} | {theirs:.6f} | {ours - theirs:.6f} |")


def nnunet_row(repeats: int, threads: int) -> tuple[dict, dict]:
    """nnU-Net's PlainConvUNet timing and its loss on the shared inputs, run in benchmarks/.venv-nnunet."""
    with tempfile.TemporaryDirectory() as tmp:
        data = loss_inputs(Path(tmp) / "loss_inputs.pt")
        from _nnunet_env import ensure_nnunet_env

        python = ensure_nnunet_env() / "python"
        proc = subprocess.run(
            [str(python), "-c", NNUNET_SCRIPT, str(repeats), str(threads), str(Path(tmp) / "loss_inputs.pt")],
            capture_output=True, text=True, check=True,
        )
    return json.loads(proc.stdout.strip().splitlines()[-1]), data


if __name__ == "__main__":
    main()
