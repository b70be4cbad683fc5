"""Bundle round trip and the one-line errors for missing or corrupt bundles."""

from __future__ import annotations

import json

import pytest
import torch

from medseg.bundle import load_bundle, resolve_model_reference, write_bundle
from medseg.errors import BundleError
from medseg.preprocess.plan import ChannelNormalization, ConfigurationPlan, Plan


def tiny_plan() -> Plan:
    return Plan(
        dataset_name="blobs",
        channel_names=["T1"],
        modalities=["MR"],
        labels={0: "background", 1: "blob"},
        target_spacing=[1.0, 1.0, 1.0],
        normalization=[ChannelNormalization(scheme="zscore")],
        configurations={
            "3d": ConfigurationPlan(
                spatial_dims=3, patch_size=[16, 16, 16], batch_size=2, features_per_stage=[4, 8],
                strides=[[1, 1, 1], [2, 2, 2]], kernel_sizes=[[3, 3, 3], [3, 3, 3]],
            )
        },
    )


def write_tiny(path, **overrides):
    kwargs = dict(
        model_name="unet3d", configuration="3d", fold=0, model_options={"deep_supervision": False},
        plan=tiny_plan(), config={"train": {"lr": 0.01}}, labels={0: "background", 1: "blob"},
        label_codes={1: {"category": ["91723000", "SCT", "Anatomical Structure"], "type": ["12738006", "SCT", "Brain"]}},
        postprocessing=[{"name": "keep_largest_component", "params": {}}], precision="bf16",
        state_dict_best={"w": torch.arange(6.0)}, state_dict_last={"w": torch.zeros(6)},
    )
    kwargs.update(overrides)
    return write_bundle(path, **kwargs)


def test_round_trip(tmp_path):
    write_tiny(tmp_path / "b", training_state={"epoch": 3})
    bundle = load_bundle(tmp_path / "b")
    assert bundle.labels == {0: "background", 1: "blob"}
    assert bundle.label_codes[1]["type"][0] == "12738006"
    assert bundle.model_name == "unet3d" and bundle.configuration == "3d" and bundle.meta["fold"] == 0
    assert bundle.postprocessing == [{"name": "keep_largest_component", "params": {}}]
    assert bundle.plan == tiny_plan()
    assert bundle.config == {"train": {"lr": 0.01}}
    assert bundle.configuration_plan.patch_size == [16, 16, 16]
    best = torch.load(tmp_path / "b" / "model_best.pt", weights_only=True)
    assert torch.equal(best["w"], torch.arange(6.0))
    assert torch.load(tmp_path / "b" / "training_state.pt", weights_only=True) == {"epoch": 3}
    assert not [p for p in (tmp_path / "b").iterdir() if ".tmp-" in p.name]
    assert resolve_model_reference(tmp_path / "b") == tmp_path / "b"


def test_missing_bundle_folder(tmp_path):
    with pytest.raises(BundleError, match="no such bundle folder"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="no such bundle folder"):
        resolve_model_reference(str(tmp_path / "nope"))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: (b / "bundle.json").unlink(), "not a medseg bundle"),
        (lambda b: (b / "bundle.json").write_text("{not json"), "not valid JSON"),
        (lambda b: (b / "bundle.json").write_text(json.dumps({"model": "unet3d"})), "missing keys"),
        (lambda b: (b / "plan.json").unlink(), "plan.json is missing"),
        (lambda b: (b / "plan.json").write_text('{"version": 1, "dataset_name": 3}'), "not a valid plan"),
        (lambda b: (b / "model_best.pt").unlink(), "model_best.pt is missing"),
    ],
)
def test_damaged_bundle_gives_one_line(tmp_path, damage, message):
    root = write_tiny(tmp_path / "b")
    damage(root)
    with pytest.raises(BundleError, match=message) as info:
        load_bundle(root)
    assert "\n" not in str(info.value)


def _real_weights():
    from medseg.models import build_model

    network = build_model("unet3d", tiny_plan().configurations["3d"], in_channels=1, num_classes=2,
                          spacing=[1.0, 1.0, 1.0], deep_supervision=False)
    return network.state_dict()


def _edit_meta(root, **changes):
    meta = json.loads((root / "bundle.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (root / "bundle.json").write_text(json.dumps(meta))


def test_bundle_records_the_output_head_and_old_bundles_with_activation_still_load(tmp_path):
    root = write_tiny(tmp_path / "b", state_dict_best=_real_weights())
    meta = json.loads((root / "bundle.json").read_text())
    assert meta["head"] == "semantic_softmax" and "activation" not in meta  # the head's name, from medseg/models/heads.py
    assert load_bundle(root).head == "semantic_softmax"
    _edit_meta(root, head=None, activation="softmax")  # a bundle written before heads were recorded
    old = load_bundle(root)
    assert old.head == "semantic_softmax"
    assert old.build_network().training is False  # it still builds and loads its weights
    _edit_meta(root, activation=None)  # neither key: the only head there was, softmax
    assert load_bundle(root).head == "semantic_softmax"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"head": None, "activation": "sigmoid"}, r"\"activation\" is 'sigmoid'; expected \"softmax\""),
        ({"head": 3}, r"\"head\" is int; expected a str"),
    ],
)
def test_unknown_activation_or_bad_head_gives_one_line(tmp_path, changes, message):
    root = write_tiny(tmp_path / "b")
    _edit_meta(root, **changes)
    with pytest.raises(BundleError, match=message) as info:
        load_bundle(root)
    assert "\n" not in str(info.value)


def test_a_head_the_model_does_not_have_is_refused_before_decoding(tmp_path):
    root = write_tiny(tmp_path / "b", state_dict_best=_real_weights(), head="instances")
    bundle = load_bundle(root)
    with pytest.raises(BundleError, match=r"trained with output head 'instances', but model 'unet3d' here has head 'semantic_softmax'"):
        bundle.build_network()
