"""An instance-labelled benchmark from real backgrounds: ellipsoid "lesions" of varied size and
contrast inserted into the MSD Hippocampus MR crops (fixed seed), some touching, some under 10 voxels.

    python benchmarks/make_lesion_dataset.py --out work/lesions [--train 48 --test 24 --seed 0]

Writes, side by side, the same cases labelled three ways:
- OUT/semantic/   MSD folder: imagesTr, labelsTr (1 = lesion), dataset.json with things [1];
- OUT/bordercore/ the same images, labelsTr with 1 = lesion core, 2 = lesion border (the
  voxels within 1 voxel of an object's surface: where two lesions touch, both sides), "borders" {2: 1};
- OUT/test/       imagesTs, instancesTs (uint16 ids + <case>.json {"instances": {id: 1}}, nnDetection's
  format, what `medseg evaluate --instances` reads), and touching.json (the cases with touching lesions).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    return (((grid - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(-1) <= 1.0


def insert_lesions(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool]:
    """(image with lesions, instance ids, whether two lesions touch). Each lesion is brighter than its
    surroundings by 1.5-4 standard deviations of the foreground, with a smooth edge."""
    shape = image.shape
    ids = np.zeros(shape, np.uint16)
    out = image.astype(np.float32).copy()
    scale = float(np.std(image[image > 0])) if np.any(image > 0) else float(np.std(image)) or 1.0
    n, touching = int(rng.integers(1, 6)), False
    placed: list[tuple[np.ndarray, np.ndarray]] = []
    for k in range(1, n + 1):
        small = rng.random() < 0.25
        radii = rng.uniform(0.9, 1.4, 3) if small else rng.uniform(2.0, 5.5, 3)
        if placed and rng.random() < 0.4:  # touch the previous lesion face to face along one axis
            centre0, radii0 = placed[-1]
            axis = int(rng.integers(0, 3))
            centre = centre0.copy()
            centre[axis] += radii0[axis] + radii[axis] - 0.5
        else:
            centre = np.array([rng.uniform(r + 1, s - r - 2) for r, s in zip(radii, shape)])
        mask = ellipsoid(shape, centre, radii) & (ids == 0)
        if not mask.any():
            continue
        if placed and np.any(mask & _dilated(ids > 0)):
            touching = True
        ids[mask] = k
        placed.append((centre, radii))
        out[mask] += rng.uniform(1.5, 4.0) * scale
    return out, _renumber(ids), touching


def _dilated(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask)


def _renumber(ids: np.ndarray) -> np.ndarray:
    values = [v for v in np.unique(ids) if v]
    out = np.zeros_like(ids)
    for new, old in enumerate(values, start=1):
        out[ids == old] = new
    return out


def main() -> None:
    from medseg.instances import border_core_targets
    from medseg.io import read_volume, write_volume

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "hippocampus" / "imagesTr")
    parser.add_argument("--out", type=Path, default=REPO / "work" / "lesions")
    parser.add_argument("--train", type=int, default=48)
    parser.add_argument("--test", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    sources = sorted(args.source.glob("*.nii.gz"))[: args.train + args.test]
    if len(sources) < args.train + args.test:
        raise SystemExit(f"{args.source}: {len(sources)} scans, {args.train + args.test} needed")
    if args.out.exists():
        shutil.rmtree(args.out)
    semantic, bordercore, test = args.out / "semantic", args.out / "bordercore", args.out / "test"
    for folder in (semantic / "imagesTr", semantic / "labelsTr", bordercore / "imagesTr", bordercore / "labelsTr",
                   test / "imagesTs", test / "instancesTs"):
        folder.mkdir(parents=True)
    touching_cases, stats = [], {"objects": 0, "small": 0}
    for n, path in enumerate(sources):
        case = f"lesion_{n:03d}"
        volume = read_volume(path)
        image, ids, touching = insert_lesions(np.asarray(volume.array), rng)
        counts = np.bincount(ids.ravel())[1:]
        stats["objects"] += len(counts)
        stats["small"] += int(np.sum(counts < 10))
        scan = volume.with_array(image)
        if n < args.train:
            write_volume(scan, semantic / "imagesTr" / f"{case}.nii.gz")
            shutil.copy(semantic / "imagesTr" / f"{case}.nii.gz", bordercore / "imagesTr" / f"{case}.nii.gz")
            write_volume(volume.with_array((ids > 0).astype(np.uint8)), semantic / "labelsTr" / f"{case}.nii.gz")
            classes = {int(i): 1 for i in np.unique(ids) if i}
            write_volume(volume.with_array(border_core_targets(ids, classes, {2: 1})), bordercore / "labelsTr" / f"{case}.nii.gz")
        else:
            write_volume(scan, test / "imagesTs" / f"{case}.nii.gz")
            write_volume(volume.with_array(ids), test / "instancesTs" / f"{case}.nii.gz")
            (test / "instancesTs" / f"{case}.json").write_text(json.dumps({"instances": {str(int(i)): 1 for i in np.unique(ids) if i}}))
            if touching:
                touching_cases.append(case)
    channel = {"0": "MRI"}
    (semantic / "dataset.json").write_text(json.dumps({"name": "Lesions", "channel_names": channel, "file_ending": ".nii.gz",
                                                       "labels": {"background": 0, "lesion": 1}, "things": [1]}, indent=1))
    (bordercore / "dataset.json").write_text(json.dumps({"name": "LesionsBorderCore", "channel_names": channel, "file_ending": ".nii.gz",
                                                         "labels": {"background": 0, "lesion": 1, "lesion_border": 2},
                                                         "things": [1], "borders": {"2": 1}}, indent=1))
    (test / "touching.json").write_text(json.dumps(touching_cases, indent=1))
    print(f"{args.train} training and {args.test} test cases in {args.out}: {stats['objects']} lesions, "
          f"{stats['small']} under 10 voxels, {len(touching_cases)} test cases with touching lesions")


if __name__ == "__main__":
    main()
