"""preprocess_case and its inverse (medseg.inference.invert): exact without resampling, Dice >= 0.99 with it."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.inference.invert import invert_to_original
from medseg.preprocess import preprocess_case
from medseg.preprocess.plan import ChannelNormalization, ConfigurationPlan, Plan
from medseg.volume import Volume

HIPPO_CASES = ["hippocampus_001", "hippocampus_017", "hippocampus_204"]


def make_plan(target_spacing, channels=1, order=3) -> Plan:
    cfg = ConfigurationPlan(
        spatial_dims=3, patch_size=[16, 16, 16], batch_size=2, features_per_stage=[8, 16],
        strides=[[1, 1, 1], [2, 2, 2]], kernel_sizes=[[3, 3, 3], [3, 3, 3]],
    )
    return Plan(
        dataset_name="t", channel_names=[f"c{i}" for i in range(channels)], modalities=["MR"] * channels,
        labels={0: "bg", 1: "a", 2: "b"}, target_spacing=list(target_spacing),
        normalization=[ChannelNormalization(scheme="zscore")] * channels,
        resampling={"image_order": order}, configurations={"3d": cfg},
    )


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def oblique_flipped_affine(spacing) -> np.ndarray:
    """An oblique grid whose i and k axes point against RAS (flipped) with the given spacing."""
    t = 0.35
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])
    flips = np.diag([-1.0, 1.0, -1.0])
    affine = np.eye(4)
    affine[:3, :3] = rot @ tilt @ flips @ np.diag(spacing)
    affine[:3, 3] = [30.0, -12.0, 55.0]
    return affine


def synthetic_case(spacing, shape=(48, 40, 14)):
    """Two ellipsoids (labels 1, 2) in mm, image = label-dependent intensity + padding of zeros."""
    idx = np.indices(shape).astype(float)
    mm = [idx[a] * spacing[a] for a in range(3)]
    centre = [s * sp / 2 for s, sp in zip(shape, spacing)]
    r1 = ((mm[0] - centre[0] + 8) / 9) ** 2 + ((mm[1] - centre[1]) / 7) ** 2 + ((mm[2] - centre[2]) / 14) ** 2
    r2 = ((mm[0] - centre[0] - 9) / 6) ** 2 + ((mm[1] - centre[1]) / 8) ** 2 + ((mm[2] - centre[2]) / 12) ** 2
    label = np.zeros(shape, np.uint8)
    label[r1 <= 1] = 1
    label[r2 <= 1] = 2
    rng = np.random.default_rng(0)
    image = (100 + 50 * label + rng.normal(0, 5, shape)).astype(np.float32)
    image[:3] = 0  # a zero border that cropping removes
    affine = oblique_flipped_affine(spacing)
    return Volume(image, affine), Volume(label, affine)


def test_synthetic_without_resampling_inverts_exactly():
    image, label = synthetic_case((0.9, 1.1, 4.0))
    case = preprocess_case([image], make_plan((0.9, 1.1, 4.0)), label)
    assert case.image.shape == (1, 45, 40, 14)  # cropped, RAS order
    assert case.properties.crop_box != [[0, 48], [0, 40], [0, 14]]
    back = invert_to_original(case.label, case.properties)
    assert back.spatial_shape == label.spatial_shape
    np.testing.assert_array_equal(back.affine, label.affine)
    np.testing.assert_array_equal(back.array, label.array)


def test_synthetic_oblique_anisotropic_flipped_resampled_dice():
    image, label = synthetic_case((0.9, 1.1, 4.0))
    plan = make_plan((0.7, 0.7, 2.0))
    case = preprocess_case([image], plan, label)
    assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
    assert case.label.shape == tuple(case.properties.resampled_shape)
    assert set(np.unique(case.label)) == {0, 1, 2}  # no new label values
    back = invert_to_original(case.label, case.properties)
    np.testing.assert_array_equal(back.affine, label.affine)
    for k in (1, 2):
        assert dice(back.array == k, label.array == k) >= 0.99
    # probabilities take the same path: (K, ...) float -> (K, *original) with background 1 outside the crop
    probs = np.stack([(case.label == k).astype(np.float32) for k in range(3)])
    back_p = invert_to_original(probs, case.properties)
    assert back_p.array.shape == (3, *label.spatial_shape)
    np.testing.assert_array_equal(back_p.array.argmax(0), back.array)
    assert np.all(back_p.array[0][:3] == 1) and np.all(back_p.array[1:, :3] == 0)


@pytest.mark.parametrize("case_id", HIPPO_CASES)
def test_hippocampus_inverse(shared_data, case_id):
    from medseg.io import read_volume

    image = read_volume(shared_data / "hippocampus" / "imagesTr" / f"{case_id}.nii.gz")
    label = read_volume(shared_data / "hippocampus" / "labelsTr" / f"{case_id}.nii.gz")
    # native 1 mm grid: no resampling, exact
    case = preprocess_case([image], make_plan(image.spacing), label)
    back = invert_to_original(case.label, case.properties)
    np.testing.assert_array_equal(back.array, label.array)
    np.testing.assert_array_equal(back.affine, label.affine)
    # the same voxels read as an anisotropic scan (3.5 mm slices), resampled to 0.8 x 0.8 x 1.75 mm
    aniso_affine = label.affine @ np.diag([1.0, 1.0, 3.5, 1.0])
    image_a, label_a = Volume(image.array, aniso_affine), Volume(label.array, aniso_affine)
    case = preprocess_case([image_a], make_plan((0.8, 0.8, 1.75)), label_a)
    assert case.image.shape[1:] != image.spatial_shape
    back = invert_to_original(case.label, case.properties)
    np.testing.assert_array_equal(back.affine, aniso_affine)
    for k in (1, 2):
        assert dice(back.array == k, label.array == k) >= 0.99


def test_normalisation_zscore_and_multichannel():
    image, label = synthetic_case((1.0, 1.0, 1.0), shape=(20, 18, 16))
    second = Volume(image.array * 3 + 7, image.affine)
    case = preprocess_case([image, second], make_plan((1.0, 1.0, 1.0), channels=2), label)
    assert case.image.shape[0] == 2
    for c in range(2):
        assert abs(case.image[c].mean()) < 1e-4 and abs(case.image[c].std() - 1) < 1e-4


@pytest.mark.parametrize("values", [(0, 1, 2, 4), (0, 7, 1000, 65535)])
def test_label_values_become_channels_in_the_cache_and_come_back_as_values(values):
    image, label = synthetic_case((0.9, 1.1, 4.0))
    dtype = np.uint8 if max(values) < 256 else np.uint16
    raw = np.array(values, dtype=dtype)[label.array]  # ellipsoid 1 -> values[1], 2 -> values[2]
    raw[raw.shape[0] // 2, 5:8, 3:5] = values[3]  # a small box of the last value
    raw[-1, -1, -1] = 255 if dtype == np.uint8 else raw[-1, -1, -1]  # one unannotated voxel (uint8 maps)
    label = Volume(raw, label.affine)
    plan = make_plan((0.9, 1.1, 4.0))
    plan = plan.model_copy(update={"labels": {v: f"l{v}" for v in values}})
    case = preprocess_case([image], plan, label)
    expected = {0, 1, 2, 3} | ({255} if dtype == np.uint8 else set())
    assert case.label.dtype == np.uint8 and set(np.unique(case.label).tolist()) == expected  # channels, ignore kept
    assert case.properties.label_values == list(values)
    assert set(case.properties.classes_present) == set(np.unique(raw).tolist())
    back = invert_to_original(case.label, case.properties)
    assert back.array.dtype == dtype
    np.testing.assert_array_equal(back.array, raw)  # exactly the original values on the original grid
    np.testing.assert_array_equal(back.affine, label.affine)


def test_a_value_the_plan_lacks_is_refused_by_name():
    from medseg.errors import InputError

    image, label = synthetic_case((1.0, 1.0, 1.0), shape=(20, 18, 16))
    raw = label.array.copy()
    raw[5, 5, 5] = 7
    with pytest.raises(InputError, match=r"label values \[7\].*\[0, 1, 2\]"):
        preprocess_case([image], make_plan((1.0, 1.0, 1.0)), Volume(raw, label.affine))
