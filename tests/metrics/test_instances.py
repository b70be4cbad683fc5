"""Instance metrics: PQ/RQ/SQ against the panoptica package on generated case pairs, and the
BraTS 2023 and autoPET protocols on hand-built cases whose numbers are worked out here."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.metrics.instances import (
    autopet_scores,
    brats2023_lesion_scores,
    instance_scores,
    instances_from_labels,
    match,
)

SHAPE = (40, 40, 24)


def ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    return (((grid - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(-1) <= 1.0


def generated_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A reference instance map and a prediction with shifted, grown, shrunk, missed, false,
    split and merged objects; touching objects in both."""
    rng = np.random.default_rng(seed)
    ref = np.zeros(SHAPE, np.int32)
    pred = np.zeros(SHAPE, np.int32)
    next_pred = 1
    n = int(rng.integers(3, 7))
    for k in range(1, n + 1):
        centre = rng.integers([5, 5, 4], [35, 35, 20])
        radii = rng.uniform(1.5, 5.0, 3)
        obj = ellipsoid(SHAPE, centre, radii)
        ref[obj & (ref == 0)] = k
        kind = rng.choice(["same", "shift", "grow", "shrink", "miss", "split", "merge"])
        if kind == "miss":
            continue
        if kind == "shift":
            obj = np.roll(obj, int(rng.integers(1, 3)), axis=int(rng.integers(0, 3)))
        elif kind == "grow":
            obj = ellipsoid(SHAPE, centre, radii + 1)
        elif kind == "shrink":
            obj = ellipsoid(SHAPE, centre, np.maximum(radii - 1, 0.8))
        if kind == "split":  # two predicted ids for one object, cut along x at its centre
            left = obj.copy()
            left[centre[0]:] = False
            pred[left & (pred == 0)] = next_pred
            pred[obj & ~left & (pred == 0)] = next_pred + 1
            next_pred += 2
        elif kind == "merge" and next_pred > 1:  # joined to the previous predicted object
            pred[obj & (pred == 0)] = next_pred - 1
        else:
            pred[obj & (pred == 0)] = next_pred
            next_pred += 1
    for _ in range(int(rng.integers(0, 3))):  # false objects
        obj = ellipsoid(SHAPE, rng.integers([4, 4, 4], [36, 36, 20]), rng.uniform(1.0, 3.0, 3))
        pred[obj & (pred == 0)] = next_pred
        next_pred += 1
    return pred, ref


@pytest.mark.slow
@pytest.mark.parametrize("method", ["threshold", "hungarian"])
def test_pq_rq_sq_agree_with_panoptica(method):
    from panoptica import (
        InputType,
        MaxBipartiteMatching,
        NaiveThresholdMatching,
        Panoptica_Evaluator,
        disable_citation_reminder,
    )

    disable_citation_reminder()
    matcher = (NaiveThresholdMatching(matching_threshold=0.5, strict_threshold=True) if method == "threshold"
               else MaxBipartiteMatching(matching_threshold=0.5, strict_threshold=True))
    evaluator = Panoptica_Evaluator(expected_input=InputType.UNMATCHED_INSTANCE, instance_matcher=matcher)
    kinds_seen = 0
    for seed in range(24):
        pred, ref = generated_pair(seed)
        ours = instance_scores(pred, ref, (1.0, 1.0, 1.0), method=method)
        theirs = evaluator.evaluate(pred.astype(np.uint16), ref.astype(np.uint16), verbose=False)["ungrouped"]
        assert (ours.tp, ours.fp, ours.fn) == (theirs.tp, theirs.fp, theirs.fn), seed
        for name in ("pq", "rq", "sq"):
            assert getattr(ours, name) == pytest.approx(getattr(theirs, name), abs=1e-6), (seed, name)
        kinds_seen += ours.fp > 0 and ours.fn > 0
    assert kinds_seen >= 5, "the generated pairs must include misses and false objects"


def test_hand_counted_case():
    ref = np.zeros((20, 20, 20), np.int32)
    pred = np.zeros_like(ref)
    ref[2:6, 2:6, 2:6] = 1          # found exactly
    ref[10:14, 10:14, 10:14] = 2    # half found: IoU 2/4 = 0.5, not > 0.5, so a miss
    ref[2:4, 15:17, 15:17] = 3      # missed
    pred[2:6, 2:6, 2:6] = 7
    pred[10:12, 10:14, 10:14] = 9
    pred[16:18, 2:4, 2:4] = 4       # false
    s = instance_scores(pred, ref, (2.0, 2.0, 2.0))
    assert (s.tp, s.fp, s.fn) == (1, 2, 2)
    assert s.rq == pytest.approx(1 / (1 + 1 + 1)) and s.sq == 1.0 and s.pq == pytest.approx(1 / 3)
    assert s.precision == pytest.approx(1 / 3) and s.recall == pytest.approx(1 / 3)
    assert s.lesion_dice == pytest.approx(1 / 5)
    assert s.fn_volume_ml == pytest.approx((64 + 8) * 8 / 1000) and s.fp_volume_ml == pytest.approx((32 + 8) * 8 / 1000)
    empty = instance_scores(np.zeros_like(ref), np.zeros_like(ref), (1.0, 1.0, 1.0))
    assert np.isnan(empty.pq) and empty.tp == 0


