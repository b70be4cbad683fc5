"""`medseg export BUNDLE --format onnx|openvino|torchscript [--int8 --calibration WORKDIR] [-o DIR]`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class ExportFormat(str, Enum):
    onnx = "onnx"
    openvino = "openvino"
    torchscript = "torchscript"


def command(
    bundle: Annotated[Path, typer.Argument(help="The bundle folder to export (holds bundle.json and model_best.pt).")],
    format: Annotated[ExportFormat, typer.Option("--format", help="onnx (runs on onnxruntime and openvino), openvino (IR) or torchscript.")] = ExportFormat.onnx,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Export folder (default: BUNDLE-FORMAT[-int8] beside the bundle).")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Static int8 quantisation, calibrated on training windows of --calibration, gated on the fold's validation Dice.")] = False,
    calibration: Annotated[Optional[Path], typer.Option("--calibration", help="--int8: the workdir the bundle was trained in (splits.json, preprocessed cases).")] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", help="--int8: the most mean validation Dice the int8 masks may lose vs float32.")] = 0.005,
    calibration_windows: Annotated[int, typer.Option("--calibration-windows", min=1, help="--int8: training windows to calibrate on.")] = 32,
    gate_cases: Annotated[Optional[int], typer.Option("--gate-cases", min=1, help="--int8: gate on the first N validation cases (default: all).")] = None,
    opset: Annotated[int, typer.Option("--opset", min=11, help="ONNX opset.")] = 17,
    no_benchmark: Annotated[bool, typer.Option("--no-benchmark", help="Skip timing a window per runtime (then --runtime auto measures on first use).")] = False,
) -> None:
    """Export a bundle's network with its plan, labels and post-processing, for `medseg infer --model EXPORT`."""
    from medseg.export import export_bundle

    report = export_bundle(bundle, output, format=format.value, int8=int8, calibration=calibration, tolerance=tolerance, opset=opset,
                           calibration_windows=calibration_windows, gate_cases=gate_cases, benchmark=not no_benchmark)
    for line in report.lines:
        typer.echo(line)
    typer.echo(f"exported {report.manifest['format']} ({report.manifest['precision']}) -> {report.path}")
