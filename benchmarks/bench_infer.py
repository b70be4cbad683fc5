"""Inference benchmark: `medseg infer` (precision auto and fp32) vs a MONAI reference pipeline.

Same network weights in both (the bundle's `build_network`), each tool in its own subprocess so
peak RSS (`os.wait4` rusage of that child) is per tool; the tools run interleaved, so the time
RATIO is meaningful on a loaded machine. End to end: process start, imports, reading, preprocessing,
sliding window, inversion to the original grid, argmax, writing the NIfTI mask.

MONAI reference (float32): LoadImaged -> EnsureChannelFirstd -> Orientationd(RAS) ->
CropForegroundd(nonzero, as the plan crops) -> NormalizeIntensityd (the plan's z-score) ->
Resized to the plan-spacing shape (trilinear, align_corners=False: the extent-preserving grid that
medseg's plan resamples to; Spacingd keeps the first voxel centre fixed instead, a different grid
that would make the masks differ by up to half a voxel) -> sliding_window_inference(mode="gaussian",
same patch, overlap and windows per batch) -> softmax -> Invertd (probabilities, linear) ->
argmax -> SaveImage (uint8). MONAI floors its Gaussian map at 1e-3 where medseg (as nnU-Net) floors
it at its smallest value, and medseg runs the network channels-last on the CPU; --same-map also runs
the reference with medseg's map (`roi_weight_map`) and channels-last tensors, so the mask agreement
can be read with and without those two differences.

Datasets: (a) --cases hippocampus scans from ../shared/data/hippocampus with a trained hippocampus
bundle (--hippo-bundle; default /tmp/medseg_bench/infer/hippo_bundle; when missing, the plan's
32-256 U-Net is trained here for --hippo-train-steps bf16 steps of two 32^3 crops each);
(b) a synthetic CT of 512x512x--ct-slices (0.9375 mm pixels, 60 cm long; air, body, bright and dark spheres)
with a 3-class 3D U-Net (8-64 features, patch 96^3) trained here for --ct-train-steps steps on that
very case, plan spacing 2.5 mm (192x192x240 voxels for the network).

Usage: .venv/bin/python benchmarks/bench_infer.py [--cases 15] [--ct-slices 300] [--repeats 1]
           [--only hippo|ct] [--ct-medseg-only-slices 400] [--same-map] [--with-mlflow]
           [--hippo-bundle BUNDLE --split-cases WORK/splits.json:0]
       .venv/bin/python benchmarks/bench_infer.py --backends WORKDIR --hippo-bundle WORKDIR/models/P/fold_0 [--cases 20]
           (issue 20: every runtime of `medseg export` against torch, see bench_backends)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hippocampus"
WORK = Path("/tmp/medseg_bench/infer")


# --------------------------------------------------------------------------------------- workers
def monai_worker(bundle_dir: str, inputs_file: str, out_dir: str, overlap: float, batch: int, weights: str) -> None:
    """weights: "monai" = MONAI's own Gaussian map (floored at 1e-3), the network as MONAI users run
    it (NCDHW); "medseg" = the same arithmetic as medseg fp32: medseg's map (the same Gaussian
    floored at its smallest value, as nnU-Net) passed as `roi_weight_map`, and the network run on
    channels-last tensors as medseg runs it on the CPU (a different summation order in the
    convolutions, which flips near-tie voxels of a weak model)."""
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        Compose, CropForegroundd, EnsureChannelFirstd, Invertd, LoadImaged, NormalizeIntensityd, Orientationd,
        Resized, SaveImage,
    )

    from medseg.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    plan = bundle.plan
    cfg = bundle.configuration_plan
    norm = plan.normalization[0]
    assert norm.scheme == "zscore", "the MONAI reference reproduces the z-score plans only"
    net = bundle.build_network("best", device="cpu")
    roi_weight_map = None
    predictor = net
    if weights == "medseg":
        from medseg.inference.sliding_window import gaussian_importance_map

        roi_weight_map = gaussian_importance_map(cfg.patch_size)
        net = net.to(memory_format=torch.channels_last_3d)

        def predictor(x):
            return net(x.contiguous(memory_format=torch.channels_last_3d))
    first = Compose([
        LoadImaged("image", image_only=True),
        EnsureChannelFirstd("image"),
        Orientationd("image", axcodes="RAS"),
        CropForegroundd("image", source_key="image", select_fn=lambda x: x != 0, allow_smaller=True),
        NormalizeIntensityd("image", nonzero=bool(norm.use_nonzero_mask)),
    ])
    out = Path(out_dir)
    saver = SaveImage(output_dir=str(out), output_postfix="monai", separate_folder=False, output_ext=".nii.gz",
                      output_dtype=np.uint8, resample=False, print_log=False)
    for path in Path(inputs_file).read_text().split():
        data = first({"image": path})
        img = data["image"]
        spacing = [float(s) for s in img.pixdim[:3]]
        size = [max(1, int(round(s * sp / t))) for s, sp, t in zip(img.shape[1:], spacing, plan.target_spacing)]
        resize = Resized("image", spatial_size=size, mode="trilinear", align_corners=False)
        data = resize(data)
        pre = Compose(list(first.transforms) + [resize])
        with torch.inference_mode():
            logits = sliding_window_inference(data["image"][None], cfg.patch_size, batch, predictor, overlap=overlap,
                                              mode="gaussian", roi_weight_map=roi_weight_map)
        data["pred"] = torch.softmax(logits[0], dim=0)
        del logits
        data = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)(data)
        mask = torch.argmax(data["pred"], dim=0, keepdim=True)
        mask.meta = data["pred"].meta
        saver(mask.to(torch.uint8))


# ----------------------------------------------------------------------------------- orchestration
LAUNCHER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[2:]).returncode\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(code)\n"
)


def run_child(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run `cmd`; return (wall seconds, peak RSS MiB of that child).

    Through a small launcher process: Linux carries a process's RSS high-water mark across fork and
    exec, so a child forked straight from this (large) benchmark process would report this
    process's peak instead of its own."""
    rss_file = log.with_suffix(".maxrss")
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        code = subprocess.run([sys.executable, "-c", LAUNCHER, str(rss_file), *cmd], stdout=fh, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if code != 0:
        sys.exit(f"{' '.join(cmd)} failed ({code}); see {log}")
    return wall, int(rss_file.read_text()) / 1024


def dice_mc(a, b, classes) -> float:
    import numpy as np

    scores = []
    for c in classes:
        x, y = a == c, b == c
        denom = x.sum() + y.sum()
        if denom:
            scores.append(2 * np.logical_and(x, y).sum() / denom)
    return float(np.mean(scores)) if scores else 1.0


def ensure_hippo_bundle(path: Path, steps: int) -> Path:
    """A hippocampus bundle with the plan's network (nnU-Net's 32-256 U-Net) trained here for `steps`
    bf16 steps of two 32^3 crops (class-weighted cross-entropy, Adam) on `medseg preprocess`ed cases: enough for
    non-trivial masks, which is all an inference benchmark needs."""
    if (path / "bundle.json").is_file():
        return path
    import numpy as np
    import torch

    from medseg.bundle import write_bundle
    from medseg.models import build_model
    from medseg.preprocess.cache import list_cached_cases, load_case
    from medseg.preprocess.plan import Plan

    work = Path("/tmp/medseg_bench/hippo")
    if not (work / "plan.json").is_file():
        subprocess.run([sys.executable, "-m", "medseg", "preprocess", str(DATA), "--out", str(work)], check=True)
    plan = Plan.load(work / "plan.json")
    cfg = plan.configurations["3d"]
    cases = [load_case(work, c) for c in list_cached_cases(work)[:150]]
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = build_model("unet3d", cfg, in_channels=1, num_classes=len(plan.labels)).to(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    weights = torch.tensor([0.2] + [1.0] * (len(plan.labels) - 1))
    patch = [32, 32, 32]  # training crops smaller than the plan's patch: fast, and the net is fully convolutional
    t0 = time.perf_counter()
    for step in range(steps):
        xs, ys = [], []
        for _ in range(2):
            case = cases[rng.integers(len(cases))]
            x = np.zeros((1, *patch), np.float32)
            y = np.zeros(patch, np.int64)
            sl_src, sl_dst = [], []
            for s, p in zip(case.label.shape, patch):
                if s >= p:
                    o = int(rng.integers(0, s - p + 1))
                    sl_src.append(slice(o, o + p)); sl_dst.append(slice(0, p))
                else:
                    o = (p - s) // 2
                    sl_src.append(slice(0, s)); sl_dst.append(slice(o, o + s))
            x[(slice(None), *sl_dst)] = case.image[(slice(None), *sl_src)]
            y[tuple(sl_dst)] = case.label[tuple(sl_src)]
            xs.append(x); ys.append(y)
        x = torch.from_numpy(np.stack(xs)).contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)
        loss = torch.nn.functional.cross_entropy(out.float(), torch.from_numpy(np.stack(ys)), weight=weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            print(f"hippocampus bundle: step {step} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    return write_bundle(path, model_name="unet3d", configuration="3d", fold=0, model_options={}, plan=plan,
                        config={"benchmark": True, "steps": steps}, labels=plan.labels, postprocessing=[],
                        precision="bf16", state_dict_best=state, state_dict_last=state)


def make_ct(path: Path, slices: int, seed: int = 0):
    """Synthetic CT (int16 HU, LPS-like affine) and its 3-class label: 512x512 at 0.9375 mm (a 48 cm
    field of view) and `slices` slices spanning 60 cm, so the 2.5 mm grid is 192x192x240 voxels. On
    that grid MONAI's window positions (multiples of patch * (1 - overlap), the last one clamped) and
    medseg's (evenly spread, as nnU-Net) coincide; with other sizes they differ, and a network with
    instance normalisation then gives different logits near window borders (the masks of a weakly
    trained model differed by Dice 0.8 on a 164x164x180 grid)."""
    import numpy as np

    from medseg.io import write_volume
    from medseg.volume import Volume

    rng = np.random.default_rng(seed)
    shape = (512, 512, slices)
    spacing = np.array([0.9375, 0.9375, 600.0 / slices])
    x = (np.arange(shape[0]) - shape[0] / 2)[:, None, None] * spacing[0]
    y = (np.arange(shape[1]) - shape[1] / 2)[None, :, None] * spacing[1]
    z = (np.arange(shape[2]) - shape[2] / 2)[None, None, :] * spacing[2]
    image = np.full(shape, -1000, np.int16)
    body = (x / 170) ** 2 + (y / 120) ** 2 <= 1
    image[np.broadcast_to(body, shape)] = 40
    label = np.zeros(shape, np.uint8)
    extent = np.array([170, 120, 300 - 40])
    for i in range(12):
        centre = rng.uniform(-0.6, 0.6, 3) * extent
        radius = rng.uniform(15, 35)
        ball = ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) < radius ** 2
        cls = 1 + i % 2
        label[ball] = cls
        image[ball] = 250 if cls == 1 else -120
    image += rng.normal(0, 25, shape).astype(np.int16)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [200, 180, -300]
    write_volume(Volume(image, affine), path)
    return Volume(image, affine), Volume(label, affine)


def make_ct_bundle(path: Path, image, label, steps: int) -> Path:
    import numpy as np
    import torch

    from medseg.bundle import write_bundle
    from medseg.models import build_model
    from medseg.preprocess.case import preprocess_case
    from medseg.preprocess.plan import ChannelNormalization, ConfigurationPlan, Plan, ResamplingPlan

    labels = {0: "background", 1: "bright", 2: "dark"}
    plan = Plan(
        dataset_name="synthetic_ct", channel_names=["CT"], modalities=["CT"], labels=labels,
        target_spacing=[2.5, 2.5, 2.5], resampling=ResamplingPlan(image_order=1),
        normalization=[ChannelNormalization(scheme="zscore", use_nonzero_mask=False)],
        configurations={"3d": ConfigurationPlan(
            spatial_dims=3, patch_size=[96, 96, 96], batch_size=2, features_per_stage=[8, 16, 32, 64],
            strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], kernel_sizes=[[3, 3, 3]] * 4)},
    )
    case = preprocess_case([image], plan, label)
    img, lab = torch.from_numpy(case.image), torch.from_numpy(case.label.astype(np.int64))
    cfg = plan.configurations["3d"]
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = build_model("unet3d", cfg, in_channels=1, num_classes=3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    class_weights = torch.tensor([0.2, 1.0, 1.0])  # the spheres are a few % of the volume
    fg = np.argwhere(case.label > 0)
    p = 48
    for step in range(steps):
        xs, ys = [], []
        for _ in range(2):
            centre = fg[rng.integers(len(fg))] if rng.random() < 0.7 else rng.integers(0, lab.shape)
            start = [int(np.clip(c - p // 2, 0, s - p)) for c, s in zip(centre, lab.shape)]
            sl = tuple(slice(s, s + p) for s in start)
            xs.append(img[(slice(None), *sl)])
            ys.append(lab[sl])
        loss = torch.nn.functional.cross_entropy(net(torch.stack(xs)), torch.stack(ys), weight=class_weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    from medseg.inference.sliding_window import sliding_window_predict

    net.eval()
    pred = sliding_window_predict(img, net, cfg.patch_size, batch_size=2).argmax(0).numpy()
    dice = [2 * np.sum((pred == c) & (case.label == c)) / max(1, np.sum(pred == c) + np.sum(case.label == c)) for c in (1, 2)]
    print(f"CT bundle: {steps} steps, last loss {loss.item():.3f}, Dice on its own case {dice[0]:.3f} / {dice[1]:.3f}", flush=True)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return write_bundle(path, model_name="unet3d", configuration="3d", fold=0, model_options={}, plan=plan,
                        config={"synthetic": True, "steps": steps}, labels=labels, postprocessing=[],
                        precision="fp32", state_dict_best=state, state_dict_last=state)


def bench(name: str, bundle: Path, inputs: list[Path], work: Path, repeats: int, overlap: float, tools: list[str]):
    """Run the tools interleaved; return rows and per-case Dice."""
    import numpy as np

    from medseg.bundle import load_bundle
    from medseg.io import read_volume

    b = load_bundle(bundle)
    batch = 1  # windows per forward pass: what the Predictor uses on the CPU, and MONAI's default
    classes = [c for c in b.labels if c != 0]
    listing = work / f"{name}_inputs.txt"
    listing.write_text("\n".join(str(p) for p in inputs))
    in_dir = work / f"{name}_in"
    if in_dir.exists():
        shutil.rmtree(in_dir)
    in_dir.mkdir()
    for p in inputs:
        (in_dir / p.name).symlink_to(p)
    results: dict[str, list[tuple[float, float]]] = {t: [] for t in tools}
    for r in range(repeats):
        for tool in tools:
            out = work / f"{name}_{tool}"
            if out.exists():
                shutil.rmtree(out)
            out.mkdir()
            if tool.startswith("medseg"):
                cmd = [sys.executable, "-m", "medseg", "infer", str(in_dir), "-m", str(bundle), "-o", str(out),
                       "--precision", tool.split("_")[1], "--overlap", str(overlap), "--device", "cpu"]
                if tool.endswith("_mlflow"):  # as when the bundle sits in its workdir: the run is logged
                    cmd += ["--workdir", str(work / "mlflow_workdir")]
            else:
                weights = "medseg" if tool == "monai_medseg_map" else "monai"
                cmd = [sys.executable, __file__, "--worker", str(bundle), str(listing), str(out), str(overlap), str(batch), weights]
            wall, rss = run_child(cmd, work / f"{name}_{tool}.log")
            results[tool].append((wall, rss))
            print(f"{name} run {r + 1} {tool:<12} {wall:8.1f} s {rss:8.0f} MiB  load {os.getloadavg()[0]:.1f}", flush=True)
    dices: dict[str, list[float]] = {"fp32_vs_monai": [], "auto_vs_monai": [], "auto_vs_fp32": [],
                                     "fp32_vs_monai_medseg_map": []}
    fg = []
    for p in inputs:
        stem = p.name.split(".")[0]
        masks = {}
        if "medseg_fp32" in tools:
            masks["fp32"] = read_volume(work / f"{name}_medseg_fp32" / f"{stem}.nii.gz").array
        if "medseg_auto" in tools:
            masks["auto"] = read_volume(work / f"{name}_medseg_auto" / f"{stem}.nii.gz").array
        for tool in ("monai", "monai_medseg_map"):
            if tool in tools:
                masks[tool] = np.asarray(read_volume(work / f"{name}_{tool}" / f"{stem}_monai.nii.gz").array)
        for a, b in (("fp32", "monai"), ("auto", "monai"), ("fp32", "monai_medseg_map")):
            if a in masks and b in masks:
                dices[f"{a}_vs_{b}"].append(dice_mc(masks[a], masks[b], classes))
        if "fp32" in masks and "auto" in masks:
            dices["auto_vs_fp32"].append(dice_mc(masks["auto"], masks["fp32"], classes))
        fg.append(float(np.mean(next(iter(masks.values())) > 0)))
    return results, dices, fg


def report(name: str, results, dices, fg) -> dict:
    import numpy as np

    med = {t: (float(np.median([w for w, _ in v])), float(max(m for _, m in v))) for t, v in results.items()}
    base = med.get("monai")
    print(f"\n{name}: median wall, max peak RSS over runs")
    for tool, (wall, rss) in med.items():
        ratio = f"{wall / base[0]:.2f}x time, {rss / base[1]:.2f}x memory vs MONAI" if base else ""
        print(f"  {tool:<12} {wall:8.1f} s {rss:8.0f} MiB  {ratio}")
    for k, v in dices.items():
        if v:
            print(f"  Dice {k}: min {min(v):.5f} mean {np.mean(v):.5f} over {len(v)} case(s)")
    print(f"  foreground fraction of the masks: min {min(fg):.4f} max {max(fg):.4f}")
    return {"tools": med, "dice": {k: [float(x) for x in v] for k, v in dices.items()}, "foreground": fg}


# ------------------------------------------------------------------------- backends (issue 20)
# tool -> (which model folder, --runtime, --precision); "bundle" is the fold's bundle, "fp32"/"int8" its exports
BACKENDS = {
    "torch_fp32": ("bundle", "torch", "fp32"), "torch_auto": ("bundle", "torch", "auto"),
    "ort_fp32": ("fp32", "onnxruntime", "fp32"), "ort_int8": ("int8", "onnxruntime", "fp32"),
    "ov_fp32": ("fp32", "openvino", "fp32"), "ov_bf16": ("fp32", "openvino", "bf16"), "ov_int8": ("int8", "openvino", "fp32"),
}


def latency_worker(folders_json: str, out_json: str, rounds: int) -> None:
    """Per-window network latency of every backend, in one process, interleaved round by round:
    one plan-sized window (batch 1, as the predictor runs on the CPU), median over rounds."""
    import statistics

    import torch

    from medseg.inference.backends import load_networks
    from medseg.precision import resolve_precision

    folders = json.loads(Path(folders_json).read_text())
    nets, window = {}, None
    for tool, (which, runtime, precision) in BACKENDS.items():
        plan = resolve_precision(precision, "cpu")
        bundle, net = load_networks(folders[which], runtime, device=torch.device("cpu"), precision=plan)
        cfg = bundle.configuration_plan
        window = torch.randn(1, len(bundle.plan.channel_names), *cfg.patch_size, generator=torch.Generator().manual_seed(0))
        nets[tool] = (net, plan, window.contiguous(memory_format=plan.memory_format(cfg.spatial_dims)))
    times: dict[str, list[float]] = {t: [] for t in nets}
    with torch.inference_mode():
        for tool, (net, plan, x) in nets.items():  # warm-up
            with plan.autocast():
                net(x)
        for _ in range(rounds):
            for tool, (net, plan, x) in nets.items():
                t0 = time.perf_counter()
                with plan.autocast():
                    net(x)
                times[tool].append(1000 * (time.perf_counter() - t0))
    Path(out_json).write_text(json.dumps({t: statistics.median(v) for t, v in times.items()}))


def bench_backends(name: str, bundle: Path, workdir: Path, inputs: list[Path], work: Path, repeats: int, rounds: int,
                   gate_cases: int | None, overlap: float = 0.5) -> dict:
    """Export the bundle (fp32 ONNX; int8 ONNX calibrated on WORKDIR and gated on its validation cases),
    then every backend of BACKENDS and the MONAI fp32 reference: per-window latency (one process),
    end-to-end wall time and peak RSS (own process each, interleaved), mask Dice vs torch fp32, and the
    seconds `medseg infer` spent inside its cases (its "[i/n] ... s" lines: the rest is start-up)."""
    import re

    import numpy as np

    from medseg.bundle import load_bundle
    from medseg.export import export_bundle
    from medseg.io import read_volume

    work = work / name
    work.mkdir(parents=True, exist_ok=True)
    print(f"\n== {name}: {len(inputs)} case(s), bundle {bundle}", flush=True)
    folders = {"bundle": str(bundle)}
    for kind in ("fp32", "int8"):
        out = work / f"export_{kind}"
        t0 = time.perf_counter()
        report = export_bundle(bundle, out, format="onnx", int8=kind == "int8", calibration=workdir if kind == "int8" else None,
                               gate_cases=gate_cases, tolerance=0.005)
        print(f"export {kind}: {time.perf_counter() - t0:.0f} s; " + "; ".join(report.lines), flush=True)
        folders[kind] = str(out)
    (work / "folders.json").write_text(json.dumps(folders))
    run_child([sys.executable, __file__, "--latency", str(work / "folders.json"), str(work / "latency.json"), str(rounds)],
              work / "latency.log")
    latency = json.loads((work / "latency.json").read_text())
    in_dir = work / "backends_in"
    shutil.rmtree(in_dir, ignore_errors=True)
    in_dir.mkdir(parents=True)
    for p in inputs:
        (in_dir / p.name).symlink_to(p)
    listing = work / "inputs.txt"
    listing.write_text("\n".join(str(p) for p in inputs))
    tools = [*BACKENDS, "monai"]
    results: dict[str, list[tuple[float, float]]] = {t: [] for t in tools}
    in_cases: dict[str, list[float]] = {t: [] for t in BACKENDS}
    for r in range(repeats):
        for tool in tools:
            out = work / f"backends_{tool}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            if tool == "monai":
                cmd = [sys.executable, __file__, "--worker", str(bundle), str(listing), str(out), str(overlap), "1", "monai"]
            else:
                which, runtime, precision = BACKENDS[tool]
                cmd = [sys.executable, "-m", "medseg", "infer", str(in_dir), "-m", folders[which], "-o", str(out), "--device", "cpu",
                       "--runtime", runtime, "--precision", precision, "--overlap", str(overlap)]
            log = work / f"backends_{tool}.log"
            wall, rss = run_child(cmd, log)
            results[tool].append((wall, rss))
            if tool in in_cases:
                in_cases[tool].append(sum(float(x) for x in re.findall(r"^\[\d+/\d+[^\]]*\] [^:]+: ([\d.]+) s", log.read_text(), re.M)))
            print(f"{name} run {r + 1} {tool:<11} {wall:7.1f} s {rss:7.0f} MiB  load {os.getloadavg()[0]:.1f}", flush=True)
    classes = [c for c in load_bundle(bundle).labels if c != 0]
    dice: dict[str, list[float]] = {t: [] for t in tools if t != "torch_fp32"}
    for p in inputs:
        stem = p.name.split(".")[0]
        ref = read_volume(work / "backends_torch_fp32" / f"{stem}.nii.gz").array
        for tool in dice:
            mask = work / f"backends_{tool}" / (f"{stem}_monai.nii.gz" if tool == "monai" else f"{stem}.nii.gz")
            dice[tool].append(dice_mc(np.asarray(read_volume(mask).array), ref, classes))
    manifest = json.loads((Path(folders["int8"]) / "manifest.json").read_text())
    latency["monai"] = latency["torch_fp32"]  # MONAI runs the same eager torch fp32 network (NCDHW)
    summary = {"latency_ms": latency, "dice_vs_torch_fp32": dice, "int8_gate": manifest["int8"]["gate"],
               "auto_choice": json.loads((Path(folders["fp32"]) / "manifest.json").read_text())["benchmark"],
               "seconds_in_cases": {t: float(np.median(v)) for t, v in in_cases.items() if v},
               "tools": {t: (float(np.median([w for w, _ in v])), float(max(m for _, m in v))) for t, v in results.items()}}
    auto, monai = summary["tools"]["torch_auto"], summary["tools"]["monai"]
    print(f"\n{name}, {len(inputs)} case(s): per-window ms, median wall, seconds in the cases, max peak RSS, "
          "speed vs torch auto and vs MONAI fp32, Dice vs torch fp32 (min / mean)")
    for tool, (wall, rss) in summary["tools"].items():
        d = dice.get(tool)
        dtext = f"{min(d):.4f} / {np.mean(d):.4f}" if d else "reference"
        inside = summary["seconds_in_cases"].get(tool)
        itext = f"{inside:7.1f} s" if inside is not None else "      - "
        print(f"  {tool:<11} {latency[tool]:8.1f} ms {wall:7.1f} s {itext} {rss:7.0f} MiB  "
              f"{auto[0] / wall:4.2f}x auto {monai[0] / wall:4.2f}x MONAI  Dice {dtext}")
    print(f"  int8 gate: {summary['int8_gate']}")
    return summary


def make_ct_workdir(work: Path, slices: int, steps: int) -> tuple[Path, Path, list[Path]]:
    """A 3-case synthetic CT workdir (seeds 0-2 of `make_ct`): fold 0 trains on ct_0 and ct_1 (int8
    calibration) and validates on ct_2 (the int8 gate); the CT bundle is trained on ct_0. Returns
    (workdir, bundle, [the validation scan])."""
    from medseg.preprocess.case import preprocess_case
    from medseg.preprocess.cache import write_case

    workdir = work / "ct_workdir"
    bundle = workdir / "models" / "unet3d" / "fold_0"
    scans = [workdir / f"ct_{i}.nii" for i in range(3)]
    if (bundle / "bundle.json").is_file():
        return workdir, bundle, scans[2:]
    workdir.mkdir(parents=True, exist_ok=True)
    for i, scan in enumerate(scans):
        image, label = make_ct(scan, slices, seed=i)
        if i == 0:
            make_ct_bundle(bundle, image, label, steps)
            from medseg.bundle import load_bundle

            plan = load_bundle(bundle).plan
            (workdir / "plan.json").write_text(plan.model_dump_json(indent=1))
        write_case(workdir, f"ct_{i}", preprocess_case([image], plan, label), stamp={"synthetic": True})
        del image, label
    (workdir / "splits.json").write_text(json.dumps([{"train": ["ct_0", "ct_1"], "val": ["ct_2"]}]))
    return workdir, bundle, scans[2:]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        bundle, listing, out, overlap, batch, weights = sys.argv[2:8]
        monai_worker(bundle, listing, out, float(overlap), int(batch), weights)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--latency":
        latency_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=15)
    ap.add_argument("--ct-slices", type=int, default=300)
    ap.add_argument("--ct-medseg-only-slices", type=int, default=0,
                    help="also run medseg auto alone on a 512x512xN CT, e.g. 400 (issue 7 item 6)")
    ap.add_argument("--ct-train-steps", type=int, default=100)
    ap.add_argument("--hippo-train-steps", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--only", choices=["hippo", "ct"], default=None)
    ap.add_argument("--same-map", action="store_true",
                    help="also run the MONAI reference with medseg's arithmetic: its Gaussian map and channels-last "
                         "tensors (for mask agreement, not timing)")
    ap.add_argument("--with-mlflow", action="store_true",
                    help="also run medseg auto logging its MLflow run (what `medseg infer` does when the bundle "
                         "sits in its workdir); the MONAI reference tracks nothing")
    ap.add_argument("--hippo-bundle", type=Path, default=WORK / "hippo_bundle")
    ap.add_argument("--split-cases", default=None, metavar="SPLITS_JSON:FOLD",
                    help="hippocampus: use that fold's validation cases instead of the first --cases (e.g. with a "
                         "bundle trained by bench_train_hippocampus.py)")
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--backends", type=Path, default=None, metavar="WORKDIR",
                    help="issue 20: torch fp32/auto, ONNX Runtime fp32/int8, OpenVINO fp32/bf16/int8 on --hippo-bundle's "
                         "fold (int8 calibrated and gated on WORKDIR), on --cases of that fold's validation cases")
    ap.add_argument("--latency-rounds", type=int, default=10)
    ap.add_argument("--gate-cases", type=int, default=None)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {os.getloadavg()}, {os.cpu_count()} CPUs", flush=True)
    tools = (["medseg_auto", "medseg_fp32", "monai"] + (["monai_medseg_map"] if args.same_map else [])
             + (["medseg_auto_mlflow"] if args.with_mlflow else []))
    summary = {"load_start": os.getloadavg()}
    if args.backends is not None:
        from medseg.bundle import bundle_fold

        if args.only in (None, "hippo"):
            val = json.loads((args.backends / "splits.json").read_text())[bundle_fold(args.hippo_bundle)]["val"]
            inputs = [DATA / "imagesTr" / f"{case}.nii.gz" for case in val][: args.cases]
            summary["backends_hippocampus"] = bench_backends("hippocampus", args.hippo_bundle, args.backends, inputs, args.work,
                                                             args.repeats, args.latency_rounds, args.gate_cases, args.overlap)
        if args.only in (None, "ct"):
            workdir, bundle, inputs = make_ct_workdir(args.work, args.ct_slices, args.ct_train_steps)
            summary["backends_ct"] = bench_backends(f"ct_512x512x{args.ct_slices}", bundle, workdir, inputs, args.work,
                                                    args.repeats, args.latency_rounds, None, args.overlap)
        summary["load_end"] = os.getloadavg()
        print(f"load average at end: {summary['load_end']}")
        (args.work / "summary_backends.json").write_text(json.dumps(summary, indent=2))
        return
    if args.only in (None, "hippo"):
        if not DATA.is_dir():
            sys.exit(f"hippocampus data not found at {DATA}")
        bundle = ensure_hippo_bundle(args.hippo_bundle, args.hippo_train_steps)
        inputs = sorted((DATA / "imagesTr").glob("*.nii.gz"))[: args.cases]
        if args.split_cases:
            splits_file, fold = args.split_cases.rsplit(":", 1)
            val = json.loads(Path(splits_file).read_text())[int(fold)]["val"]
            inputs = [DATA / "imagesTr" / f"{case}.nii.gz" for case in val]
        summary["hippocampus"] = report(f"hippocampus ({len(inputs)} cases)",
                                        *bench("hippo", bundle, inputs, args.work, args.repeats, args.overlap, tools))
    if args.only in (None, "ct"):
        ct = args.work / f"ct_{args.ct_slices}.nii"
        image, label = make_ct(ct, args.ct_slices)
        bundle = args.work / "ct_bundle"
        if not (bundle / "bundle.json").is_file():
            make_ct_bundle(bundle, image, label, args.ct_train_steps)
        del image, label
        summary["ct"] = report(f"CT 512x512x{args.ct_slices}",
                               *bench("ct", bundle, [ct], args.work, args.repeats, args.overlap, tools))
        if args.ct_medseg_only_slices:
            n = args.ct_medseg_only_slices
            big = args.work / f"ct_{n}.nii"
            make_ct(big, n)
            summary[f"ct_{n}"] = report(f"CT 512x512x{n} (medseg only)",
                                        *bench(f"ct{n}", bundle, [big], args.work, 1, args.overlap, ["medseg_auto"]))
    summary["load_end"] = os.getloadavg()
    print(f"load average at end: {summary['load_end']}")
    (args.work / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
