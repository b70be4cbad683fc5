"""`medseg export`: a bundle's network as ONNX, OpenVINO IR or TorchScript, with everything inference needs.

`export_bundle(bundle, out, format=...)` writes an export folder (layout: `medseg.export.manifest`):
the network with one output and dynamic batch/spatial sizes, the bundle's plan and metadata, and a
manifest with the sha256 of each file, the per-window timing of each runtime on this CPU (for
`--runtime auto`) and, with `int8=True`, the calibration and the accuracy gate's two Dice values.
The folder is built under a temporary name and renamed when complete; a refused int8 export leaves
nothing behind. `medseg.load_model(EXPORT)` / `medseg infer --model EXPORT` run it through the same
preprocessing, sliding window, TTA, inversion, post-processing and writers as a bundle.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medseg.data.manifest import sha256_of
from medseg.errors import ConfigError, MedsegError, OutputError
from medseg.extras import available
from medseg.export.manifest import DEFAULT_OPSET, EXPORT_VERSION, FORMATS, MANIFEST, RUNTIMES_OF, runtime_versions, write_manifest

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-3  # max |logit| difference vs torch, relative to the largest |logit| (torch fp32 itself is 2.4e-4 off fp64 on the Hippocampus U-Net)


class ExportRefused(MedsegError):
    """The int8 network failed its accuracy gate (its masks lost more Dice than the tolerance)."""


@dataclass
class ExportReport:
    path: Path
    manifest: dict
    lines: list[str] = field(default_factory=list)


def default_output(bundle: Path, format: str, int8: bool) -> Path:
    return bundle.parent / f"{bundle.name}-{format}{'-int8' if int8 else ''}"


def _require_runtimes(format: str) -> None:
    from medseg.extras import require

    for module in ("onnx", "onnxruntime") + (("openvino",) if format == "openvino" else ()):
        if format != "torchscript":
            require(module, "export")


def export_bundle(bundle: str | os.PathLike, out: str | os.PathLike | None = None, *, format: str = "onnx", int8: bool = False,
                  calibration: str | os.PathLike | None = None, tolerance: float = 0.005, opset: int = DEFAULT_OPSET,
                  calibration_windows: int = 32, gate_cases: int | None = None, benchmark: bool = True) -> ExportReport:
    """Export `bundle` (a bundle folder) to `out` (default: BUNDLE-FORMAT[-int8] beside it).

    format: "onnx" (runs on onnxruntime and openvino), "openvino" (IR), "torchscript" (torch).
    int8: quantise statically, calibrated on `calibration_windows` training windows of `calibration`
        (the workdir the bundle was trained in), and refuse (`ExportRefused`) unless the mean Dice on
        the fold's validation cases (the first `gate_cases`, default all) stays within `tolerance`
        of the float32 bundle's.
    benchmark: time one window per runtime for `--runtime auto`.
    """
    from medseg.bundle import BUNDLE_JSON, PLAN_JSON, load_bundle, parse_fold
    from medseg.export import convert

    if format not in FORMATS:
        raise ConfigError(f"--format {format!r} is unknown; use one of {', '.join(FORMATS)}")
    if int8 and format == "torchscript":
        raise ConfigError("--int8 needs --format onnx or openvino (TorchScript has no static int8 path here)")
    if int8 and calibration is None:
        raise ConfigError("--int8 needs --calibration WORKDIR, the workdir the bundle was trained in (its training cases calibrate)")
    if not 0 <= tolerance < 1:
        raise ConfigError(f"--tolerance {tolerance} is out of range; expected a Dice difference in [0, 1), e.g. 0.005")
    _require_runtimes(format)
    source = load_bundle(bundle)
    out = Path(out) if out is not None else default_output(source.path, format, int8)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise OutputError(f"{out}: exists and is not an export folder; choose another -o or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    config = source.configuration_plan
    network = source.build_network("best", device="cpu")
    in_channels = source.plan.in_channels
    if int8 and source.plan.prompt_channels:
        raise ConfigError(f"{source.path}: --int8 calibrates on training windows without prompts, so a promptable model "
                          "is exported in float32 only; drop --int8")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name in (BUNDLE_JSON, PLAN_JSON):
            shutil.copyfile(source.path / name, tmp / name)
        example = convert.example_input(in_channels, config.patch_size, config.spatial_dims)
        if format == "torchscript":
            convert.to_torchscript(network, tmp / FORMATS[format], example)
        else:
            convert.to_onnx(network, tmp / "model.onnx", example, opset)
        in_layout, out_layout = convert.layouts(config.spatial_dims)
        symbolic = ["batch", in_channels, *("x", "y", "z")[: config.spatial_dims]]
        manifest = {
            "export_version": EXPORT_VERSION, "format": format, "precision": "int8" if int8 else "fp32",
            "opset": None if format == "torchscript" else opset, "model_file": FORMATS[format], "runtimes": list(RUNTIMES_OF[format]),
            "created_with": runtime_versions(),
            "input": {"name": convert.INPUT_NAME, "layout": in_layout, "dtype": "float32", "shape": symbolic},
            "output": {"name": convert.OUTPUT_NAME, "layout": out_layout, "dtype": "float32",
                       "shape": ["batch", len(source.labels), *symbolic[2:]],
                       "meaning": "logits (the predictor applies the head's softmax and argmax)"},
            "source": {"model": source.model_name, "configuration": source.configuration, "fold": source.meta.get("fold"),
                       "weights_sha256": sha256_of(source.path / "model_best.pt")},
        }
        lines = []
        nncf_ir = int8 and format == "openvino" and available("nncf")  # OpenVINO's own quantiser writes the IR: faster int8 there
        if int8:
            from medseg.export import quantize

            workdir = Path(calibration)
            train_ids, val_ids = quantize.fold_split(workdir, parse_fold(source.meta.get("fold")))
            windows = quantize.calibration_windows(workdir, train_ids, config, calibration_windows)
            if nncf_ir:
                manifest["int8"] = quantize.quantize_nncf(tmp / "model.onnx", tmp / FORMATS[format], windows)
            else:  # a QDQ graph: runs int8 on onnxruntime and openvino alike
                manifest["int8"] = quantize.quantize_onnx(tmp / "model.onnx", tmp / "model.int8.onnx", windows)
                os.replace(tmp / "model.int8.onnx", tmp / "model.onnx")
            manifest["int8"]["calibration_cases"] = min(len(train_ids), max(1, calibration_windows // 2))
        if format == "openvino":
            if not nncf_ir:
                convert.to_openvino(tmp / "model.onnx", tmp / FORMATS[format])
            (tmp / "model.onnx").unlink()
        from medseg.inference.backends import TorchBackend, open_backend

        if not int8:  # float32 parity on an odd-sized window
            manifest["parity"] = _parity(network, tmp, manifest, example)
            lines.append("parity vs torch (max |logit| difference): " + ", ".join(f"{k} {v:.1e}" for k, v in manifest["parity"].items()))
        else:
            from medseg.export import quantize
            from medseg.models import model_head

            head = model_head(source.model_name)
            cases = val_ids[:gate_cases] if gate_cases else val_ids
            reference = quantize.mean_dice(TorchBackend(network), workdir, cases, source.plan, config, head)
            gate = {"cases": len(cases), "tolerance": tolerance, "dice_fp32": round(reference, 5), "dice_int8": {}}
            for runtime in manifest["runtimes"]:
                gate["dice_int8"][runtime] = round(quantize.mean_dice(open_backend(tmp, manifest, runtime), workdir, cases, source.plan, config, head), 5)
            gate["passed"] = all(reference - d <= tolerance for d in gate["dice_int8"].values())
            manifest["int8"]["gate"] = gate
            values = ", ".join(f"{r} {d:.4f}" for r, d in gate["dice_int8"].items())
            summary = (f"int8 gate on {len(cases)} validation case(s) of fold {source.meta.get('fold')}: mean Dice fp32 {reference:.4f}, "
                       f"int8 {values}; tolerance {tolerance}")
            if not gate["passed"]:
                raise ExportRefused(f"{summary}: int8 loses more Dice than the tolerance, export refused; export float32 "
                                    "(drop --int8) or raise --tolerance")
            lines.append(summary + ": passed")
        if benchmark:
            from medseg.export.bench import measure

            manifest["benchmark"] = measure(tmp, manifest, config.patch_size, in_channels)
            from medseg.export.bench import time_backend

            window = torch.randn(1, in_channels, *config.patch_size, generator=torch.Generator().manual_seed(0))
            with torch.inference_mode():
                manifest["benchmark"]["torch_eager_fp32_ms"] = round(time_backend(TorchBackend(network), window), 2)
            ms = manifest["benchmark"]["ms_per_window"]
            lines.append(f"ms per {'x'.join(map(str, config.patch_size))} window: " + ", ".join(f"{k} {v:.1f}" for k, v in ms.items())
                         + f" (torch eager fp32 {manifest['benchmark']['torch_eager_fp32_ms']:.1f}); auto -> {manifest['benchmark']['fastest']}")
        write_manifest(tmp, manifest)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportReport(out, manifest, lines)


def _parity(network, folder: Path, manifest: dict, example: torch.Tensor) -> dict[str, float]:
    """Max |logit| difference of each runtime vs the torch network on `example`; a float32 export
    off by more than PARITY_TOLERANCE of the largest |logit| (summation order differs) is refused."""
    from medseg.inference.backends import open_backend

    with torch.inference_mode():
        reference = network(example).float().numpy()
        found = {}
        for runtime in manifest["runtimes"]:
            out = open_backend(folder, manifest, runtime)(example).numpy()
            found[runtime] = float(np.abs(out - reference).max()) if out.shape == reference.shape else float("inf")
    limit = PARITY_TOLERANCE * max(1.0, float(np.abs(reference).max()))
    bad = {k: v for k, v in found.items() if not v <= limit}
    if bad:
        raise ConfigError(f"the exported network's logits differ from torch's by {bad} (> {limit:.1e}) on a "
                          f"{tuple(example.shape)} window; this model does not export faithfully, keep the bundle")
    return found


__all__ = ["ExportRefused", "ExportReport", "default_output", "export_bundle"]
