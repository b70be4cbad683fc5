"""The model contract: typed options per family, plan fields per family, output heads the predictor obeys.

A test-only family (a per-voxel network that reads no convolution topology) and a test-only head are
registered here, through `MODELS` alone: nothing in medseg's registry code knows them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from medseg.bundle import load_bundle, write_bundle
from medseg.errors import ConfigError
from medseg.models import MODELS, ModelOptions, ModelPlan, ModelSpec, build_model, model_head, register_model, validate_options
from medseg.models.heads import SEMANTIC_SOFTMAX, SemanticSoftmaxHead
from medseg.preprocess.plan import ChannelNormalization, ConfigurationPlan, Plan, ResamplingPlan
from medseg.volume import Volume

TOPOLOGY = {"features_per_stage": [4, 8], "strides": [[1, 1, 1], [2, 2, 2]]}


class PerVoxelOptions(ModelOptions):
    gain: float = 1.0


class PerVoxelNet(nn.Module):
    """(B, C, *S) -> (B, K, *S): logit 0 is 0, logit k >= 1 is gain * (sum of the channels); no topology."""

    def __init__(self, plan: ModelPlan, options: PerVoxelOptions):
        super().__init__()
        self.seen = plan
        self.mix = nn.Conv3d(plan.in_channels, plan.out_channels, kernel_size=1, bias=False)
        with torch.no_grad():
            self.mix.weight.fill_(options.gain)
            self.mix.weight[0] = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x)


class ConfidentForegroundHead(SemanticSoftmaxHead):
    """Softmax, but a voxel is foreground only when its foreground probability exceeds 0.9."""

    name = "confident_foreground"
    calls: list[str] = []

    def stitch(self, run_windows):
        self.calls.append("stitch")
        return super().stitch(run_windows)

    def decode(self, activated: torch.Tensor) -> torch.Tensor:
        self.calls.append("decode")
        return (activated[1] > 0.9).to(torch.uint8)


def per_voxel_spec(head=SEMANTIC_SOFTMAX) -> ModelSpec:
    return ModelSpec(builder=PerVoxelNet, options=PerVoxelOptions, spatial_dims=3, needs=("patch_size", "spacing"), head=head)


def plan_3d() -> Plan:
    return Plan(
        dataset_name="ramp", channel_names=["image"], modalities=["MR"], labels={0: "background", 1: "bright"},
        target_spacing=[2.0, 2.0, 2.0], resampling=ResamplingPlan(image_order=1),
        normalization=[ChannelNormalization(scheme="zscore")],
        configurations={"3d": ConfigurationPlan(spatial_dims=3, patch_size=[16, 16, 8], batch_size=2, features_per_stage=[4, 8],
                                                strides=[[1, 1, 1], [2, 2, 2]], kernel_sizes=[[3, 3, 3], [3, 3, 3]])},
    )


# --- options: one typed model per family, refused in one line naming the field ---------------------

def test_options_are_validated_by_each_family_own_model():
    assert validate_options("unet3d", {"upsample": "interp"}).upsample == "interp"
    assert validate_options("deeplabv3plus3d", {"output_stride": 8}).output_stride == 8
    # output_stride is DeepLab's, not the U-Net's: refused for the U-Net, naming it and what it accepts
    with pytest.raises(ConfigError) as info:
        build_model("unet3d", TOPOLOGY, in_channels=1, num_classes=2, output_stride=8)
    msg = str(info.value)
    assert "\n" not in msg and "'unet3d'" in msg and "output_stride" in msg and "upsample" in msg
    with pytest.raises(ConfigError) as info:
        build_model("deeplabv3plus3d", TOPOLOGY, in_channels=1, num_classes=2, output_stride=12)
    msg = str(info.value)
    assert "\n" not in msg and "output_stride=12" in msg and "8 or 16" in msg
    with pytest.raises(ConfigError, match=r"option dropout='high' is invalid"):
        validate_options("unet2d", {"dropout": "high"})
    with pytest.raises(ConfigError, match="deep_supervision is not available for DeepLab"):
        build_model("deeplabv3plus3d", TOPOLOGY, in_channels=1, num_classes=2, deep_supervision=True)


def test_convolution_families_need_their_topology_and_the_right_dimension():
    with pytest.raises(ConfigError, match=r"'unet3d' needs features_per_stage, strides from the plan"):
        build_model("unet3d", {"patch_size": [16, 16, 16]}, in_channels=1, num_classes=2)
    two_d = ConfigurationPlan(spatial_dims=2, patch_size=[32, 32], batch_size=2, features_per_stage=[4, 8],
                              strides=[[1, 1], [2, 2]], kernel_sizes=[[3, 3], [3, 3]])
    with pytest.raises(ConfigError, match=r"'unet3d' is 3D but the plan configuration is 2D"):
        build_model("unet3d", two_d, in_channels=1, num_classes=2)
    net = build_model("unet2d", two_d, in_channels=1, num_classes=4)
    assert net(torch.zeros(1, 1, 20, 12)).shape == (1, 4, 20, 12)
    assert model_head("unet2d") is SEMANTIC_SOFTMAX and model_head("deeplabv3plus3d").out_channels(4) == 4


# --- a family without topology fields ---------------------------------------------------------------

def test_a_family_without_topology_builds_from_a_plan_configuration(monkeypatch):
    monkeypatch.setitem(MODELS, "pervoxel3d", per_voxel_spec())
    plan = plan_3d()
    net = build_model("pervoxel3d", plan.configurations["3d"], in_channels=1, num_classes=2, spacing=plan.target_spacing, gain=3.0)
    # the builder got what its family declared and nothing else
    assert net.seen.patch_size == (16, 16, 8) and net.seen.spacing == (2.0, 2.0, 2.0)
    assert net.seen.features_per_stage is None and net.seen.strides is None and net.seen.kernel_sizes is None
    x = torch.randn(1, 1, 5, 7, 3)
    torch.testing.assert_close(net(x)[:, 1], 3.0 * x[:, 0])
    with pytest.raises(ConfigError, match=r"'pervoxel3d' got unknown option\(s\) upsample; it accepts: gain"):
        build_model("pervoxel3d", plan.configurations["3d"], in_channels=1, num_classes=2, spacing=[2, 2, 2], upsample="interp")
    with pytest.raises(ConfigError, match=r"'pervoxel3d' needs spacing from the plan"):
        build_model("pervoxel3d", plan.configurations["3d"], in_channels=1, num_classes=2)


def test_register_model_adds_a_family_and_refuses_to_shadow_one(monkeypatch):
    monkeypatch.setattr("medseg.models.MODELS", dict(MODELS))  # the registry as it was, after the test
    import medseg.models

    register_model("pervoxel3d", per_voxel_spec())
    assert "pervoxel3d" in medseg.models.MODELS and medseg.models.spatial_dims_of("pervoxel3d") == 3
    with pytest.raises(ConfigError, match="'unet3d' is already registered"):
        register_model("unet3d", per_voxel_spec())
    assert medseg.models.MODELS["unet3d"].builder == "medseg.models.unet:build_unet"


# --- the predictor asks the head -------------------------------------------------------------------

def _ramp_case():
    """An image on the plan's own 2 mm RAS grid (no resampling) whose z-scores span about -1.7..1.7 x 2."""
    x = np.linspace(-1.0, 1.0, 24)[:, None, None] * np.ones((24, 20, 10))
    image = (100 + 60 * x + 20 * np.linspace(-1, 1, 10)[None, None, :]).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    return Volume(image, affine)


