"""Instance and panoptic outputs: one id per object of each thing class, on the scan's grid, with a
JSON whose volumes, centroids and boxes are those of the voxels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.inference.segmentation import Segmentation
from medseg.instances import PANOPTIC_DIVISOR, instance_map, write_instance_outputs
from medseg.io import read_volume
from medseg.volume import Volume

OBLIQUE = np.array([[0.0, -1.2, 0.3, 10.0], [1.1, 0.0, 0.0, -20.0], [0.0, 0.4, 2.5, 5.0], [0, 0, 0, 1]])


def labels_volume() -> Volume:
    array = np.zeros((20, 16, 12), np.uint8)
    array[2:6, 2:6, 2:6] = 1
    array[6:9, 2:6, 2:6] = 2      # touches the first object but is another class: another object
    array[12:15, 10:14, 6:9] = 1
    array[0:20, 15, 0:12] = 3     # a "stuff" sheet
    return Volume(array, OBLIQUE)


def test_objects_per_class_with_volumes_centroids_boxes_and_probabilities():
    labels = labels_volume()
    probs = np.zeros((4, *labels.spatial_shape), np.float32)
    probs[1] = 0.8
    probs[2] = 0.6
    found = instance_map(labels, things=[1, 2], probabilities=labels.with_array(probs), label_values=[0, 1, 2, 3])
    assert sorted(found.classes.values()) == [1, 1, 2]
    ids = np.asarray(found.ids.array)
    assert found.ids.same_geometry(labels) and ids.dtype == np.uint16
    assert set(np.unique(ids[np.asarray(labels.array) == 3])) == {0}, "stuff gets no instance id"
    voxel_ml = abs(np.linalg.det(OBLIQUE[:3, :3])) / 1000
    for obj in found.objects:
        voxels = np.argwhere(ids == obj["id"])
        assert obj["voxels"] == len(voxels)
        assert obj["volume_ml"] == pytest.approx(len(voxels) * voxel_ml, rel=1e-6)
        np.testing.assert_allclose(obj["centroid_mm"], (OBLIQUE @ np.r_[voxels.mean(0), 1])[:3], atol=1e-3)
        assert obj["bbox_voxels"] == [voxels.min(0).tolist(), voxels.max(0).tolist()]
        assert obj["mean_probability"] == pytest.approx({1: 0.8, 2: 0.6}[obj["class"]])


def test_written_instance_and_panoptic_maps_read_back(tmp_path):
    labels = labels_volume()
    seg = Segmentation(labels, label_names={0: "background", 1: "lesion", 2: "cyst", 3: "wall"}, things=[1, 2])
    inst_path = write_instance_outputs(seg, tmp_path / "case_instances.nii.gz")
    pan_path = write_instance_outputs(seg, tmp_path / "case_panoptic.nii.gz", panoptic=True)
    ids = read_volume(inst_path)
    assert ids.same_geometry(labels)
    body = json.loads((tmp_path / "case_instances.json").read_text())
    assert body["instances"] == {"1": 1, "2": 1, "3": 2}
    assert np.array_equal(np.asarray(ids.array) > 0, np.isin(np.asarray(labels.array), [1, 2]))

    pan = np.asarray(read_volume(pan_path).array).astype(np.int64)
    meta = json.loads((tmp_path / "case_panoptic.json").read_text())
    assert meta["divisor"] == PANOPTIC_DIVISOR and meta["things"] == [1, 2] and meta["stuff"] == [3]
    assert np.array_equal(pan // PANOPTIC_DIVISOR, np.asarray(labels.array))
    assert set(np.unique(pan[np.asarray(labels.array) == 1] % PANOPTIC_DIVISOR)) == {1, 2}
    assert set(np.unique(pan[np.asarray(labels.array) == 3] % PANOPTIC_DIVISOR)) == {0}
    assert {o["panoptic_id"] for o in meta["objects"]} == {1001, 1002, 2001}


@pytest.mark.slow
def test_infer_instances_land_on_the_oblique_source_grid(real_data, tiny_bundle, tmp_path):
    from cli_helpers import run

    folder = real_data / "dicom" / "tcia_mr_oblique" / "11-T1post-18670"
    out = tmp_path / "out"
    assert run("infer", folder, "--model", tiny_bundle, "-o", out, "--format", "nifti,instances,panoptic,dicom-seg-instances",
               "--device", "cpu", "--precision", "fp32") == 0
    case = folder.name
    mask = read_volume(out / f"{case}.nii.gz")
    ids = read_volume(out / f"{case}_instances.nii.gz")
    assert ids.spatial_shape == mask.spatial_shape
    np.testing.assert_allclose(ids.affine, mask.affine, atol=1e-6)
    labels, instances = np.asarray(mask.array), np.asarray(ids.array)
    assert labels.any(), "the blob model found nothing; the checks below would be vacuous"
    assert np.array_equal(instances > 0, labels > 0)
    body = json.loads((out / f"{case}_instances.json").read_text())
    voxel_ml = float(np.prod(mask.spacing)) / 1000
    for obj in body["objects"]:
        assert obj["volume_ml"] == pytest.approx(np.count_nonzero(instances == obj["id"]) * voxel_ml)
        assert 0 <= obj["mean_probability"] <= 1
    assert not list(out.glob("*_probabilities.nii.gz")), "probabilities are written only when asked"

    from medseg.io.dicom import load_dicom_series, read_dicom_seg

    back, names = read_dicom_seg(out / f"{case}_seg_instances.dcm", load_dicom_series(folder).datasets)
    assert len(names) == len(body["objects"]) and all(name.startswith("blob ") for name in names.values())
    assert np.array_equal(np.asarray(back) > 0, instances > 0)
    assert len(np.unique(np.asarray(back))) == len(body["objects"]) + 1, "one segment per object"
