import numpy as np
import pytest
import torch

from medseg.data.augment import build_train_transforms, rot90_axis_pairs
from medseg.training.config import AugmentConfig


def test_spatial_transforms_move_image_and_label_together():
    # label == (image > 0) before augmentation; every spatial transform must keep them aligned
    rng = np.random.default_rng(0)
    image = np.zeros((1, 16, 16, 16), np.float32)
    image[0, 3:9, 5:13, 4:10] = 1.0
    label = (image > 0).astype(np.uint8)
    aug = AugmentConfig(flip=0.5, rot90=0.5, affine=1.0, elastic=0.0, brightness=0, contrast=0, gamma=0, noise=0, blur=0, low_resolution=0)
    t = build_train_transforms(aug, (16, 16, 16), spacing=(1.0, 1.0, 1.0))
    changed = 0
    for seed in range(6):
        t.set_random_state(seed=seed)
        out = t({"image": image.copy(), "label": label.copy()})
        img, lab = np.asarray(out["image"]), np.asarray(out["label"])
        assert img.shape == image.shape and lab.shape == label.shape
        inside = img[0][lab[0] > 0]
        assert inside.mean() > 0.8  # label voxels still sit on bright image voxels
        changed += not np.array_equal(lab, label)
    assert changed >= 4


def test_same_seed_same_augmentation_and_intensity_only_leaves_label():
    image = np.random.default_rng(1).normal(size=(1, 12, 12)).astype(np.float32)
    label = (image > 0).astype(np.uint8)
    aug = AugmentConfig(flip=0, affine=0, noise=1.0, blur=1.0, brightness=1.0, contrast=1.0, gamma=1.0, low_resolution=1.0)
    t = build_train_transforms(aug, (12, 12))
    outs = []
    for _ in range(2):
        t.set_random_state(seed=5)
        outs.append(t({"image": image.copy(), "label": label.copy()}))
    a, b = (torch.as_tensor(np.asarray(o["image"])) for o in outs)
    assert torch.equal(a, b) and not np.allclose(np.asarray(a), image)
    assert np.array_equal(np.asarray(outs[0]["label"]), label)


def test_rot90_only_in_isotropic_square_planes():
    assert rot90_axis_pairs((40, 56, 40), (1.0, 1.0, 1.0)) == [(0, 2)]
    assert rot90_axis_pairs((32, 32, 32), (1.0, 1.0, 3.0)) == [(0, 1)]


def test_strength_scales_every_probability_but_mirroring_capped_at_one():
    import monai.transforms as mt

    from medseg.data.augment import strength_at

    aug = AugmentConfig(flip=0.5, affine=0.2, noise=0.1, gamma=0.3, blur=0, low_resolution=0, brightness=0, contrast=0,
                        strength_start=1.0, strength_end=0.0)
    assert [strength_at(aug, q) for q in (0.0, 0.25, 1.0, 1.5)] == [1.0, 0.75, 0.0, 0.0]

    def probs(strength):
        t = build_train_transforms(aug, (8, 8, 8), strength=strength)
        return {type(x).__name__: x.prob for x in t.transforms if isinstance(x, mt.RandomizableTransform)}

    assert probs(1.0) == {"RandAffined": 0.2, "RandGaussianNoised": 0.1, "RandAdjustContrastd": 0.3, "RandFlipd": 0.5}
    half = probs(0.5)
    assert half["RandAffined"] == pytest.approx(0.1) and half["RandGaussianNoised"] == pytest.approx(0.05)
    assert half["RandAdjustContrastd"] == pytest.approx(0.15) and half["RandFlipd"] == 0.5
    assert probs(4.0) == {"RandAffined": 0.8, "RandGaussianNoised": 0.4, "RandAdjustContrastd": 1.0, "RandFlipd": 0.5}
