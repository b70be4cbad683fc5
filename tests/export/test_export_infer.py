"""`medseg export` folders: the manifest, the same masks as the bundle through the whole pipeline on every
float32 runtime, and one-line refusals of damaged exports."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cli_helpers import run
from export_helpers import blob_volume
from medseg.errors import BundleError, ConfigError


def test_manifest_describes_the_export(onnx_export, blob_bundle):
    from medseg.data.manifest import sha256_of

    manifest = json.loads((onnx_export / "manifest.json").read_text())
    assert manifest["format"] == "onnx" and manifest["precision"] == "fp32" and manifest["opset"] == 17
    assert manifest["runtimes"] == ["onnxruntime", "openvino"]
    assert manifest["input"] == {"name": "image", "layout": "NCDHW", "dtype": "float32", "shape": ["batch", 1, "x", "y", "z"]}
    assert manifest["output"]["name"] == "logits" and manifest["output"]["shape"] == ["batch", 2, "x", "y", "z"]
    assert set(manifest["files"]) == {"model.onnx", "bundle.json", "plan.json"}
    assert all(sha256_of(onnx_export / n) == h for n, h in manifest["files"].items())
    assert manifest["source"]["weights_sha256"] == sha256_of(blob_bundle / "model_best.pt")
    assert (onnx_export / "bundle.json").read_text() == (blob_bundle / "bundle.json").read_text()
    bench = manifest["benchmark"]
    assert set(bench["ms_per_window"]) == {"onnxruntime", "openvino"} and bench["fastest"] in bench["ms_per_window"]
    assert all(v > 0 for v in bench["ms_per_window"].values()) and all(v < 1e-4 for v in manifest["parity"].values())
    for versions in ("torch", "onnx", "onnxruntime", "openvino"):
        assert manifest["created_with"][versions]


def test_exported_runtimes_give_the_bundles_masks(onnx_export, blob_bundle):
    """Same preprocessing, sliding window (odd-sized scan: edge windows), TTA, inversion: the same mask."""
    import medseg

    scan = blob_volume()
    for tta, runtimes in ((True, ("onnxruntime",)), (False, ("openvino", "auto"))):
        reference = medseg.load_model(blob_bundle, device="cpu", precision="fp32", tta=tta).segment(scan).labels
        assert reference.array.sum() > 0
        for runtime in runtimes:
            labels = medseg.load_model(onnx_export, device="cpu", runtime=runtime, tta=tta, precision="fp32").segment(scan).labels
            assert np.array_equal(labels.array, reference.array), runtime
            assert np.allclose(labels.affine, reference.affine)
    auto = medseg.load_model(onnx_export, device="cpu", precision="fp32").networks[0].name  # the export's own fp32 timing
    assert auto == json.loads((onnx_export / "manifest.json").read_text())["benchmark"]["fastest"]


@pytest.mark.slow
def test_openvino_and_torchscript_exports_through_the_cli(blob_bundle, tmp_path):
    from medseg.io import read_volume, write_volume

    scan = write_volume(blob_volume(seed=3), tmp_path / "scan.nii.gz")
    assert run("infer", scan, "--model", blob_bundle, "-o", tmp_path / "bundle.nii.gz", "--precision", "fp32") == 0
    reference = read_volume(tmp_path / "bundle.nii.gz").array
    for fmt in ("openvino", "torchscript"):
        out = tmp_path / f"exp-{fmt}"
        assert run("export", blob_bundle, "--format", fmt, "-o", out, "--no-benchmark") == 0
        runtime = "openvino" if fmt == "openvino" else "torch"
        assert run("infer", scan, "--model", out, "-o", tmp_path / f"{fmt}.nii.gz", "--runtime", runtime, "--precision", "fp32") == 0
        assert np.array_equal(read_volume(tmp_path / f"{fmt}.nii.gz").array, reference), fmt


def test_infer_cli_on_an_onnx_export_writes_the_bundles_mask(onnx_export, blob_bundle, tmp_path, capsys):
    from medseg.io import read_volume, write_volume

    scan = write_volume(blob_volume(seed=4), tmp_path / "scan.nii.gz")
    assert run("infer", scan, "--model", blob_bundle, "-o", tmp_path / "bundle.nii.gz", "--precision", "fp32") == 0
    assert run("infer", scan, "--model", onnx_export, "-o", tmp_path / "export.nii.gz", "--runtime", "onnxruntime", "--precision", "fp32") == 0
    exported, reference = read_volume(tmp_path / "export.nii.gz"), read_volume(tmp_path / "bundle.nii.gz")
    assert reference.array.sum() > 0 and np.array_equal(exported.array, reference.array)
    assert np.allclose(exported.affine, reference.affine)
    capsys.readouterr()
    assert run("infer", scan, "--model", onnx_export, "-o", tmp_path / "x.nii.gz", "--runtime", "tensorrt") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--runtime 'tensorrt' is unknown; use one of torch, onnxruntime, openvino, auto" in err


def test_bundle_refuses_a_foreign_runtime(blob_bundle):
    import medseg

    with pytest.raises(ConfigError, match="needs an export folder"):
        medseg.load_model(blob_bundle, device="cpu", runtime="onnxruntime")


def test_export_refuses_a_torchscript_runtime_mismatch(onnx_export):
    import medseg

    with pytest.raises(ConfigError, match="runs on onnxruntime, openvino, not torch"):
        medseg.load_model(onnx_export, device="cpu", runtime="torch")


def _one_line_refusal(capsys, export, scan, pattern):
    import medseg

    with pytest.raises(BundleError, match=pattern):
        medseg.load_model(export, device="cpu")
    capsys.readouterr()
    assert run("infer", scan, "--model", export, "-o", export.parent / "mask.nii.gz") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("medseg: error:") and "Traceback" not in err, err
    assert not (export.parent / "mask.nii.gz").exists()
    return err


def test_damaged_exports_are_refused_in_one_line(onnx_export, tmp_path, capsys):
    from medseg.data.manifest import sha256_of
    from medseg.io import write_volume

    scan = write_volume(blob_volume(), tmp_path / "scan.nii.gz")
    changed = shutil.copytree(onnx_export, tmp_path / "changed")
    with open(changed / "model.onnx", "r+b") as fh:  # one flipped byte inside the weights
        fh.seek(-100, 2)
        byte = fh.read(1)
        fh.seek(-100, 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    err = _one_line_refusal(capsys, changed, scan, "sha256 .* differs from the manifest")
    assert "model.onnx" in err

    missing = shutil.copytree(onnx_export, tmp_path / "missing")
    (missing / "plan.json").unlink()
    assert "plan.json: missing" in _one_line_refusal(capsys, missing, scan, "missing; the export folder is incomplete")

    import onnx

    newer = shutil.copytree(onnx_export, tmp_path / "newer")  # as if written by a future exporter: hashes consistent
    model = onnx.load(str(newer / "model.onnx"))
    next(o for o in model.opset_import if o.domain in ("", "ai.onnx")).version = 99
    onnx.save(model, str(newer / "model.onnx"))
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["opset"] = 99
    manifest["files"]["model.onnx"] = sha256_of(newer / "model.onnx")
    (newer / "manifest.json").write_text(json.dumps(manifest))
    assert "opset 99" in _one_line_refusal(capsys, newer, scan, "ONNX opset 99, newer than the installed onnx")


def test_auto_measures_again_on_another_cpu(onnx_export, tmp_path, monkeypatch):
    """The stored timing is used on the CPU it was measured on; an export made on another CPU is timed here."""
    from medseg.export import bench
    from medseg.export.folder import load_export

    assert bench.choose_runtime(load_export(onnx_export)) == json.loads((onnx_export / "manifest.json").read_text())["benchmark"]["fastest"]
    moved = shutil.copytree(onnx_export, tmp_path / "moved")
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["benchmark"]["cpu"] = "another CPU | avx512f amx_bf16 | 64 cpus"
    (moved / "manifest.json").write_text(json.dumps(manifest))  # the manifest itself is not hashed
    calls = []
    real = bench.measure

    def spy(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "measure", spy)
    chosen = bench.choose_runtime(load_export(moved))
    assert calls == [moved] and chosen in ("onnxruntime", "openvino")
    assert bench.choose_runtime(load_export(moved)) == chosen and len(calls) == 1  # once per process
