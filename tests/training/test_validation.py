"""Training validation goes through the predictor's own network-grid routine (issue 15, item 3):
the model's output head decodes it, and it agrees voxel for voxel with what `medseg infer`'s
Predictor gives on the preprocessed grid for the same weights."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import medseg.models
from medseg.models import ModelOptions, ModelPlan, ModelSpec, build_model, register_model
from medseg.models.heads import SemanticSoftmaxHead
from medseg.precision import resolve_precision
from medseg.preprocess.plan import ChannelNormalization, ConfigurationPlan, Plan
from medseg.training.validation import predict_case, validate


class _Options(ModelOptions):
    pass


class _PerVoxel(nn.Module):
    """logit 0 is 0, logit 1 is the image: foreground probability sigmoid(x)."""

    def __init__(self, plan: ModelPlan, options: _Options):
        super().__init__()
        self.mix = nn.Conv3d(plan.in_channels, plan.out_channels, kernel_size=1, bias=False)
        with torch.no_grad():
            self.mix.weight.fill_(1.0)
            self.mix.weight[0] = 0

    def forward(self, x):
        return self.mix(x)


class _ConfidentHead(SemanticSoftmaxHead):
    """Foreground only where its probability exceeds 0.9 (x > ln 9), not where argmax says (x > 0)."""

    name = "confident_test"

    def decode(self, activated):
        return (activated[1] > 0.9).to(torch.uint8)


def _plan() -> Plan:
    return Plan(
        dataset_name="ramp", channel_names=["image"], modalities=["MR"], labels={0: "background", 1: "bright"},
        target_spacing=[1.0, 1.0, 1.0], normalization=[ChannelNormalization(scheme="zscore")],
        configurations={"3d": ConfigurationPlan(spatial_dims=3, patch_size=[8, 8, 8], batch_size=2, features_per_stage=[4, 8],
                                                strides=[[1, 1, 1], [2, 2, 2]], kernel_sizes=[[3, 3, 3], [3, 3, 3]])},
    )


def test_validation_decodes_with_the_models_output_head(monkeypatch):
    monkeypatch.setattr(medseg.models, "MODELS", dict(medseg.models.MODELS))
    register_model("confident_test3d", ModelSpec(builder=_PerVoxel, options=_Options, spatial_dims=3,
                                                 needs=("patch_size",), head=_ConfidentHead()))
    plan = _plan()
    conf = plan.configurations["3d"]
    net = build_model("confident_test3d", conf, in_channels=1, num_classes=2)
    rng = np.random.default_rng(0)
    image = rng.choice(np.array([-3.0, -1.0, 1.0, 3.0], np.float32), size=(1, 19, 13, 11))  # windows overlap unevenly
    config = SimpleNamespace(model=SimpleNamespace(name="confident_test3d", configuration="3d"), val_overlap=0.5)
    pred = predict_case(net, image, plan, config, resolve_precision("fp32", "cpu"), "cpu")
    assert pred.shape == image.shape[1:]
    np.testing.assert_array_equal(pred, (image[0] == 3.0).astype(np.uint8))  # a bare argmax would also mark the 1.0s


@pytest.mark.slow
def test_validation_agrees_with_the_predictor_on_the_preprocessed_grid(tiny_config, tiny_workdir):
    """A trained fold's best weights: validation's labels and Dice are those of Predictor's output."""
    from medseg.inference.predictor import Predictor
    from medseg.metrics import dice_per_class
    from medseg.postprocess.select import validation_dir
    from medseg.preprocess.cache import load_case
    from medseg.preprocess.plan import Plan as LoadedPlan
    from medseg.training.loop import train

    result = train(tiny_workdir, tiny_config(epochs=1, iterations_per_epoch=4), preset_name="unet3d", fold=0)
    predictor = Predictor([result.bundle_dir], device="cpu", precision="fp32", overlap=0.5, batch_size=2)
    plan = predictor.bundle.plan
    config = tiny_config(epochs=1, iterations_per_epoch=4).resolve_with_plan(LoadedPlan.load(tiny_workdir / "plan.json"))
    network = predictor.networks[0]
    stored = {p.stem: p for p in validation_dir(result.bundle_dir).glob("*.npz")}  # the post-processing selection's
    val_ids = sorted(stored)
    assert val_ids
    per_case = []
    for case_id in val_ids:
        image = load_case(tiny_workdir, case_id).image
        ours = predict_case(network, image, plan, config, predictor.precision, "cpu")
        theirs = predictor.head.decode(predictor.logits_to_probabilities(torch.from_numpy(np.array(image)))).numpy()
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_array_equal(np.load(stored[case_id])["pred"], theirs)
        per_case.append(dice_per_class(theirs, np.asarray(load_case(tiny_workdir, case_id).label), [1, 2]))
    scores = validate(network, tiny_workdir, val_ids, plan, config, predictor.precision, "cpu", predictor.labels)
    for k, name in ((1, "ball"), (2, "box")):
        assert scores[name] == pytest.approx(np.mean([d[k] for d in per_case]))
