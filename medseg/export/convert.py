"""A bundle's torch network -> one network file with ONE output and dynamic batch and spatial sizes.

ONNX through torch's TorchScript-based exporter (`torch.onnx.export(dynamo=False)`: the dynamo exporter
needs onnxscript, which medseg does not depend on); OpenVINO IR converted from that ONNX graph
(`openvino.convert_model`), so both runtimes see the same graph; TorchScript by `torch.jit.trace`.
The models take their general (export) branch while traced (`medseg.models.common.exporting`):
padding to the total stride is always in the graph, and the channels-last instance norm is the plain
InstanceNormalization. In eval mode a deep-supervised U-Net returns only its full-resolution logits,
and `SingleOutput` makes that explicit for any family.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from medseg.errors import ConfigError

INPUT_NAME, OUTPUT_NAME = "image", "logits"


class SingleOutput(torch.nn.Module):
    """The network's full-resolution logits only: (B, C, *S) -> (B, K, *S) (no deep-supervision heads)."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        return out[0] if isinstance(out, (list, tuple)) else out


def layouts(spatial_dims: int) -> tuple[str, str]:
    return ("NCDHW", "NKDHW") if spatial_dims == 3 else ("NCHW", "NKHW")


def example_input(in_channels: int, patch_size, spatial_dims: int) -> torch.Tensor:
    """The tracing example: one window of the plan's patch, plus one voxel per axis so no size is a
    special case (a size equal to a stride multiple must not be baked in)."""
    return torch.randn(1, in_channels, *[int(p) + 1 for p in patch_size][:spatial_dims])


def to_onnx(network: torch.nn.Module, path: Path, example: torch.Tensor, opset: int) -> None:
    dims = example.dim() - 2
    axes = {0: "batch", **{2 + d: ("x", "y", "z")[d] for d in range(dims)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape arithmetic and instance norm's training flag
        try:
            torch.onnx.export(SingleOutput(network).eval(), (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
                              dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes})
        except Exception as exc:
            first = " ".join(str(exc).split())[:200]
            raise ConfigError(f"the network does not export to ONNX opset {opset} ({type(exc).__name__}: {first}); "
                              "try another --opset (17 is the default)") from None


def to_openvino(onnx_path: Path, xml_path: Path) -> None:
    """ONNX -> OpenVINO IR (model.xml + model.bin), weights kept float32 (compress_to_fp16=False)."""
    from medseg.extras import require

    ov = require("openvino", "export")
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


def to_torchscript(network: torch.nn.Module, path: Path, example: torch.Tensor) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(SingleOutput(network).eval(), (example,), check_trace=False)
    traced.save(str(path))