def _bundle(tmp_path, name: str):
    plan = plan_3d()
    net = build_model(name, plan.configurations["3d"], in_channels=1, num_classes=2, spacing=plan.target_spacing, gain=2.0)
    state = net.state_dict()
    return write_bundle(tmp_path / name, model_name=name, configuration="3d", fold=0, model_options={"gain": 2.0}, plan=plan,
                        config={}, labels=plan.labels, postprocessing=[], precision="fp32", state_dict_best=state,
                        state_dict_last=state)


@pytest.mark.parametrize("probabilities", [False, True])
def test_the_predictor_stitches_and_decodes_as_the_models_head_says(tmp_path, monkeypatch, probabilities):
    from medseg.inference.predictor import Predictor
    from medseg.preprocess.case import preprocess_case

    head = ConfidentForegroundHead()
    head.calls.clear()
    monkeypatch.setitem(MODELS, "pervoxel3d", per_voxel_spec())
    monkeypatch.setitem(MODELS, "confident3d", per_voxel_spec(head))
    image = _ramp_case()
    plain = Predictor([_bundle(tmp_path, "pervoxel3d")], device="cpu", precision="fp32").predict([image], probabilities)
    confident_predictor = Predictor([_bundle(tmp_path, "confident3d")], device="cpu", precision="fp32")
    assert confident_predictor.head is head and load_bundle(tmp_path / "confident3d").model_name == "confident3d"
    confident = confident_predictor.predict([image], probabilities)
    assert head.calls[0] == "stitch" and "decode" in head.calls

    # on this grid the preprocessed image is the original one: logit 1 = 2 z, p(fg) = sigmoid(2 z)
    case = preprocess_case([image], plan_3d())
    z = case.image[0]
    assert z.shape == image.array.shape
    clear = np.abs(2 * z) > 1e-3  # voxels not on a decision boundary (float noise of the window sum)
    np.testing.assert_array_equal((plain.labels.array == 1)[clear], (z > 0)[clear])
    clear_confident = np.abs(2 * z - math.log(9)) > 1e-3
    np.testing.assert_array_equal((confident.labels.array == 1)[clear_confident], (2 * z > math.log(9))[clear_confident])
    # the head changed the decoding, not the network: fewer but nested foreground voxels
    assert 0 < (confident.labels.array == 1).sum() < (plain.labels.array == 1).sum()
    assert not np.any((confident.labels.array == 1) & (plain.labels.array == 0))
