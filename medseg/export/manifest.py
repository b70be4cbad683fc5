"""The export folder's manifest.json: what the network file is, how to feed it, and a sha256 per file.

```
EXPORT/manifest.json  export_version, format (onnx | openvino | torchscript), precision (fp32 | int8),
                      opset (ONNX opset, also of the ONNX graph an IR was converted from), model_file,
                      runtimes (which --runtime values can run it), created_with (torch, onnx,
                      onnxruntime, openvino versions), input / output (name, layout, dtype, shape with
                      symbolic batch and spatial sizes), source (model, configuration, fold, weights
                      sha256), files {name: sha256} (every file but the manifest), benchmark (per-window
                      ms of each runtime on the CPU it was measured on), int8 (calibration and gate)
EXPORT/bundle.json    the source bundle's bundle.json (labels, label codes, post-processing, model, fold)
EXPORT/plan.json      the Plan (preprocessing, patch size, configuration)
EXPORT/model.onnx | model.xml + model.bin | model.ts
```
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from medseg.data.manifest import sha256_of

MANIFEST = "manifest.json"
EXPORT_VERSION = 1
DEFAULT_OPSET = 17
FORMATS = {"onnx": "model.onnx", "openvino": "model.xml", "torchscript": "model.ts"}
RUNTIMES_OF = {"onnx": ["onnxruntime", "openvino"], "openvino": ["openvino"], "torchscript": ["torch"]}


def cpu_signature() -> str:
    """What makes a per-window timing valid elsewhere: the CPU model, its vector/matrix units and the
    core count ("Intel Xeon ... | avx2 avx512_bf16 ... | 2 cpus")."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    units = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")) or "vnni" in f)
    return f"{model} | {' '.join(units)} | {os.cpu_count()} cpus"


def runtime_versions() -> dict[str, str | None]:
    """Versions of torch, onnx, onnxruntime and openvino installed here (None: not installed)."""
    import importlib

    versions: dict[str, str | None] = {}
    for name in ("torch", "onnx", "onnxruntime", "openvino"):
        try:
            versions[name] = str(importlib.import_module(name).__version__).split("-")[0]
        except Exception:
            versions[name] = None
    return versions


def write_manifest(root: Path, manifest: dict) -> None:
    """manifest.json with the sha256 of every other file in `root`, written atomically (last, so a
    folder without a manifest is an unfinished export)."""
    from medseg.io.atomic import atomic_output

    manifest["files"] = {p.name: sha256_of(p) for p in sorted(root.iterdir()) if p.is_file() and p.name != MANIFEST}
    with atomic_output(root / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))
