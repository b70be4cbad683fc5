"""Plan sanity: patch sizes fit the strides, CT clip values come from the fingerprint, overrides."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import ConfigError
from medseg.preprocess.plan import Plan
from medseg.preprocess.planner import make_plan, target_spacing_from


def fingerprint(spacing, shape, modality="MR", n=5):
    return {
        "dataset_name": "t",
        "channel_names": ["c0"],
        "modalities": [modality],
        "labels": {"0": "background", "1": "organ"},
        "intensity": [{"mean": 40.0, "std": 60.0, "percentile_00_5": -950.0, "percentile_99_5": 1200.0}],
        "cases": [
            {"spacing": list(spacing), "shape": [s + 4 for s in shape], "shape_after_crop": list(shape)} for _ in range(n)
        ],
    }


@pytest.mark.parametrize(
    "spacing, shape",
    [((1.0, 1.0, 1.0), (36, 50, 35)), ((0.8, 0.8, 5.0), (300, 280, 30)), ((0.7, 0.7, 0.7), (512, 512, 400)), ((2.0, 1.0, 1.0), (10, 9, 130))],
)
def test_patch_divisible_by_total_stride_and_within_median(spacing, shape):
    plan = make_plan(fingerprint(spacing, shape))
    for name, cfg in plan.configurations.items():
        assert len(cfg.patch_size) == cfg.spatial_dims == len(cfg.strides[0])
        assert cfg.strides[0] == [1] * cfg.spatial_dims
        assert all(p % t == 0 for p, t in zip(cfg.patch_size, cfg.total_stride)), (name, cfg)
        assert len(cfg.features_per_stage) == len(cfg.strides) == len(cfg.kernel_sizes)
        assert max(cfg.features_per_stage) <= (320 if cfg.spatial_dims == 3 else 512)
        assert cfg.batch_size >= 2
    cfg3 = plan.configurations["3d"]
    resampled = np.array(shape) * np.array(spacing) / np.array(plan.target_spacing)
    for p, m, t in zip(cfg3.patch_size, resampled, cfg3.total_stride):
        assert p <= int(np.ceil(m / t) * t)


def test_hippocampus_like_plan_matches_nnunet_patch():
    plan = make_plan(fingerprint((1.0, 1.0, 1.0), (36, 50, 35), n=208))
    assert plan.configurations["3d"].patch_size == [40, 56, 40]  # nnU-Net v2 plans 40x56x40 too
    assert plan.configurations["2d"].slice_axis == 2


def test_anisotropic_target_spacing_and_slice_axis():
    spacings = np.array([[0.8, 0.8, z] for z in (2.5, 4.0, 5.0, 5.0, 5.0, 6.0)])
    shapes = np.array([[300, 300, 30]] * 6)
    target = target_spacing_from(spacings, shapes, 3.0)
    assert target[:2] == [0.8, 0.8] and target[2] == pytest.approx(np.percentile(spacings[:, 2], 10))
    plan = make_plan(fingerprint((0.8, 0.8, 5.0), (300, 280, 30)))
    assert plan.configurations["2d"].slice_axis == 2
    assert plan.configurations["3d"].strides[1][2] == 1  # the coarse axis is not pooled at first


def test_ct_normalisation_clips_to_foreground_percentiles():
    plan = make_plan(fingerprint((1.0, 1.0, 1.0), (64, 64, 64), modality="CT"))
    norm = plan.normalization[0]
    assert (norm.scheme, norm.clip_low, norm.clip_high, norm.mean, norm.std) == ("ct", -950.0, 1200.0, 40.0, 60.0)
    from medseg.preprocess.normalize import normalize

    out = normalize(np.array([[[[-3000.0, 40.0, 5000.0]]]]), [norm])
    np.testing.assert_allclose(out.ravel(), [(-950 - 40) / 60, 0.0, (1200 - 40) / 60], rtol=1e-6)


def test_overrides_and_round_trip(tmp_path):
    overrides = {"target_spacing": [1.5, 1.5, 1.5], "configurations": {"3d": {"patch_size": [32, 32, 32], "batch_size": 3}}}
    plan = make_plan(fingerprint((1.0, 1.0, 1.0), (64, 64, 64)), overrides=overrides)
    assert plan.target_spacing == [1.5, 1.5, 1.5]
    assert plan.configurations["3d"].patch_size == [32, 32, 32] and plan.configurations["3d"].batch_size == 3
    plan.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json") == plan
    with pytest.raises(ConfigError, match="not divisible"):
        make_plan(fingerprint((1.0, 1.0, 1.0), (64, 64, 64)), overrides={"configurations": {"3d": {"patch_size": [30, 32, 32]}}})
    with pytest.raises(ConfigError, match="patchsize"):
        make_plan(fingerprint((1.0, 1.0, 1.0), (64, 64, 64)), overrides={"patchsize": [1]})


def _plan_with_labels(labels: dict) -> Plan:
    from medseg.preprocess.plan import ChannelNormalization, ConfigurationPlan

    cfg = ConfigurationPlan(spatial_dims=3, patch_size=[8, 8, 8], batch_size=2, features_per_stage=[4],
                            strides=[[1, 1, 1]], kernel_sizes=[[3, 3, 3]])
    return Plan(dataset_name="t", channel_names=["c"], modalities=["MR"], labels=labels, target_spacing=[1.0, 1.0, 1.0],
                normalization=[ChannelNormalization(scheme="zscore")], configurations={"3d": cfg})


@pytest.mark.parametrize("labels, dtype", [({0: "bg", 1: "a", 2: "b", 4: "d"}, np.uint8),
                                           ({0: "bg", 1000: "x", 7: "y", 65535: "z"}, np.uint16)])
def test_label_values_map_to_sorted_channels_and_back(labels, dtype):
    plan = _plan_with_labels(labels)
    values = sorted(labels)
    assert plan.label_values == values and plan.num_classes == len(values)
    assert plan.class_names == [labels[v] for v in values] and plan.label_dtype is dtype
    rng = np.random.default_rng(0)
    mask = rng.choice(values + [255], size=(6, 5, 4)).astype(np.int32)
    channels = plan.to_channels(mask)
    assert channels.dtype == np.uint8
    expected = np.where(mask == 255, 255, np.searchsorted(values, mask))
    assert np.array_equal(channels, expected)
    back = plan.to_values(channels)
    assert back.dtype == dtype and np.array_equal(back, mask)  # 255 (unannotated) survives both ways
    assert plan.value_lookup[: len(values)].tolist() == values


def test_undeclared_or_bad_label_values_are_refused():
    from medseg.errors import InputError

    plan = _plan_with_labels({0: "bg", 1: "a", 2: "b", 4: "d"})
    mask = np.array([[[0, 1], [3, 7]]], np.uint8)
    with pytest.raises(InputError, match=r"label values \[3, 7\].*\[0, 1, 2, 4\]"):
        plan.to_channels(mask)
    with pytest.raises(InputError, match="non-integer"):
        plan.to_channels(np.array([[[0.5]]]))
    assert plan.undeclared_values([0, 4, 255, 9, -1]) == [-1, 9]
    with pytest.raises(ConfigError, match="lack 0"):
        Plan.from_dict({**plan.model_dump(), "labels": {1: "a", 2: "b"}})
    with pytest.raises(ConfigError, match="outside 0..65535"):
        Plan.from_dict({**plan.model_dump(), "labels": {0: "bg", 70000: "big"}})


def test_old_consecutive_plans_keep_their_digest_and_new_maps_change_it(tmp_path):
    consecutive = _plan_with_labels({0: "bg", 1: "a", 2: "b"})
    data = consecutive.model_dump(include={"version", "channel_names", "labels", "target_spacing", "normalization", "resampling"})
    import hashlib
    import json

    # the digest written before the value -> channel map existed: cached cases stay valid
    assert consecutive.digest() == hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    consecutive.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json") == consecutive  # an old plan.json (same fields) loads as is
    gap = _plan_with_labels({0: "bg", 1: "a", 2: "b", 4: "d"})
    data = gap.model_dump(include={"version", "channel_names", "labels", "target_spacing", "normalization", "resampling"})
    # caches of such plans held raw values before: their digest differs, so preprocess rewrites them
    assert gap.digest() != hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
