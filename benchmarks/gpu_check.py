"""The GPU path in one table, in under 5 minutes on one NVIDIA GPU (issue 21, item 4).

    python benchmarks/gpu_check.py                      # needs CUDA; prints the table
    python benchmarks/gpu_check.py --device cpu --tiny  # a seconds-long smoke run of the same code (tests)

Rows:
- training steps (medseg's 3D U-Net with deep supervision, Dice+CE, SGD) at nnU-Net's Hippocampus
  3d_fullres plan (patch 40x56x40, batch 9, 32-256 features) and a 128^3 CT plan (batch 2, 32-320
  features, 6 stages): fp32, bf16 + channels-last, fp16 + grad scaler + channels-last, bf16
  contiguous; iterations/s and peak GPU memory;
- sliding-window inference of a 512x512x300 synthetic CT with the CT plan's network (bf16), the
  logit buffer on the GPU in float32 and in float16 (`medseg infer --fp16-buffer`), seconds and
  peak GPU memory;
- a 1-GPU DDP run over NCCL (the process group medseg's trainer builds under torchrun).
Without CUDA (and without --device cpu) it exits 1 with one line saying so.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

HIPPOCAMPUS = {"patch_size": [40, 56, 40], "batch_size": 9, "features_per_stage": [32, 64, 128, 256],
               "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], "kernel_sizes": [[3, 3, 3]] * 4, "classes": 3}
CT128 = {"patch_size": [128, 128, 128], "batch_size": 2, "features_per_stage": [32, 64, 128, 256, 320, 320],
         "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5, "kernel_sizes": [[3, 3, 3]] * 6, "classes": 3}
TINY = {"patch_size": [16, 16, 16], "batch_size": 2, "features_per_stage": [4, 8],
        "strides": [[1, 1, 1], [2, 2, 2]], "kernel_sizes": [[3, 3, 3]] * 2, "classes": 3}
# (name, precision, channels-last): medseg's precisions (fp16 on CUDA takes the grad scaler)
MODES = [("fp32", "fp32", False), ("bf16 + channels-last", "bf16", True),
         ("fp16 + grad scaler + channels-last", "fp16", True), ("bf16 contiguous", "bf16", False)]


def _plan(spec: dict, channels_last: bool, precision: str, device_type: str):
    from medseg.precision import Precision, PrecisionPlan
    from medseg.preprocess.plan import ConfigurationPlan

    conf = ConfigurationPlan(spatial_dims=3, **{k: v for k, v in spec.items() if k != "classes"})
    return conf, PrecisionPlan(Precision(precision), Precision(precision), device_type, channels_last, "gpu_check")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def train_steps(spec: dict, precision: str, channels_last: bool, device, iterations: int, warmup: int, wrap=None) -> dict:
    """Iterations/s of the trainer's step (medseg.training.trainer.Trainer.train_epoch, as written there)."""
    import torch

    from medseg.losses import DeepSupervisionLoss, build_loss
    from medseg.models import build_model

    conf, plan = _plan(spec, channels_last, precision, device.type)
    torch.manual_seed(0)
    model = build_model("unet3d", conf, in_channels=1, num_classes=spec["classes"], deep_supervision=True)
    fmt = plan.memory_format(3)
    model = model.to(device).to(memory_format=fmt)
    train_model = wrap(model) if wrap is not None else model
    loss_fn = DeepSupervisionLoss(build_loss("dice_ce"))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    scaler = torch.amp.GradScaler(device.type, enabled=plan.use_grad_scaler)
    image = torch.randn(spec["batch_size"], 1, *spec["patch_size"], device=device).contiguous(memory_format=fmt)
    target = torch.randint(0, spec["classes"], (spec["batch_size"], 1, *spec["patch_size"]), device=device)
    _reset_peak(device)
    loss = None
    for i in range(warmup + iterations):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with plan.autocast():
            out = train_model(image)
        out = [o.float() for o in out] if isinstance(out, (list, tuple)) else out.float()
        loss = loss_fn(out, target)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        scaler.step(optimizer)
        scaler.update()
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"it_s": iterations / seconds, "peak_mib": _peak_mib(device), "loss": float(loss.detach())}


