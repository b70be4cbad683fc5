"""The inversion to the original grid: against independent references (scipy on physical coordinates,
an exact round trip, a real oblique series), and its label, probability and channel-map forms agree."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.inference.invert import invert_to_original, labels_on_original
from medseg.preprocess.case import preprocess_case
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


# --- against independent references -------------------------------------------------------------


def _scipy_on_original(probs: np.ndarray, shape, affine: np.ndarray, grid_affine: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The reference inversion, on physical coordinates: each original voxel's centre (`affine`) is
    mapped into the preprocessed grid (`grid_affine`) and the maps are read there by scipy's trilinear
    map_coordinates (edges clamped); outside the crop (`inside` False) background is 1, others 0."""
    idx = np.indices(shape).reshape(3, -1).astype(float)
    world = affine[:3, :3] @ idx + affine[:3, 3:]
    inv = np.linalg.inv(grid_affine)
    coords = inv[:3, :3] @ world + inv[:3, 3:]
    ref = np.stack([ndimage.map_coordinates(p.astype(np.float64), coords, order=1, mode="nearest").reshape(shape) for p in probs])
    ref[:, ~inside] = 0.0
    ref[0, ~inside] = 1.0
    return ref


def _assert_labels_match_reference(labels: np.ndarray, ref: np.ndarray, values) -> None:
    """labels == values[argmax(ref)] wherever the reference's top two differ by more than float noise."""
    top2 = np.sort(ref, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-4
    assert clear.mean() > 0.99  # the comparison covers nearly every voxel
    np.testing.assert_array_equal(labels[clear], np.asarray(values)[np.argmax(ref, axis=0)][clear])


def _random_probs(rng, shape, k=3) -> np.ndarray:
    p = rng.random((k, *shape)).astype(np.float32) + 0.05
    return p / p.sum(0)


def test_inversion_matches_scipy_on_physical_coordinates_for_permuted_flipped_anisotropic_grid():
    # voxel i -> world -S at 3 mm, j -> +R at 0.8 mm, k -> -A at 1.7 mm; the origin far from 0
    affine = np.zeros((4, 4))
    affine[2, 0], affine[0, 1], affine[1, 2] = -3.0, 0.8, -1.7
    affine[:3, 3] = [-40.0, 25.5, 61.0]
    affine[3, 3] = 1.0
    shape = (12, 40, 30)
    inside = np.zeros(shape, bool)
    inside[1:11, 3:37, 2:29] = True  # the nonzero region: cropping keeps exactly these voxels
    rng = np.random.default_rng(5)
    image = np.where(inside, rng.normal(size=shape) + 5, 0).astype(np.float32)
    target = (1.1, 1.3, 2.2)  # mm along R, A, S: non-integer ratios on every axis
    case = preprocess_case([Volume(image, affine)], tiny_plan(target_spacing=target))

    # the preprocessed grid, derived here from the geometry alone: RAS axes with the target spacing
    # (rounded to whole voxels), covering the world extent of the nonzero voxels
    corners = np.array([[i, j, k, 1.0] for i in (1, 10) for j in (3, 36) for k in (2, 28)]) @ affine.T
    lo, hi = corners[:, :3].min(0), corners[:, :3].max(0)
    ras_spacing = np.array([0.8, 1.7, 3.0])
    n_crop = np.round((hi - lo) / ras_spacing).astype(int) + 1
    n_new = np.maximum(1, np.round(n_crop * ras_spacing / np.array(target))).astype(int)
    new_spacing = n_crop * ras_spacing / n_new
    grid = np.eye(4)
    grid[:3, :3] = np.diag(new_spacing)
    grid[:3, 3] = lo - ras_spacing / 2 + new_spacing / 2
    assert tuple(case.image.shape[1:]) == tuple(n_new)
    np.testing.assert_allclose(np.array(case.properties.resampled_affine), grid, atol=1e-9)

    probs = _random_probs(rng, case.image.shape[1:])
    ref = _scipy_on_original(probs, shape, affine, grid, inside)
    back = invert_to_original(probs, case.properties)
    assert back.array.shape == (3, *shape) and back.array.dtype == np.float32
    assert np.array_equal(back.affine, affine)
    np.testing.assert_allclose(back.array, ref, atol=2e-6)
    labels = labels_on_original(probs, case.properties, slab=5, label_values=[0, 4, 300])
    assert labels.array.shape == shape and labels.array.dtype == np.uint16 and np.array_equal(labels.affine, affine)
    _assert_labels_match_reference(labels.array, ref, [0, 4, 300])


def test_inversion_matches_scipy_on_physical_coordinates_for_oblique_grid():
    t = 0.3
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(0.25), -np.sin(0.25)], [0, np.sin(0.25), np.cos(0.25)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ tilt @ np.diag([-1.0, 1.0, -1.0]) @ np.diag([0.9, 1.2, 3.5])
    affine[:3, 3] = [12.0, -80.0, 33.0]
    shape = (30, 26, 9)
    inside = np.zeros(shape, bool)
    inside[2:28, 1:25, 1:8] = True
    rng = np.random.default_rng(6)
    image = np.where(inside, rng.normal(size=shape) + 5, 0).astype(np.float32)
    case = preprocess_case([Volume(image, affine)], tiny_plan(target_spacing=(0.7, 0.75, 1.6)))
    probs = _random_probs(rng, case.image.shape[1:])
    ref = _scipy_on_original(probs, shape, affine, np.array(case.properties.resampled_affine), inside)
    back = invert_to_original(probs, case.properties)
    assert np.array_equal(back.affine, affine)
    np.testing.assert_allclose(back.array, ref, atol=2e-6)
    _assert_labels_match_reference(labels_on_original(probs, case.properties, slab=2).array, ref, [0, 1, 2])


def test_one_hot_of_the_preprocessed_label_inverts_to_the_original_label_exactly_for_integer_spacings():
    # 2 x 1 x 3 mm voxels, permuted and flipped, resampled to 1 mm (nearest for the label): every
    # preprocessed voxel copies one original voxel, so the inversion must give back every voxel
    affine = np.zeros((4, 4))
    affine[1, 0], affine[2, 1], affine[0, 2] = -2.0, 1.0, 3.0
    affine[:3, 3] = [7.5, 100.0, -20.0]
    affine[3, 3] = 1.0
    shape = (9, 14, 6)
    rng = np.random.default_rng(7)
    values = [0, 5, 300]
    raw = np.array(values, np.uint16)[rng.integers(0, 3, size=shape)]  # every voxel its own random label
    image = (rng.normal(size=shape) + 5).astype(np.float32)
    image[0], image[:, -2:] = 0, 0  # a border that cropping removes
    raw[0], raw[:, -2:] = 0, 0
    plan = tiny_plan(target_spacing=(1.0, 1.0, 1.0)).model_copy(
        update={"labels": {v: f"l{v}" for v in values}, "resampling": ResamplingPlan(image_order=1, label_mode="nearest")})
    case = preprocess_case([Volume(image, affine)], plan, Volume(raw, affine))
    assert case.label.shape == (3 * 6, 2 * 8, 1 * 12)  # (R, A, S) from k, i, j, cropped
    one_hot = np.stack([(case.label == c).astype(np.float32) for c in range(3)])
    for inverted in (labels_on_original(one_hot, case.properties, slab=4), invert_to_original(case.label, case.properties)):
        assert inverted.array.dtype == np.uint16 and np.array_equal(inverted.affine, affine)
        np.testing.assert_array_equal(inverted.array, raw)
    probs = invert_to_original(one_hot, case.properties).array
    np.testing.assert_array_equal(probs, np.stack([(raw == v) for v in values]).astype(np.float32))


@pytest.mark.slow
def test_real_oblique_mr_series_inverts_onto_exactly_its_own_grid(real_data):
    from medseg.io import read_volume

    image = read_volume(real_data / "dicom" / "tcia_mr_oblique" / "11-T1post-18670")  # 280x320x22, tilted, 0.69 x 0.69 x 6.5 mm
    assert not np.allclose(np.abs(image.affine[:3, :3]) > 1e-3, np.eye(3, dtype=bool))  # oblique
    smooth = ndimage.uniform_filter(image.array.astype(np.float32), size=(9, 9, 1))
    label = np.digitize(smooth, np.percentile(smooth, [60, 85])).astype(np.uint8)  # two nested bright regions
    case = preprocess_case([image], tiny_plan(target_spacing=(1.0, 1.0, 3.0)), Volume(label, image.affine))
    assert case.image.shape[1:] != image.spatial_shape
    one_hot = np.stack([(case.label == c).astype(np.float32) for c in range(3)])
    back = labels_on_original(one_hot, case.properties)
    assert back.array.shape == image.spatial_shape and np.array_equal(back.affine, image.affine)
    for k in (1, 2):
        a, b = back.array == k, label == k
        assert 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()) > 0.9
    probs = _random_probs(np.random.default_rng(8), case.image.shape[1:])
    nonzero = image.array != 0  # cropping keeps the bounding box of these, in any voxel order
    box = [np.flatnonzero(nonzero.any(axis=tuple(b for b in range(3) if b != a)))[[0, -1]] for a in range(3)]
    inside = np.zeros(image.spatial_shape, bool)
    inside[tuple(slice(lo, hi + 1) for lo, hi in box)] = True
    ref = _scipy_on_original(probs, image.spatial_shape, image.affine, np.array(case.properties.resampled_affine), inside)
    full = invert_to_original(probs, case.properties)
    assert full.array.shape == (3, *image.spatial_shape) and np.array_equal(full.affine, image.affine)
    # torch's bilinear step places its 320 in-plane samples in float32: ~3e-5 voxel, hence 3e-5 here
    np.testing.assert_allclose(full.array, ref, atol=3e-5)
