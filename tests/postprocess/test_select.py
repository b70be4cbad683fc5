"""Post-processing chosen on validation predictions (nnU-Net's determine_postprocessing)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.postprocess import apply_steps
from medseg.postprocess.select import determine_postprocessing, set_bundle_postprocessing, to_label_values
from medseg.volume import Volume

SHAPE = (24, 24, 12)


def ball(centre, radius):
    grid = np.indices(SHAPE).transpose(1, 2, 3, 0)
    return np.linalg.norm(grid - np.array(centre), axis=-1) < radius


def stray_for_1_split_2():
    """Class 1: one ball, the prediction adds a stray blob (removing it helps).
    Class 2: truly two boxes, both predicted (keeping only the larger hurts)."""
    cases = []
    for shift in range(3):
        ref = np.zeros(SHAPE, np.uint8)
        ref[ball((7 + shift, 7, 6), 4)] = 1
        ref[16:21, 3:8, 3:9] = 2
        ref[16:19, 16:19, 3:9] = 2
        pred = ref.copy()
        pred[ball((6, 18, 6), 1.8)] = 1  # stray false positive of class 1
        cases.append((pred, ref))
    return cases


def test_largest_component_kept_for_the_class_it_helps_and_not_for_the_class_it_hurts():
    cases = stray_for_1_split_2()
    steps, report = determine_postprocessing(lambda: iter(cases), [1, 2])
    # all foreground as one mask keeps one object only: it loses class 2's boxes, so it is not kept
    assert report["all_foreground"]["kept"] is False
    assert report["all_foreground"]["mean_after"] < report["all_foreground"]["mean_before"]
    assert report["per_class"][1]["kept"] and report["per_class"][1]["dice_after"] == pytest.approx(1.0)
    assert report["per_class"][1]["dice_before"] < 1.0
    assert not report["per_class"][2]["kept"] and report["per_class"][2]["dice_after"] < report["per_class"][2]["dice_before"]
    assert steps == [{"name": "keep_largest_component", "params": {"classes": [1]}}]
    # applied as medseg infer does: the stray blob goes, class 2's second box stays
    pred, ref = cases[0]
    out = apply_steps(Volume(pred, np.eye(4)), steps).array
    assert np.array_equal(out, ref)


def test_all_foreground_step_kept_when_it_removes_a_stray_object_of_any_class():
    ref = np.zeros(SHAPE, np.uint8)
    ref[4:12, 4:12, 2:10] = 1
    ref[12:16, 4:12, 2:10] = 2  # touching class 1: one foreground object
    pred = ref.copy()
    pred[20:23, 20:23, 2:5] = 2  # a stray class-2 blob far away
    steps, report = determine_postprocessing(lambda: iter([(pred, ref)]), [1, 2])
    assert report["all_foreground"]["kept"] and report["all_foreground"]["mean_after"] > report["all_foreground"]["mean_before"]
    assert steps[0] == {"name": "keep_largest_component", "params": {"classes": [1, 2], "together": True}}
    out = apply_steps(Volume(pred, np.eye(4)), steps).array
    assert np.array_equal(out, ref)


def test_steps_chosen_on_channels_name_label_values():
    cases = stray_for_1_split_2()
    steps, report = determine_postprocessing(lambda: iter(cases), [1, 2])
    values, named = to_label_values(steps, report, [0, 2, 4])  # channel 1 is label 2, channel 2 is label 4
    assert values == [{"name": "keep_largest_component", "params": {"classes": [2]}}]
    assert set(named["per_class"]) == {"2", "4"} and named["per_class"]["2"]["kept"]
    json.dumps(named)  # storable as is


def test_no_cases_chooses_nothing():
    steps, report = determine_postprocessing(lambda: iter([]), [1, 2])
    assert steps == [] and report["num_cases"] == 0


def test_set_bundle_postprocessing_changes_only_that_field(tmp_path):
    meta = {"medseg_version": "x", "model": "unet3d", "configuration": "3d", "labels": {"0": "bg", "1": "a"}, "postprocessing": []}
    (tmp_path / "bundle.json").write_text(json.dumps(meta))
    steps = [{"name": "keep_largest_component", "params": {"classes": [1]}}]
    set_bundle_postprocessing(tmp_path, steps)
    assert json.loads((tmp_path / "bundle.json").read_text()) == {**meta, "postprocessing": steps}
    assert [p.name for p in tmp_path.iterdir()] == ["bundle.json"]
