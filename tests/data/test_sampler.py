import numpy as np
import pytest

from medseg.data.sampler import PatchDataset, crop_with_padding
from medseg.preprocess.cache import load_case, write_case
from medseg.preprocess.case import CaseProperties, PreprocessedCase


def _write_case(root, case_id, image, label):
    """A cached case on a 1 mm identity grid, written by the cache's own writer (read back by load_case)."""
    shape = [int(s) for s in label.shape]
    eye = np.eye(4).tolist()
    props = CaseProperties(
        original_shape=shape, original_affine=eye, original_orientation="RAS", ras_shape=shape, ras_affine=eye,
        crop_box=[[0, s] for s in shape], cropped_shape=shape, resampled_shape=shape, resampled_affine=eye,
        original_spacing=[1.0] * 3, spacing=[1.0] * 3, classes_present=sorted(int(c) for c in np.unique(label)),
    )
    case = PreprocessedCase(image.astype(np.float32), label.astype(np.uint8), props)
    write_case(root, case_id, case, stamp={})


def test_the_sampler_reads_the_cache_memory_mapped_through_load_case(one_case):
    ds = PatchDataset(one_case, ["a"], (8, 8, 8), 10, seed=3)
    image, label, locations = ds._case("a")
    assert isinstance(image, np.memmap) and isinstance(label, np.memmap)
    assert sorted(locations) == [2] and np.all(label[tuple(locations[2].T)] == 2)
    assert np.array_equal(image, load_case(one_case, "a").image)


def test_crop_with_padding_matches_numpy_pad():
    a = np.arange(2 * 4 * 5 * 3).reshape(2, 4, 5, 3)
    got = crop_with_padding(a, (-1, 2, 0), (6, 4, 3), pad_value=-7)
    padded = np.pad(a, ((0, 0), (1, 1), (0, 1), (0, 0)), constant_values=-7)
    assert np.array_equal(got, padded[:, 0:6, 2:6, 0:3])


@pytest.fixture
def one_case(tmp_path):
    image = np.random.default_rng(0).normal(size=(1, 20, 18, 16))
    label = np.zeros((20, 18, 16), np.uint8)
    label[15:17, 2:4, 12:14] = 2  # a small object in a corner
    _write_case(tmp_path, "a", image, label)
    return tmp_path


def test_foreground_oversampling_centres_on_the_object(one_case):
    ds = PatchDataset(one_case, ["a"], (8, 8, 8), 200, foreground_prob=1.0, seed=3)
    assert all((ds.sample(i)["label"] == 2).any() for i in range(50))
    never = PatchDataset(one_case, ["a"], (8, 8, 8), 200, foreground_prob=0.0, seed=3)
    hits = sum((never.sample(i)["label"] == 2).any() for i in range(200))
    assert hits < 50  # the object fills ~0.2% of the volume: random patches mostly miss it


def test_patches_are_reproducible_per_seed_epoch_and_rank(one_case):
    ds = PatchDataset(one_case, ["a"], (8, 8, 8), 10, seed=3)
    first = ds.sample(4)["image"]
    assert np.array_equal(ds.sample(4)["image"], first)
    ds.set_epoch(1)
    assert not np.array_equal(ds.sample(4)["image"], first)
    other_rank = PatchDataset(one_case, ["a"], (8, 8, 8), 10, seed=3, rank=1)
    assert not np.array_equal(other_rank.sample(4)["image"], first)


def test_small_case_is_padded_and_2d_slices_follow_the_axis(tmp_path):
    image = np.ones((1, 4, 5, 6))
    label = np.ones((4, 5, 6))
    _write_case(tmp_path, "tiny", image, label)
    item = PatchDataset(tmp_path, ["tiny"], (8, 8, 8), 1, seed=0)[0]
    assert tuple(item["image"].shape) == (1, 8, 8, 8) and tuple(item["label"].shape) == (1, 8, 8, 8)
    assert item["image"].sum() == 4 * 5 * 6 and item["label"].sum() == 4 * 5 * 6
    item2d = PatchDataset(tmp_path, ["tiny"], (6, 8), 1, slice_axis=1, seed=0)[0]
    assert tuple(item2d["image"].shape) == (1, 6, 8)
    assert item2d["image"].sum() == 4 * 6  # one slice along Y holds X*Z voxels
