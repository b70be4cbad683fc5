"""Random training patches from the preprocessed cache, reproducible from (seed, rank, epoch, index).

Each sample draws its own generator from `np.random.default_rng([seed, rank, epoch, index])`, so
the patches depend only on those four numbers: not on loader workers, not on what ran before.
That is what makes `--resume` exact and gives every distributed rank its own share.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np


def crop_with_padding(array: np.ndarray, start: Sequence[int], size: Sequence[int], pad_value=0) -> np.ndarray:
    """array[..., start:start+size] over the last len(size) axes; outside the array is `pad_value`."""
    n = len(size)
    lead = array.shape[: array.ndim - n]
    out = np.full(lead + tuple(size), pad_value, dtype=array.dtype)
    src, dst = [], []
    for s, p, dim in zip(start, size, array.shape[-n:]):
        lo, hi = max(s, 0), min(s + p, dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[(Ellipsis, *dst)] = array[(Ellipsis, *src)]
    return out


class PatchDataset:
    """A map-style dataset of `length` random patches per epoch (use with torch DataLoader).

    Item: {"image": float32 tensor (C, *patch), "label": int64 tensor (1, *patch)}, with patch 3D
    (X, Y, Z) or, for 2D models, the two in-plane axes of a slice along `slice_axis`.
    A fraction `foreground_prob` of patches is centred on a random voxel of a random foreground
    class present in the case (from locations.npz); the rest are placed uniformly.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        case_ids: list[str],
        patch_size: Sequence[int],
        length: int,
        *,
        foreground_prob: float = 0.33,
        slice_axis: int | None = None,
        transform=None,
        seed: int = 0,
        rank: int = 0,
    ):
        if len(patch_size) == 2 and slice_axis is None:
            raise ValueError("2D patches need the plan's slice_axis")
        from medseg.preprocess.cache import check_case_files

        for case_id in case_ids:  # header-only: a truncated case fails here, at the start, even if never sampled
            check_case_files(workdir, case_id)
        self.workdir = Path(workdir)
        self.case_ids = list(case_ids)
        self.patch_size = [int(p) for p in patch_size]
        self.length = int(length)
        self.foreground_prob = foreground_prob
        self.slice_axis = slice_axis
        self.transform = transform
        self.seed = int(seed)
        self.rank = int(rank)
        self.epoch = 0
        self._cache: dict[str, tuple] = {}

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch (before the loader's workers start, i.e. before iterating)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _case(self, case_id: str):
        """(image (C, X, Y, Z) float32, label (X, Y, Z) uint8 or None, {channel: (N, 3) voxels}, empty
        classes left out) of a cached case, read by `medseg.preprocess.cache.load_case` (memory-mapped:
        cheap to keep every case open; a missing or truncated file is an `InputError` naming it)."""
        if case_id not in self._cache:
            from medseg.preprocess.cache import load_case

            case = load_case(self.workdir, case_id)
            self._cache[case_id] = (case.image, case.label, {k: v for k, v in case.locations.items() if len(v)})
        return self._cache[case_id]

    def sample(self, index: int) -> dict[str, np.ndarray]:
        """The un-augmented patch for `index`: image (C, *patch) float32, label (1, *patch) uint8."""
        rng = np.random.default_rng([self.seed, self.rank, self.epoch, int(index)])
        image, label, locations = self._case(self.case_ids[int(rng.integers(len(self.case_ids)))])
        shape = image.shape[1:]
        centre = None
        if locations and rng.random() < self.foreground_prob:
            classes = sorted(locations)
            voxels = locations[classes[int(rng.integers(len(classes)))]]
            centre = voxels[int(rng.integers(len(voxels)))]
        if len(self.patch_size) == 3:
            axes, size = [0, 1, 2], self.patch_size
        else:
            axes = [a for a in range(3) if a != self.slice_axis]
            size = list(self.patch_size)
            size_3d = [1] * 3
            for a, p in zip(axes, size):
                size_3d[a] = p
        start = [0, 0, 0]
        for a in range(3):
            if len(self.patch_size) == 2 and a == self.slice_axis:
                start[a] = int(centre[a]) if centre is not None else int(rng.integers(shape[a]))
                continue
            p = self.patch_size[a] if len(self.patch_size) == 3 else size[axes.index(a)]
            lo, hi = min(0, shape[a] - p), max(0, shape[a] - p)  # patch inside the image, or image inside the patch
            if centre is not None:
                start[a] = int(np.clip(int(centre[a]) - p // 2, lo, hi))
            else:
                start[a] = int(rng.integers(lo, hi + 1))
        full = self.patch_size if len(self.patch_size) == 3 else size_3d
        img = crop_with_padding(image, start, full).astype(np.float32, copy=False)
        lab = crop_with_padding(label, start, full)[None] if label is not None else np.zeros((1, *full), np.uint8)
        if len(self.patch_size) == 2:
            img = np.take(img, 0, axis=1 + self.slice_axis)
            lab = np.take(lab, 0, axis=1 + self.slice_axis)
        return {"image": np.ascontiguousarray(img), "label": np.ascontiguousarray(lab), "_seed": int(rng.integers(2**31 - 1))}

    def __getitem__(self, index: int):
        import torch

        item = self.sample(index)
        seed = item.pop("_seed")
        if self.transform is not None:
            self.transform.set_random_state(seed=seed)
            item = self.transform(item)
        image = _plain_tensor(item["image"]).float()
        label = _plain_tensor(item["label"]).round().long() if not _is_int(item["label"]) else _plain_tensor(item["label"]).long()
        return {"image": image.contiguous(), "label": label.contiguous()}


def _is_int(x) -> bool:
    import torch

    dtype = x.dtype
    return (isinstance(dtype, torch.dtype) and not dtype.is_floating_point) or (isinstance(dtype, np.dtype) and dtype.kind in "iub")


def _plain_tensor(x):
    import torch

    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if hasattr(x, "as_tensor"):  # monai MetaTensor -> plain tensor
        return x.as_tensor()
    return torch.as_tensor(x)


def plan_spacing_for_patch(target_spacing: Sequence[float], slice_axis: int | None, spatial_dims: int) -> list[float]:
    """Spacing (mm) of each patch axis: all three for 3D, the two in-plane ones for 2D."""
    if spatial_dims == 3:
        return [float(s) for s in target_spacing]
    return [float(s) for a, s in enumerate(target_spacing) if a != slice_axis]


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: one thread per worker so workers do not steal the compute cores."""
    import torch

    torch.set_num_threads(1)