def test_threshold_matching_is_one_to_one_and_hungarian_maximises_total_iou():
    iou = np.array([[0.6, 0.55], [0.58, 0.0]])
    assert match(iou, 0.5, "threshold") == [(0, 0)]             # greedy takes 0.6 first
    assert sorted(match(iou, 0.5, "hungarian")) == [(0, 1), (1, 0)]  # 0.55 + 0.58 > 0.6
    assert match(iou, 0.59, "hungarian") == []


def test_instances_from_labels_per_class_and_connectivity():
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[0, 0, 0] = 1
    labels[1, 1, 1] = 1   # touches the first only at a corner
    labels[4:6, 4:6, 4:6] = 2
    ids, classes = instances_from_labels(labels, [1, 2], connectivity=26)
    assert sorted(classes.values()) == [1, 2]
    ids6, classes6 = instances_from_labels(labels, [1, 2], connectivity=6)
    assert sorted(classes6.values()) == [1, 1, 2] and ids6.max() == 3


def cube(shape, start, size) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


BRATS_SHAPE = (40, 40, 40)


def test_brats2023_exact_lesion_and_a_false_positive():
    ref = cube(BRATS_SHAPE, (5, 5, 5), 4)   # 64 mm^3 > 50: scored
    pred = ref | cube(BRATS_SHAPE, (30, 30, 30), 2)
    s = brats2023_lesion_scores(pred, ref, (1, 1, 1))
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 0)
    assert s["lesion_dice"] == pytest.approx((1 + 0) / 2)
    assert s["lesion_hd95"] == pytest.approx((0 + 374) / 2)


def test_brats2023_missed_lesion_and_empty_case():
    ref = cube(BRATS_SHAPE, (5, 5, 5), 4)
    s = brats2023_lesion_scores(np.zeros_like(ref), ref, (1, 1, 1))
    assert (s["tp"], s["fp"], s["fn"], s["lesion_dice"], s["lesion_hd95"]) == (0, 0, 1, 0.0, 374.0)
    e = brats2023_lesion_scores(np.zeros_like(ref), np.zeros_like(ref), (1, 1, 1))
    assert (e["lesion_dice"], e["lesion_hd95"]) == (1.0, 0.0)


def test_brats2023_small_lesions_are_left_out_by_volume_in_mm3():
    big = cube(BRATS_SHAPE, (5, 5, 5), 4)
    small = cube(BRATS_SHAPE, (25, 25, 25), 3)  # 27 voxels
    ref = big | small
    s = brats2023_lesion_scores(big, ref, (1, 1, 1))  # the small one is missed but 27 mm^3 <= 50
    assert (s["tp"], s["fn"], s["lesion_dice"], s["lesion_hd95"]) == (1, 0, 1.0, 0.0)
    s2 = brats2023_lesion_scores(big, ref, (2, 2, 2))  # the same voxels at 2 mm: 216 mm^3 > 50, a miss
    assert (s2["tp"], s2["fn"]) == (1, 1)
    assert s2["lesion_dice"] == pytest.approx(0.5) and s2["lesion_hd95"] == pytest.approx(374 / 2)


def test_brats2023_nearby_reference_lesions_merge_and_nearby_predictions_count_as_hits():
    a = cube(BRATS_SHAPE, (5, 5, 5), 4)
    b = cube(BRATS_SHAPE, (11, 5, 5), 4)   # 2 voxels from a: their dilations (3) join them
    s = brats2023_lesion_scores(a, a | b, (1, 1, 1))
    assert (s["tp"], s["fp"], s["fn"]) == (1, 0, 0)
    assert s["lesion_dice"] == pytest.approx(2 * 64 / (128 + 64))
    ref = cube(BRATS_SHAPE, (5, 5, 5), 4)
    near = cube(BRATS_SHAPE, (11, 5, 5), 4)  # no overlap, but inside the lesion's dilation
    s = brats2023_lesion_scores(near, ref, (1, 1, 1))
    assert (s["tp"], s["fp"], s["fn"], s["lesion_dice"]) == (1, 0, 0, 0.0)
    far = cube(BRATS_SHAPE, (20, 5, 5), 4)
    s = brats2023_lesion_scores(far, ref, (1, 1, 1), dilation=1)
    assert (s["tp"], s["fp"], s["fn"]) == (0, 1, 1)
    assert s["lesion_dice"] == 0.0 and s["lesion_hd95"] == pytest.approx(374.0)


def test_autopet_volumes_use_18_connectivity():
    ref = cube((20, 20, 20), (2, 2, 2), 3) | cube((20, 20, 20), (12, 12, 12), 3)  # the second is missed
    pred = cube((20, 20, 20), (2, 2, 2), 3)
    pred[5, 5, 5] = True           # touches the found lesion only at a corner: its own component in 18-connectivity
    pred[15:17, 2:4, 2:4] = True   # 8 voxels far from any lesion
    s = autopet_scores(pred, ref, (2.0, 2.0, 2.0))
    voxel_ml = 8 / 1000
    assert s["fp_volume_ml"] == pytest.approx((1 + 8) * voxel_ml)
    assert s["fn_volume_ml"] == pytest.approx(27 * voxel_ml)
    assert s["dice"] == pytest.approx(2 * 27 / (pred.sum() + ref.sum()))
    assert np.isnan(autopet_scores(pred, np.zeros_like(ref), (1, 1, 1))["dice"])