def sliding_window(shape: tuple[int, int, int], spec: dict, fp16_buffer: bool, device) -> dict:
    """Seconds and peak memory of one sliding-window prediction of a (1, *shape) volume (bf16 network on CUDA)."""
    import torch

    from medseg.inference.sliding_window import sliding_window_predict
    from medseg.models import build_model

    precision = "fp32" if device.type == "cpu" else "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    conf, plan = _plan(spec, True, precision, device.type)
    torch.manual_seed(0)
    model = build_model("unet3d", conf, in_channels=1, num_classes=spec["classes"]).to(device).eval()
    model = model.to(memory_format=plan.memory_format(3))
    image = torch.randn(1, *shape, device=device)
    _reset_peak(device)
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        logits = sliding_window_predict(image, model, spec["patch_size"], overlap=0.5, batch_size=2, precision=plan,
                                        device=device, accumulate_dtype=torch.float16 if fp16_buffer else torch.float32)
    _sync(device)
    seconds = time.perf_counter() - t0
    assert tuple(logits.shape) == (spec["classes"], *shape)
    return {"seconds": seconds, "peak_mib": _peak_mib(device), "buffer_mib": logits.numel() * (2 if fp16_buffer else 4) / 2**20}


def ddp_run(spec: dict, device, iterations: int, warmup: int) -> dict:
    """A one-process DistributedDataParallel run (NCCL on CUDA, gloo on CPU)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=0, world_size=1)
    try:
        ids = [device.index or 0] if device.type == "cuda" else None
        precision = "bf16" if device.type == "cuda" else "fp32"
        row = train_steps(spec, precision, device.type == "cuda", device, iterations, warmup,
                          wrap=lambda m: DistributedDataParallel(m, device_ids=ids))
        row["backend"] = dist.get_backend()
    finally:
        dist.destroy_process_group()
    return row


def _fmt(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="tiny plans and volume (a smoke run of the code, seconds on a CPU)")
    ap.add_argument("--iterations", type=int, default=None, help="timed training steps per row (default 20, tiny: 2)")
    args = ap.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU "
              "(or --device cpu --tiny for a smoke run of the code)")
        return 1
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    iterations = args.iterations or (2 if args.tiny else 20)
    warmup = 1 if args.tiny else 5
    plans = {"tiny 16^3": TINY} if args.tiny else {"Hippocampus 40x56x40 b9": HIPPOCAMPUS, "CT 128^3 b2": CT128}
    volume = (32, 32, 24) if args.tiny else (512, 512, 300)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"gpu_check on {name}, torch {torch.__version__}" + (f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""))
    t_start = time.perf_counter()
    rows = []
    for plan_name, spec in plans.items():
        for mode, precision, channels_last in MODES:
            if device.type == "cpu" and mode not in ("fp32", "bf16 + channels-last"):
                continue  # fp16 autocast is a GPU path; bf16 is emulated on most CPUs (slow)
            r = train_steps(spec, precision, channels_last, device, iterations, warmup)
            rows.append((f"train {plan_name}", mode, f"{r['it_s']:.2f} it/s", _fmt(r["peak_mib"], "{:.0f} MiB")))
    spec = TINY if args.tiny else CT128
    for fp16_buffer in (False, True):
        r = sliding_window(volume, spec, fp16_buffer, device)
        label = "fp16 buffer (--fp16-buffer)" if fp16_buffer else "fp32 buffer"
        rows.append((f"sliding window {'x'.join(map(str, volume))}", f"{label}, {r['buffer_mib']:.0f} MiB logits",
                     f"{r['seconds']:.2f} s", _fmt(r["peak_mib"], "{:.0f} MiB")))
    plan_name, spec = next(iter(plans.items()))
    r = ddp_run(spec, device, iterations, warmup)
    rows.append((f"DDP 1 process, {plan_name}", f"{r['backend']}", f"{r['it_s']:.2f} it/s", _fmt(r["peak_mib"], "{:.0f} MiB")))

    widths = [max(len(str(row[i])) for row in rows + [("what", "mode", "speed", "peak GPU memory")]) for i in range(4)]
    header = ("what", "mode", "speed", "peak GPU memory")
    for row in [header, tuple("-" * w for w in widths)] + rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
