"""Instance and panoptic outputs from a semantic segmentation: one id per object of each "thing"
class (connected components), an object table, and a panoptic map.

Written by `medseg.write(segmentation, path, format="instances" | "panoptic")`:
- instances: `<stem>.nii.gz` uint16 ids (0 background) on the scan's grid, and `<stem>.json`
  {"instances": {id: label value}, "objects": [...]} (the "instances" key is nnDetection's format,
  so `medseg evaluate --instances` reads it back);
- panoptic: `<stem>.nii.gz` int32 = label value * PANOPTIC_DIVISOR + instance number (1.. within
  its class) for things, label value * PANOPTIC_DIVISOR for stuff, 0 background (Cityscapes'
  encoding), and the same JSON with "divisor", "things" and "stuff".
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import OutputError
from medseg.volume import Volume

PANOPTIC_DIVISOR = 1000


@dataclass
class InstanceMap:
    """ids: (X, Y, Z) uint16 Volume on the scan's grid; classes: {id: label value}; objects: one dict per id."""

    ids: Volume
    classes: dict[int, int]
    objects: list[dict]


def thing_values(labels: Volume, things: list[int] | None) -> list[int]:
    """The thing label values: the declared ones, else every foreground value present."""
    if things is not None:
        return list(things)
    return [int(v) for v in np.unique(np.asarray(labels.array)) if v != 0]


def instance_map(labels: Volume, things: list[int] | None = None, probabilities: Volume | None = None,
                 label_values: list[int] | None = None, connectivity: int = 26) -> InstanceMap:
    """Objects of the thing classes of a label map (X, Y, Z), by connected components per class.

    Each object: id, class (label value), voxels, volume_ml, centroid_mm (RAS, through the affine),
    bbox_voxels ([[i0, j0, k0], [i1, j1, k1]], inclusive), and mean_probability (the mean over its
    voxels of its class's probability, when `probabilities` (K, X, Y, Z) with `label_values` given).
    """
    from scipy import ndimage

    from medseg.metrics.instances import instances_from_labels

    array = np.asarray(labels.array)
    ids, classes = instances_from_labels(array, thing_values(labels, things), connectivity)
    if len(classes) > np.iinfo(np.uint16).max:
        raise OutputError(f"{len(classes)} objects do not fit a uint16 instance map; remove small components first")
    voxel_ml = abs(float(np.linalg.det(labels.affine[:3, :3]))) / 1000.0  # = prod(spacing) for orthogonal axes
    n = len(classes)
    objects: list[dict] = []
    if n:
        index = np.arange(1, n + 1)
        counts = np.bincount(ids.ravel(), minlength=n + 1)[1:]
        centres = ndimage.center_of_mass(np.ones(ids.shape, np.uint8), ids, index)
        boxes = ndimage.find_objects(ids, max_label=n)
        channel = {v: k for k, v in enumerate(label_values or [])}
        for i, centre, box, count in zip(index, centres, boxes, counts):
            value = classes[int(i)]
            ras = labels.affine @ np.array([*centre, 1.0])
            obj = {"id": int(i), "class": int(value), "voxels": int(count), "volume_ml": float(count) * voxel_ml,
                   "centroid_mm": [round(float(c), 3) for c in ras[:3]],
                   "bbox_voxels": [[int(s.start) for s in box], [int(s.stop) - 1 for s in box]]}
            if probabilities is not None and value in channel:
                inside = ids[box] == i
                obj["mean_probability"] = float(np.asarray(probabilities.array[channel[value]])[box][inside].mean())
            objects.append(obj)
    return InstanceMap(labels.with_array(ids.astype(np.uint16)), classes, objects)


def panoptic_array(labels: Volume, instances: InstanceMap) -> np.ndarray:
    """(X, Y, Z) int32: value * PANOPTIC_DIVISOR + instance number within its class (things), value * PANOPTIC_DIVISOR (stuff)."""
    array = np.asarray(labels.array).astype(np.int32)
    if array.max(initial=0) >= np.iinfo(np.int32).max // PANOPTIC_DIVISOR:
        raise OutputError(f"label value {int(array.max())} is too large for the panoptic encoding value * {PANOPTIC_DIVISOR}")
    out = array * PANOPTIC_DIVISOR
    ids = np.asarray(instances.ids.array)
    numbers: dict[int, int] = {}
    lookup = np.zeros(len(instances.classes) + 1, np.int32)
    for obj in instances.objects:
        numbers[obj["class"]] = numbers.get(obj["class"], 0) + 1
        if numbers[obj["class"]] >= PANOPTIC_DIVISOR:
            raise OutputError(f"class {obj['class']} has {PANOPTIC_DIVISOR} or more objects; they do not fit the panoptic encoding")
        lookup[obj["id"]] = numbers[obj["class"]]
        obj["panoptic_id"] = int(obj["class"] * PANOPTIC_DIVISOR + numbers[obj["class"]])
    return out + lookup[ids]


def json_path(path: str | os.PathLike) -> Path:
    """The JSON beside an instance or panoptic map: <stem>.json."""
    from medseg.io.atomic import full_suffix

    path = Path(path)
    return path.with_name(path.name[: len(path.name) - len(full_suffix(path))] + ".json")


def write_instance_outputs(segmentation, path: str | os.PathLike, panoptic: bool = False) -> Path:
    """Write the instance (or panoptic) map of a `Segmentation` and its JSON, each atomically."""
    from medseg.io import write_volume
    from medseg.io.atomic import atomic_output

    labels = segmentation.labels
    values = sorted(segmentation.label_names) if segmentation.label_names else None
    instances = instance_map(labels, segmentation.things, segmentation.probabilities, values)
    body: dict = {"instances": {str(k): v for k, v in instances.classes.items()}, "objects": instances.objects,
                  "label_names": {str(k): v for k, v in segmentation.label_names.items()}}
    if panoptic:
        volume = labels.with_array(panoptic_array(labels, instances))
        things = thing_values(labels, segmentation.things)
        body.update({"divisor": PANOPTIC_DIVISOR, "things": things,
                     "stuff": [v for v in (values or []) if v != 0 and v not in things]})
    else:
        volume = instances.ids
    written = write_volume(volume, path)
    with atomic_output(json_path(written)) as tmp:
        tmp.write_text(json.dumps(body, indent=1) + "\n")
    return Path(written)
