"""Border/core: touching objects of one class are told apart by a border label, and the decode
(seeded growth from the cores) gives back the objects the targets were made from."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.inference.segmentation import Segmentation
from medseg.instances import border_core_targets, merge_borders, split_by_border_core
from medseg.metrics.instances import instance_scores, instances_from_labels
from medseg.volume import Volume

BORDER_OF = {2: 1}  # label 2 is the border of label 1


def touching_objects() -> tuple[np.ndarray, dict[int, int]]:
    ids = np.zeros((30, 20, 20), np.int32)
    ids[3:11, 4:12, 4:12] = 1
    ids[11:19, 4:12, 4:12] = 2    # face to face with object 1
    yy = np.stack(np.meshgrid(*[np.arange(s) for s in ids.shape], indexing="ij"), -1)
    ids[np.linalg.norm(yy - [24, 14, 14], axis=-1) < 3.5] = 3
    return ids, {1: 1, 2: 1, 3: 1}


def test_targets_put_a_border_where_objects_touch():
    ids, classes = touching_objects()
    labels = border_core_targets(ids, classes, BORDER_OF)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert labels[10, 8, 8] == 2 and labels[11, 8, 8] == 2, "both sides of the contact are border"
    assert labels[6, 8, 8] == 1 and labels[3, 8, 8] == 2
    assert np.array_equal(labels > 0, ids > 0)


def test_decode_recovers_touching_objects_that_connected_components_merge():
    ids, classes = touching_objects()
    labels = border_core_targets(ids, classes, BORDER_OF)
    merged, found, found_classes = split_by_border_core(labels, BORDER_OF)
    assert set(np.unique(merged)) == {0, 1}
    assert sorted(found_classes.values()) == [1, 1, 1]
    assert instance_scores(found, ids, (1, 1, 1)).pq == pytest.approx(1.0)
    baseline, _ = instances_from_labels((ids > 0).astype(np.uint8), [1])
    assert instance_scores(baseline, ids, (1, 1, 1)).pq < 0.7, "connected components merge the touching pair"


def test_a_border_region_without_a_core_is_its_own_object():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1:3, 1:3, 1:3] = 2
    labels[5:9, 5:9, 5:9] = 2
    labels[6:8, 6:8, 6:8] = 1
    _, ids, classes = split_by_border_core(labels, BORDER_OF)
    assert len(classes) == 2 and ids[1, 1, 1] != ids[5, 5, 5] and ids[1, 1, 1] > 0


def test_merge_borders_sums_probabilities_and_keeps_the_objects():
    ids, classes = touching_objects()
    labels = border_core_targets(ids, classes, BORDER_OF)
    probs = np.stack([labels == v for v in (0, 1, 2)]).astype(np.float32) * 0.9 + 0.05
    affine = np.diag([0.8, 0.8, 1.5, 1.0])
    seg = Segmentation(Volume(labels, affine), Volume(probs, affine), {0: "background", 1: "lesion", 2: "lesion border"},
                       {1: {"type": "x"}, 2: {"type": "y"}}, things=[1])
    out = merge_borders(seg, BORDER_OF, [0, 1, 2])
    assert out.label_names == {0: "background", 1: "lesion"} and list(out.label_codes) == [1]
    assert out.probabilities.array.shape == (2, *labels.shape)
    np.testing.assert_allclose(out.probabilities.array[1], probs[1] + probs[2])
    assert set(np.unique(out.labels.array)) == {0, 1} and len(out.instance_classes) == 3
    assert out.instance_ids.same_geometry(out.labels)
