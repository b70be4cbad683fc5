"""The network behind the predictor, as a pluggable backend: (B, C, *S) float32 windows -> (B, K, *S) logits.

The sliding window, mirroring TTA, stitching, inversion, post-processing and writers call a backend as
they call a torch module, so every runtime shares them:
- `TorchBackend`: a bundle's network in eager PyTorch (precision and layout from `medseg.precision`), or
  a TorchScript export;
- `OnnxRuntimeBackend`: an ONNX export (fp32 or int8 QDQ) on ONNX Runtime's CPU (or CUDA) provider;
- `OpenVINOBackend`: an ONNX or OpenVINO IR export on OpenVINO's CPU plugin, with its own precision hint
  (f32, or bf16 where `--precision bf16`).
`load_networks(path, runtime, device, precision)` is the predictor's one call: a bundle folder gives the
torch backend; an export folder (`medseg export`, with manifest.json) the runtime asked for, or under
`auto` the fastest one measured for that export on this CPU (`medseg.export.bench`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.errors import BundleError, ConfigError

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnxruntime", "openvino", "auto")


class Backend:
    """A network: `__call__(batch (B, C, *S) tensor) -> (B, K, *S) float32 logits tensor` on the batch's
    device (the non-torch runtimes compute on the CPU). `name`: the runtime; `describe()`: one line."""

    name = "backend"

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


def _numpy(batch: torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 numpy copy/view of `batch` (the windows arrive channels-last)."""
    return np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())


def _threads() -> int:
    return max(1, torch.get_num_threads())


class TorchBackend(Backend):
    """An nn.Module (a bundle's eager network or a TorchScript export) called as is."""

    name = "torch"

    def __init__(self, module: torch.nn.Module, label: str = "torch eager"):
        self.module = module
        self.label = label

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.module(batch)

    def describe(self) -> str:
        return self.label


class OnnxRuntimeBackend(Backend):
    """An ONNX file on ONNX Runtime (CPU provider; CUDA first when `device` is cuda and it is there)."""

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None):
        from medseg.extras import require

        ort = require("onnxruntime", "export")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or _threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:
            raise BundleError(f"{path}: onnxruntime {ort.__version__} cannot load this network ({_first_line(exc)}); "
                              "re-export it with this medseg (`medseg export BUNDLE --format onnx`)") from None
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        self.version = ort.__version__

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run([self.output], {self.input: _numpy(batch)})[0]).to(batch.device)

    def describe(self) -> str:
        return f"onnxruntime {self.version} ({', '.join(self.session.get_providers())})"


class OpenVINOBackend(Backend):
    """An ONNX or OpenVINO IR (.xml + .bin) file on OpenVINO's CPU plugin. precision "bf16" asks the
    plugin for bf16 inference (it runs f32 where the CPU has no bf16 units); int8 QDQ models run int8."""

    name = "openvino"

    def __init__(self, path: str | os.PathLike, precision: str = "fp32", threads: int | None = None):
        from medseg.extras import require

        ov = require("openvino", "export")
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "INFERENCE_NUM_THREADS": int(threads or _threads()), "PERFORMANCE_HINT": "LATENCY"}
        try:
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as exc:
            raise BundleError(f"{path}: openvino {ov.__version__.split('-')[0]} cannot load this network ({_first_line(exc)}); "
                              "re-export it with this medseg (`medseg export BUNDLE`)") from None
        self.request = self.compiled.create_infer_request()
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # what the plugin runs: f32 where bf16 has no units
        self.precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        self.version = ov.__version__.split("-")[0]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.request.infer({0: _numpy(batch)})
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy()).to(batch.device)  # back where the windows are

    def describe(self) -> str:
        return f"openvino {self.version} (CPU, inference precision {self.precision})"


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:200] + "...") if len(text) > 200 else text or type(exc).__name__


def open_backend(export_dir: Path, manifest: dict, runtime: str, *, device: str = "cpu", precision: str = "fp32") -> Backend:
    """The backend `runtime` ("torch" | "onnxruntime" | "openvino") over a checked export folder."""
    model = export_dir / manifest["model_file"]
    if runtime == "onnxruntime":
        return OnnxRuntimeBackend(model, device=device)
    if runtime == "openvino":
        return OpenVINOBackend(model, precision=precision)
    if runtime == "torch":
        try:
            module = torch.jit.load(str(model), map_location=device)
        except Exception as exc:
            raise BundleError(f"{model}: torch {torch.__version__} cannot load this TorchScript network ({_first_line(exc)}); re-export it") from None
        return TorchBackend(module.eval(), label=f"torchscript (torch {torch.__version__})")
    raise ConfigError(f"runtime {runtime!r} is unknown; use one of {', '.join(RUNTIMES)}")


def is_export(path: str | os.PathLike) -> bool:
    """Whether `path` is a `medseg export` folder (it holds manifest.json) rather than a bundle."""
    from medseg.export.manifest import MANIFEST

    return (Path(path) / MANIFEST).is_file()


def load_networks(path: str | os.PathLike, runtime: str, *, device: torch.device, precision: Any) -> tuple[Any, Backend | torch.nn.Module]:
    """(bundle-like object, network) for one --model folder.

    A bundle: its `medseg.bundle.Bundle` and the eager torch module in the precision plan's memory
    format (runtime must be torch or auto). An export folder: its checked `ExportedModel` (a Bundle
    with the manifest) and the backend of `runtime` (auto: the fastest measured on this CPU)."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {runtime!r} is unknown; use one of {', '.join(RUNTIMES)}")
    if not is_export(path):
        from medseg.bundle import load_bundle

        if runtime not in ("torch", "auto"):
            raise ConfigError(f"{path}: --runtime {runtime} needs an export folder, but this is a bundle; "
                              f"run `medseg export {path} --format {'onnx' if runtime == 'onnxruntime' else 'openvino'}` and pass that folder")
        bundle = load_bundle(Path(path))
        fmt = precision.memory_format(bundle.configuration_plan.spatial_dims)
        return bundle, bundle.build_network("best", device=str(device)).to(memory_format=fmt)
    from medseg.export.folder import load_export
    from medseg.export.bench import choose_runtime

    exported = load_export(path)
    wanted = choose_runtime(exported, precision=precision.resolved.value) if runtime == "auto" else runtime
    if wanted not in exported.runtimes:
        raise ConfigError(f"{path}: a {exported.manifest['format']} export runs on {', '.join(exported.runtimes)}, not {wanted}; "
                          f"pick --runtime {exported.runtimes[0]} (or auto), or export with another --format")
    backend = open_backend(exported.path, exported.manifest, wanted, device=device.type, precision=precision.resolved.value)
    log.info("%s: %s", path, backend.describe())
    return exported, backend


__all__ = ["Backend", "OnnxRuntimeBackend", "OpenVINOBackend", "RUNTIMES", "TorchBackend", "is_export", "load_networks", "open_backend"]
