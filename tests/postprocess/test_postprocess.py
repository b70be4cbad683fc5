"""Post-processing steps with answers checkable by hand."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import ConfigError
from medseg.postprocess import STEPS, apply_steps
from medseg.volume import Volume


def vol(array, spacing=(1.0, 1.0, 1.0)):
    return Volume(np.asarray(array, dtype=np.uint8), np.diag([*spacing, 1.0]))


def line(values):
    return vol(np.array(values).reshape(-1, 1, 1))


def test_keep_largest_of_1_0_1_1_0_1_leaves_two_voxels():
    out = apply_steps(line([1, 0, 1, 1, 0, 1]), [{"name": "keep_largest_component", "params": {}}])
    assert out.array.ravel().tolist() == [0, 0, 1, 1, 0, 0]


def test_keep_largest_is_per_class_and_respects_class_filter():
    labels = line([1, 0, 1, 1, 0, 2, 0, 2, 2, 2])
    out = apply_steps(labels, [{"name": "keep_largest_component", "params": {}}])
    assert out.array.ravel().tolist() == [0, 0, 1, 1, 0, 0, 0, 2, 2, 2]
    only2 = apply_steps(labels, [{"name": "keep_largest_component", "params": {"classes": [2]}}])
    assert only2.array.ravel().tolist() == [1, 0, 1, 1, 0, 0, 0, 2, 2, 2]


def test_connectivity_decides_whether_diagonal_voxels_touch():
    a = np.zeros((3, 3, 1), np.uint8)
    a[0, 0, 0] = a[1, 1, 0] = a[2, 2, 0] = 1
    a[2, 0, 0] = 1
    # faces only: four single voxels, the first (lowest label) is kept
    faces = apply_steps(vol(a), [{"name": "keep_largest_component", "params": {"connectivity": 1}}])
    assert faces.array.sum() == 1
    corners = apply_steps(vol(a), [{"name": "keep_largest_component", "params": {"connectivity": 3}}])
    assert corners.array.sum() == 4


def test_remove_small_components_in_voxels_and_mm3():
    labels = line([1, 0, 1, 1, 0, 1, 1, 1])
    out = apply_steps(labels, [{"name": "remove_small_components", "params": {"min_voxels": 2}}])
    assert out.array.ravel().tolist() == [0, 0, 1, 1, 0, 1, 1, 1]
    # voxels of 2 mm^3: the 2-voxel component is 4 mm^3 < 5, the 3-voxel one 6 mm^3 stays
    big = Volume(labels.array, np.diag([2.0, 1.0, 1.0, 1.0]))
    out = apply_steps(big, [{"name": "remove_small_components", "params": {"min_mm3": 5}}])
    assert out.array.ravel().tolist() == [0, 0, 0, 0, 0, 1, 1, 1]


def test_fill_holes_fills_enclosed_cavity_only():
    a = np.zeros((5, 5, 5), np.uint8)
    a[1:4, 1:4, 1:4] = 1
    a[2, 2, 2] = 0  # enclosed: filled
    a[0, 0, 0] = 0
    out = apply_steps(vol(a), [{"name": "fill_holes", "params": {}}])
    assert out.array[2, 2, 2] == 1 and out.array.sum() == 27
    a[2, 2, 2] = 2  # another class inside is not overwritten
    out = apply_steps(vol(a), [{"name": "fill_holes", "params": {}}])
    assert out.array[2, 2, 2] == 2


def test_instances_numbers_components():
    out = apply_steps(line([1, 0, 2, 2, 0, 1]), [{"name": "instances", "params": {}}])
    assert out.array.dtype == np.uint16
    assert out.array.ravel().tolist() == [1, 0, 2, 2, 0, 3]


def test_steps_run_in_order_and_keep_geometry():
    labels = Volume(np.array([1, 0, 1, 1, 0, 1], np.uint8).reshape(-1, 1, 1), np.diag([0.5, 2.0, 3.0, 1.0]))
    steps = [{"name": "remove_small_components", "params": {"min_voxels": 2}}, {"name": "instances"}]
    out = apply_steps(labels, steps)
    assert out.array.ravel().tolist() == [0, 0, 1, 1, 0, 0]
    assert np.array_equal(out.affine, labels.affine)


def test_unknown_step_suggests_the_close_name():
    with pytest.raises(ConfigError, match="did you mean 'fill_holes'"):
        apply_steps(line([1]), [{"name": "fill_hole", "params": {}}])
    with pytest.raises(ConfigError, match="bad params"):
        apply_steps(line([1]), [{"name": "fill_holes", "params": {"radius": 3}}])
    with pytest.raises(ConfigError, match="exactly one"):
        apply_steps(line([1]), [{"name": "remove_small_components", "params": {}}])
    assert set(STEPS) >= {"keep_largest_component", "remove_small_components", "fill_holes", "instances"}
