"""int8 export: calibrated on the fold's training windows, gated on its validation cases' Dice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.export import ExportRefused, export_bundle


def _int8_export(fold_workdir, out, format: str):
    """An int8 export of the fold's bundle (8 calibration windows, tolerance 0.05) and its manifest."""
    work, bundle = fold_workdir
    report = export_bundle(bundle, out, format=format, int8=True, calibration=work, tolerance=0.05,
                           calibration_windows=8, benchmark=False)
    return report, json.loads((report.path / "manifest.json").read_text())


@pytest.mark.slow
def test_int8_export_passes_its_gate_and_records_both_dice(fold_workdir, tmp_path):
    report, manifest = _int8_export(fold_workdir, tmp_path / "int8", "onnx")
    assert manifest["precision"] == "int8"
    q = manifest["int8"]
    assert q["per_channel"] and q["weight_type"] == "QInt8" and q["calibration_windows"] == 8
    gate = q["gate"]
    assert gate["passed"] and gate["cases"] == 2 and gate["tolerance"] == 0.05
    assert gate["dice_fp32"] > 0.3  # the tiny net segments; a gate on empty masks would prove nothing
    assert set(gate["dice_int8"]) == {"onnxruntime", "openvino"}
    assert all(abs(d - gate["dice_fp32"]) <= 0.05 for d in gate["dice_int8"].values())
    assert any(line.startswith("int8 gate on 2 validation case(s)") for line in report.lines)
    import onnx

    ops = {n.op_type for n in onnx.load(str(report.path / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # a QDQ graph


@pytest.mark.slow
def test_an_openvino_int8_export_is_quantised_by_nncf_and_gated(fold_workdir, tmp_path):
    from medseg.inference.backends import load_networks

    report, manifest = _int8_export(fold_workdir, tmp_path / "ov_int8", "openvino")
    assert manifest["int8"]["method"] == "nncf.quantize" and manifest["int8"]["calibration_windows"] == 8
    gate = manifest["int8"]["gate"]
    assert gate["passed"] and set(gate["dice_int8"]) == {"openvino"} and gate["dice_fp32"] > 0.3
    assert not (report.path / "model.onnx").exists() and (report.path / "model.xml").is_file()
    xml = (report.path / "model.xml").read_text()
    assert "FakeQuantize" in xml or "FakeConvert" in xml  # int8 quantisation nodes in the IR
    import torch

    from medseg.precision import resolve_precision

    _, net = load_networks(report.path, "openvino", device=torch.device("cpu"), precision=resolve_precision("fp32", "cpu"))
    assert net(torch.zeros(1, 1, 17, 19, 15)).shape[2:] == (17, 19, 15)  # odd sizes still run


@pytest.mark.slow
def test_int8_gate_refuses_a_badly_calibrated_network(fold_workdir, tmp_path, monkeypatch):
    """Calibrated on windows 100x too dim, the activations clip: the masks lose Dice and the export is
    refused, naming both Dice values, leaving no folder behind."""
    from medseg.export import quantize

    work, bundle = fold_workdir
    real = quantize.calibration_windows
    monkeypatch.setattr(quantize, "calibration_windows", lambda *a, **k: [w * 0.01 for w in real(*a, **k)])
    out = tmp_path / "int8"
    with pytest.raises(ExportRefused, match=r"mean Dice fp32 0\.\d+, int8 onnxruntime 0\.\d+.*export refused") as info:
        export_bundle(bundle, out, format="onnx", int8=True, calibration=work, tolerance=0.001, calibration_windows=8, benchmark=False)
    assert "\n" not in str(info.value)
    assert not out.exists() and not list(tmp_path.glob(".int8*"))


def test_int8_needs_a_fold_and_its_workdir(fold_workdir, tmp_path):
    from medseg.errors import ConfigError, InputError

    work, bundle = fold_workdir
    with pytest.raises(ConfigError, match="--int8 needs --calibration WORKDIR"):
        export_bundle(bundle, tmp_path / "a", int8=True)
    with pytest.raises(InputError, match="splits.json: missing"):
        export_bundle(bundle, tmp_path / "b", int8=True, calibration=tmp_path)
    with pytest.raises(ConfigError, match="needs --format onnx or openvino"):
        export_bundle(bundle, tmp_path / "c", format="torchscript", int8=True, calibration=work)


def test_calibration_windows_come_from_training_cases(fold_workdir):
    from medseg.export.quantize import calibration_windows, fold_split
    from medseg.preprocess.plan import Plan

    work, _ = fold_workdir
    train, val = fold_split(work, 0)
    assert len(train) == 4 and len(val) == 2 and not set(train) & set(val)
    config = Plan.load(work / "plan.json").configurations["3d"]
    windows = calibration_windows(work, train, config, count=6)
    assert len(windows) == 6 and all(w.shape == (1, 1, 16, 16, 16) and w.dtype == np.float32 for w in windows)
    assert all(np.abs(w).sum() > 0 for w in windows)
    windows_2d = calibration_windows(work, train, Plan.load(work / "plan.json").configurations["2d"], count=2)
    assert all(w.shape == (1, 1, 16, 16) for w in windows_2d)
