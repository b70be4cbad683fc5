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
                 label_values: list[int] | None = None, connectivity: int = 26, *,
                 ids: Volume | None = None, classes: dict[int, int] | None = None) -> InstanceMap:
    """Objects of the thing classes of a label map (X, Y, Z), by connected components per class.

    Each object: id, class (label value), voxels, volume_ml, centroid_mm (RAS, through the affine),
    bbox_voxels ([[i0, j0, k0], [i1, j1, k1]], inclusive), and mean_probability (the mean over its
    voxels of its class's probability, when `probabilities` (K, X, Y, Z) with `label_values` given).
    ids with classes: objects already found (a border/core model's) instead of connected components.
    """
    from scipy import ndimage

    from medseg.metrics.instances import instances_from_labels

    array = np.asarray(labels.array)
    if ids is not None and classes is not None:
        ids = np.asarray(ids.array).astype(np.int32)
    else:
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
    instances = instance_map(labels, segmentation.things, segmentation.probabilities, values,
                             ids=segmentation.instance_ids, classes=segmentation.instance_classes or None)
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


# --- border/core: touching objects of one class told apart by a learned border -------------------

def border_core_targets(instance_ids: np.ndarray, classes: dict[int, int], border_of: dict[int, int],
                        width: int = 1) -> np.ndarray:
    """Training labels (X, Y, Z) for a border/core model from an instance map: each object's voxels
    within `width` voxels of its surface (6-connected erosion; where two objects touch, both sides)
    get the border value of its class, the rest its class value. border_of: {border value: thing value}."""
    from scipy import ndimage

    border_value = {thing: border for border, thing in border_of.items()}
    ids = np.asarray(instance_ids)
    out = np.zeros(ids.shape, np.uint16 if max([*classes.values(), *border_of, 0]) > 255 else np.uint8)
    for obj, value in classes.items():
        mask = ids == obj
        if not mask.any():
            continue
        core = ndimage.binary_erosion(mask, iterations=width, border_value=1) if value in border_value else mask
        out[mask] = border_value.get(value, value)
        out[core] = value
    return out


def split_by_border_core(labels: np.ndarray, border_of: dict[int, int], connectivity: int = 6
                         ) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """Predicted border/core labels (X, Y, Z) -> (class labels with borders merged into their class,
    instance ids int32, {id: class value}).

    Per thing class: each connected core (`connectivity`) is a seed; every voxel of the class
    (core or border) takes the id of the nearest seed of its own connected region (26-connected;
    Euclidean distance in voxels: a seeded growth); a region of border without any core is one
    object of its own. Label values that are neither borders nor their things pass through.
    """
    from scipy import ndimage

    from medseg.metrics.instances import connected_instances

    labels = np.asarray(labels)
    classes_out = labels.copy()
    ids = np.zeros(labels.shape, np.int32)
    to_class: dict[int, int] = {}
    for border, thing in sorted(border_of.items()):
        region = (labels == thing) | (labels == border)
        classes_out[labels == border] = thing
        if not region.any():
            continue
        cores, n = connected_instances(labels == thing, connectivity)
        parts, _ = connected_instances(region, 26)
        grown = np.zeros(labels.shape, np.int32)
        for part, box in enumerate(ndimage.find_objects(parts), start=1):
            inside = parts[box] == part
            seeds = np.where(inside, cores[box], 0)
            if seeds.any():  # every voxel of the part takes its nearest seed's id
                _, nearest = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
                grown[box][inside] = seeds[tuple(nearest)][inside]
            else:  # a border region without a core: one object of its own
                n += 1
                grown[box][inside] = n
        offset = len(to_class)
        ids[grown > 0] = grown[grown > 0] + offset
        to_class.update({offset + k: int(thing) for k in range(1, n + 1)})
    return classes_out, ids, to_class


def merge_borders(segmentation, border_of: dict[int, int], label_values: list[int]):
    """A border/core model's `Segmentation` -> the same with borders merged into their classes (labels,
    names, codes, probabilities summed into the thing's channel) and the objects it separated."""
    from dataclasses import replace

    labels = np.asarray(segmentation.labels.array)
    classes, ids, to_class = split_by_border_core(labels, border_of)
    probabilities = segmentation.probabilities
    if probabilities is not None:
        channel = {v: k for k, v in enumerate(label_values)}
        array = np.asarray(probabilities.array).copy()
        for border, thing in border_of.items():
            array[channel[thing]] += array[channel[border]]
        keep = [channel[v] for v in label_values if v not in border_of]
        probabilities = probabilities.with_array(array[keep])
    return replace(
        segmentation, labels=segmentation.labels.with_array(classes.astype(labels.dtype)), probabilities=probabilities,
        label_names={v: n for v, n in segmentation.label_names.items() if v not in border_of},
        label_codes={v: c for v, c in segmentation.label_codes.items() if v not in border_of},
        things=sorted(set(border_of.values()) | set(segmentation.things or [])) if segmentation.things is not None else None,
        instance_ids=segmentation.labels.with_array(ids.astype(np.uint16)), instance_classes=to_class)


def instance_segments(segmentation) -> tuple[Volume, dict[int, str], dict[int, dict]]:
    """(uint16 object ids, {id: "<class name> <n>"}, {id: the class's label code}): a `Segmentation`'s
    objects as the segments of a DICOM SEG (format "dicom-seg-instances")."""
    values = sorted(segmentation.label_names) if segmentation.label_names else None
    found = instance_map(segmentation.labels, segmentation.things, None, values,
                         ids=segmentation.instance_ids, classes=segmentation.instance_classes or None)
    numbers: dict[int, int] = {}
    names, codes = {0: "background"}, {}
    for obj in found.objects:
        value = obj["class"]
        numbers[value] = numbers.get(value, 0) + 1
        names[obj["id"]] = f"{segmentation.label_names.get(value, f'label {value}')} {numbers[value]}"
        if value in segmentation.label_codes:
            codes[obj["id"]] = segmentation.label_codes[value]
    return found.ids, names, codes
