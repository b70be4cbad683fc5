"""Every registered model exports with ONE output and dynamic sizes, and its ONNX graph (on ONNX Runtime and
OpenVINO), its OpenVINO IR and its TorchScript give the torch network's logits within 1e-4 on odd sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.export import convert
from medseg.inference.backends import OnnxRuntimeBackend, OpenVINOBackend
from medseg.models import MODELS, build_model

ODD = {3: [(1, 2, 33, 21, 17), (2, 2, 19, 40, 23)], 2: [(1, 2, 33, 21), (3, 2, 19, 47)]}
TOLERANCE = 1e-4


def tiny_network(name: str) -> torch.nn.Module:
    dims = MODELS[name].spatial_dims
    cfg = dict(spatial_dims=dims, patch_size=[32] * dims, features_per_stage=[4, 8, 16], strides=[[1] * dims, [2] * dims, [2] * dims],
               kernel_sizes=[[3] * dims] * 3)
    options = {"deep_supervision": True} if name.startswith("unet") else {}  # several heads in training: one output exported
    torch.manual_seed(0)
    net = build_model(name, cfg, in_channels=2, num_classes=3, spacing=[1.0, 1.0, 1.0], **options).eval()
    for m in net.modules():  # non-trivial norm parameters, so a dropped affine or eps would show
        if isinstance(m, (torch.nn.InstanceNorm3d, torch.nn.InstanceNorm2d, torch.nn.LayerNorm, torch.nn.BatchNorm3d, torch.nn.BatchNorm2d)):
            if m.weight is not None:
                torch.nn.init.uniform_(m.weight, 0.5, 1.5)
                torch.nn.init.uniform_(m.bias, -0.5, 0.5)
    return net


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n.startswith("unet") else pytest.mark.slow) for n in MODELS])
def test_onnx_matches_torch_on_odd_sizes(name, tmp_path):
    net = tiny_network(name)
    dims = MODELS[name].spatial_dims
    path = tmp_path / "model.onnx"
    convert.to_onnx(net, path, convert.example_input(2, [16] * dims, dims), opset=17)
    import onnx

    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == ["logits"]
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", "", *("x", "y", "z")[:dims]]
    runtimes = [OnnxRuntimeBackend(path), OpenVINOBackend(path)]
    for shape in ODD[dims]:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            ref = net(x).numpy()
        for backend in runtimes:
            out = backend(x).numpy()
            assert out.shape == ref.shape == (shape[0], 3, *shape[2:]), backend.name
            assert np.abs(out - ref).max() < TOLERANCE, (backend.name, shape, float(np.abs(out - ref).max()))


@pytest.mark.slow
def test_openvino_ir_and_torchscript_match_torch(tmp_path):
    net = tiny_network("unet3d")
    example = convert.example_input(2, [16, 16, 16], 3)
    convert.to_onnx(net, tmp_path / "model.onnx", example, opset=17)
    convert.to_openvino(tmp_path / "model.onnx", tmp_path / "model.xml")
    convert.to_torchscript(net, tmp_path / "model.ts", example)
    ir, ts = OpenVINOBackend(tmp_path / "model.xml"), torch.jit.load(str(tmp_path / "model.ts"))
    for shape in ODD[3]:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
        with torch.inference_mode():
            ref = net(x).numpy()
            for name, out in (("ir", ir(x).numpy()), ("torchscript", ts(x).numpy())):
                assert out.shape == ref.shape and np.abs(out - ref).max() < TOLERANCE, (name, shape)


def test_channels_last_instance_norm_exports_as_one_op(tmp_path):
    """The channels-last instance norm (per-sample batch norms in eager) is one InstanceNormalization per
    layer in the graph, even when traced on a channels-last input."""
    import onnx

    net = tiny_network("unet3d").to(memory_format=torch.channels_last_3d)
    example = convert.example_input(2, [16, 16, 16], 3).contiguous(memory_format=torch.channels_last_3d)
    convert.to_onnx(net, tmp_path / "model.onnx", example, opset=17)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node]
    norms = sum(isinstance(m, torch.nn.InstanceNorm3d) for m in net.modules())
    assert ops.count("InstanceNormalization") == norms and "BatchNormalization" not in ops
