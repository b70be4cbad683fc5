"""Streamed label inversion equals argmax of the full probability inversion."""

from __future__ import annotations

import numpy as np

from medseg.inference.invert import labels_on_original
from medseg.preprocess.case import invert_to_original, preprocess_case
from medseg.preprocess.plan import ChannelNormalization, ConfigurationPlan, Plan, ResamplingPlan
from medseg.volume import Volume


def tiny_plan(target_spacing) -> Plan:
    return Plan(
        dataset_name="t", channel_names=["image"], modalities=["MR"], labels={0: "bg", 1: "a", 2: "b"},
        target_spacing=list(target_spacing), resampling=ResamplingPlan(image_order=1),
        normalization=[ChannelNormalization(scheme="zscore")],
        configurations={"3d": ConfigurationPlan(spatial_dims=3, patch_size=[16, 16, 16], batch_size=2,
                                                features_per_stage=[4, 8], strides=[[1, 1, 1], [2, 2, 2]],
                                                kernel_sizes=[[3, 3, 3], [3, 3, 3]])},
    )


def test_streamed_labels_match_argmax_of_inverted_probabilities():
    rng = np.random.default_rng(0)
    shape = (37, 29, 11)
    image = np.zeros(shape, np.float32)
    image[3:33, 2:27, 1:10] = rng.normal(size=(30, 25, 9)) + 2  # a zero border is cropped
    affine = np.diag([-1.3, 1.1, 4.0, 1.0])  # flipped axis: reoriented to RAS and back
    affine[:3, 3] = [5, -7, 11]
    plan: Plan = tiny_plan(target_spacing=(2.0, 2.0, 2.0))
    case = preprocess_case([Volume(image, affine)], plan)
    logits = rng.normal(size=(3, *case.image.shape[1:])).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(0)
    expected = np.argmax(invert_to_original(probs, case.properties).array, axis=0)
    got = labels_on_original(probs, case.properties, slab=4)
    assert got.array.shape == shape and got.array.dtype == np.uint8
    assert np.array_equal(got.affine, affine)
    assert np.array_equal(got.array, expected)
    assert set(np.unique(got.array)) == {0, 1, 2}


def test_streamed_labels_are_written_as_the_plans_label_values():
    rng = np.random.default_rng(1)
    shape = (21, 17, 9)
    image = rng.normal(size=shape).astype(np.float32) + 3
    affine = np.diag([1.2, -0.9, 2.5, 1.0])
    case = preprocess_case([Volume(image, affine)], tiny_plan(target_spacing=(2.0, 2.0, 2.0)))
    for values, dtype in (([0, 1, 2, 4], np.uint8), ([0, 7, 1000, 65535], np.uint16)):
        logits = rng.normal(size=(4, *case.image.shape[1:])).astype(np.float32)
        probs = np.exp(logits) / np.exp(logits).sum(0)
        channels = np.argmax(invert_to_original(probs, case.properties).array, axis=0)
        got = labels_on_original(probs, case.properties, slab=3, label_values=values)
        assert got.array.dtype == dtype and np.array_equal(got.affine, affine)
        assert np.array_equal(got.array, np.array(values)[channels])  # channel k -> k-th value, voxel for voxel
        assert set(np.unique(got.array).tolist()) == set(values)
    # without an explicit map the properties' own label values are used (here the plan's 0, 1, 2)
    probs = np.exp(logits[:3]) / np.exp(logits[:3]).sum(0)
    assert set(np.unique(labels_on_original(probs, case.properties).array).tolist()) == {0, 1, 2}
