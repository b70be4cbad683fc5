"""int8 quantisers compared (issue 20): onnxruntime's `quantize_static` (what `medseg export --int8`
writes) against OpenVINO's NNCF (`nncf.quantize`), on the same float32 export and the same
calibration windows, both run on OpenVINO's CPU plugin.

Reports, for each: per-window latency (one plan-sized window, median of --rounds, interleaved) and
the gate's mean validation Dice on the fold's validation cases (`medseg.export.quantize.mean_dice`,
what the export's accuracy gate computes), next to float32's.

NNCF comes with the `export` extra (`medseg export --format openvino --int8` uses it); the recorded
run predates that and had it beside the venv (PYTHONPATH=/tmp/nncf_site, see docs/benchmarks.md).

Usage: .venv/bin/python benchmarks/bench_int8_quantisers.py --export FP32_EXPORT_DIR --workdir WORKDIR
           [--int8-export INT8_EXPORT_DIR] [--gate-cases N] [--rounds 5] [--work /tmp/medseg_bench/quantisers]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", type=Path, required=True, help="a float32 ONNX export folder (medseg export BUNDLE)")
    ap.add_argument("--int8-export", type=Path, default=None, help="its --int8 export (else quantised here)")
    ap.add_argument("--workdir", type=Path, required=True, help="the workdir the bundle was trained in")
    ap.add_argument("--gate-cases", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path("/tmp/medseg_bench/quantisers"))
    args = ap.parse_args()

    import torch

    from medseg.bundle import parse_fold
    from medseg.export import quantize
    from medseg.export.folder import load_export
    from medseg.inference.backends import OpenVINOBackend
    from medseg.models import model_head

    args.work.mkdir(parents=True, exist_ok=True)
    exported = bundle = load_export(args.export)  # an export folder reads as a bundle (plan, labels, meta)
    config = bundle.configuration_plan
    train_ids, val_ids = quantize.fold_split(args.workdir, parse_fold(bundle.meta.get("fold")))
    windows = quantize.calibration_windows(args.workdir, train_ids, config, 32)  # what the export calibrates on
    fp32_onnx = args.export / exported.manifest["model_file"]

    ort_int8 = args.int8_export / "model.onnx" if args.int8_export else args.work / "ort_int8.onnx"
    if not args.int8_export:
        t0 = time.perf_counter()
        quantize.quantize_onnx(fp32_onnx, ort_int8, windows)
        print(f"onnxruntime quantize_static: {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    nncf_xml = args.work / "nncf_int8.xml"
    quantize.quantize_nncf(fp32_onnx, nncf_xml, windows)  # what `medseg export --format openvino --int8` runs
    print(f"nncf.quantize (default preset, {len(windows)} windows): {time.perf_counter() - t0:.0f} s", flush=True)

    backends = {"fp32": OpenVINOBackend(fp32_onnx), "onnxruntime quantize_static": OpenVINOBackend(ort_int8),
                "nncf": OpenVINOBackend(nncf_xml)}
    window = torch.randn(1, len(bundle.plan.channel_names), *config.patch_size, generator=torch.Generator().manual_seed(0))
    times = {name: [] for name in backends}
    for backend in backends.values():
        backend(window)
    for _ in range(args.rounds):
        for name, backend in backends.items():
            t0 = time.perf_counter()
            backend(window)
            times[name].append(1000 * (time.perf_counter() - t0))
    head = model_head(bundle.model_name)
    cases = val_ids[: args.gate_cases] if args.gate_cases else val_ids
    dice = {name: quantize.mean_dice(backend, args.workdir, cases, bundle.plan, config, head) for name, backend in backends.items()}
    print(f"\n{len(cases)} validation case(s), OpenVINO CPU plugin, window {config.patch_size}:")
    for name in backends:
        print(f"  {name:<28} {statistics.median(times[name]):7.1f} ms / window   mean Dice {dice[name]:.5f}"
              + ("" if name == "fp32" else f"  ({dice[name] - dice['fp32']:+.5f} vs fp32)"))
    (args.work / "summary.json").write_text(json.dumps({"ms": {k: statistics.median(v) for k, v in times.items()},
                                                         "dice": dice, "cases": len(cases)}, indent=1))


if __name__ == "__main__":
    main()
