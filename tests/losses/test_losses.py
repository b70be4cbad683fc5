"""Losses against hand-checkable answers, against torch/MONAI, and with an ignore label."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg.errors import ConfigError
from medseg.losses import LOSSES, DeepSupervisionLoss, build_loss, default_weights, downsample_target

PROBS = torch.tensor([[0.9, 0.8, 0.1, 0.0], [0.7, 0.6, 0.2, 0.1], [0.1, 0.3, 0.1, 0.0], [0.0, 0.1, 0.0, 0.0]])
TRUTH = torch.zeros(4, 4, dtype=torch.long)
TRUTH[[0, 0, 1, 1, 1], [0, 1, 0, 1, 2]] = 1
HAND_DICE = 6.4 / 9  # 2 * (.9+.8+.7+.6+.2) / (sum of probs 4.0 + 5 ones)


def _hand_dice_loss(probs, onehot, weights=None, batch=False, smooth=0.0):
    """1 - mean_k w_k (2 sum pg + s) / (sum p + sum g + s); probs/onehot (B, K, *S) already masked."""
    axes = tuple(range(2, probs.ndim))
    if batch:
        axes = (0,) + axes
    inter, total = (probs * onehot).sum(axes), probs.sum(axes) + onehot.sum(axes)
    loss = 1 - (2 * inter + smooth) / (total + smooth)
    if weights is not None:
        loss = loss * torch.tensor(weights)
    return loss.mean()


def _random_case(k=3, shape=(2, 6, 5, 4), ignore_fraction=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape[0], k, *shape[1:], generator=g)
    target = torch.randint(0, k, (shape[0], 1, *shape[1:]), generator=g)
    ignored = torch.rand(target.shape, generator=g) < ignore_fraction
    return logits, torch.where(ignored, torch.full_like(target, 255), target), ignored


def test_soft_dice_hand_example_sigmoid_and_softmax():
    sig_logits = torch.logit(PROBS.double(), eps=1e-12).float()[None, None]
    loss = build_loss("dice", sigmoid=True, smooth=0.0)(sig_logits, TRUTH[None, None])
    assert loss.item() == pytest.approx(1 - HAND_DICE, abs=1e-5)
    # softmax over (background, foreground) logits (log(1-p), log p) gives back exactly p
    two = torch.stack([torch.log1p(-PROBS + 1e-9), torch.log(PROBS + 1e-9)])[None]
    loss = build_loss("dice", include_background=False, smooth=0.0)(two, TRUTH[None, None])
    assert loss.item() == pytest.approx(1 - HAND_DICE, abs=1e-5)
    assert 1 - HAND_DICE == pytest.approx(0.2889, abs=1e-4)


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("include_background", [True, False])
def test_dice_matches_own_formula_with_weights_and_ignore(batch_dice, include_background):
    logits, target, ignored = _random_case()
    weights = [0.5, 2.0, 1.0]
    loss = build_loss("dice", class_weights=weights, batch_dice=batch_dice, include_background=include_background, smooth=0.0)
    valid = (~ignored).float()
    probs = torch.softmax(logits, 1) * valid
    onehot = F.one_hot(torch.where(ignored, 0, target)[:, 0], 3).movedim(-1, 1).float() * valid
    first = 0 if include_background else 1
    expected = _hand_dice_loss(probs[:, first:], onehot[:, first:], weights[first:], batch=batch_dice)
    assert loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_class_weights_scale_each_class_term():
    logits, target, _ = _random_case(seed=1)
    per_class = [3 * build_loss("dice", class_weights=w)(logits, target) for w in ([1, 0, 0], [0, 1, 0], [0, 0, 1])]
    weighted = build_loss("dice", class_weights=[1.0, 2.0, 0.0])(logits, target)
    # Dice: w_k multiplies class k's term, then the mean over the 3 classes
    assert weighted.item() == pytest.approx(((per_class[0] + 2 * per_class[1]) / 3).item(), rel=1e-5)
    # CE: torch's weighted mean, sum_v w_y nll_v / sum_v w_y, ignored voxels excluded
    ce = build_loss("focal", gamma=0.0, class_weights=[1.0, 2.0, 0.5])(logits, target)
    ref = F.cross_entropy(logits, target[:, 0], weight=torch.tensor([1.0, 2.0, 0.5]), ignore_index=255)
    assert ce.item() == pytest.approx(ref.item(), rel=1e-5)


def test_focal_with_gamma_zero_is_cross_entropy_and_bce():
    logits, target, _ = _random_case()
    focal = build_loss("focal", gamma=0.0)(logits, target)
    assert focal.item() == pytest.approx(F.cross_entropy(logits, target[:, 0], ignore_index=255).item(), rel=1e-6)
    binary = torch.randint(0, 2, (2, 1, 6, 5, 4))
    one = logits[:, :1]
    sig = build_loss("focal", gamma=0.0, sigmoid=True)(one, binary)
    assert sig.item() == pytest.approx(F.binary_cross_entropy_with_logits(one, binary.float()).item(), rel=1e-6)
    # gamma > 0 down-weights easy voxels: strictly below CE
    assert build_loss("focal", gamma=2.0)(logits, target) < focal


def test_focal_agrees_with_monai_elementwise():
    from monai.losses import FocalLoss

    logits, target, _ = _random_case(ignore_fraction=0.0)
    ours = build_loss("focal", gamma=2.0, alpha=0.25, ignore_index=None)(logits, target)
    # MONAI's mean divides by B*K*S for softmax (CE / K); its per-channel terms summed over K are ours
    monai = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0, alpha=0.25, reduction="none")(logits, target)
    assert ours.item() == pytest.approx(monai.sum(1).mean().item(), rel=1e-5)
    binary = (target > 0).long()
    ours = build_loss("focal", gamma=2.0, alpha=0.25, sigmoid=True, ignore_index=None)(logits, binary.expand_as(logits))
    monai = FocalLoss(gamma=2.0, alpha=0.25)(logits, binary.expand_as(logits).float())
    assert ours.item() == pytest.approx(monai.item(), rel=1e-5)


def test_dice_ce_and_dice_bce_agree_with_monai():
    from monai.losses import DiceCELoss, DiceLoss

    logits, target, _ = _random_case(ignore_fraction=0.0)
    ours = build_loss("dice_ce")(logits, target)
    assert ours.item() == pytest.approx(DiceCELoss(softmax=True, to_onehot_y=True)(logits, target).item(), rel=1e-5)
    multilabel = (torch.rand(logits.shape, generator=torch.Generator().manual_seed(3)) < 0.3).long()
    ours = build_loss("dice_bce", batch_dice=True)(logits, multilabel)
    ref = DiceLoss(sigmoid=True, batch=True)(logits, multilabel) + F.binary_cross_entropy_with_logits(logits, multilabel.float())
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def _variants():
    for name in LOSSES:
        yield name, {}
        yield name, {"batch_dice": True, "class_weights": [1.0, 3.0, 0.5]}
    for name in ("dice", "focal", "dice_focal"):
        yield name, {"sigmoid": True}
    yield "dice_bce", {"include_background": False}


@pytest.mark.parametrize("name, options", list(_variants()))
def test_predictions_on_ignored_voxels_do_not_matter(name, options):
    logits, target, ignored = _random_case(seed=2)
    loss = build_loss(name, **options)
    base = loss(logits, target)
    flipped = torch.where(ignored, -10 * logits.flip(1), logits).requires_grad_()
    again = loss(flipped, target)
    assert again.item() == pytest.approx(base.item(), rel=1e-6)
    again.backward()
    assert flipped.grad.masked_select(ignored.expand_as(flipped)).abs().max() == 0
    assert flipped.grad.abs().sum() > 0


def test_multilabel_target_ignore_is_per_element():
    logits, _, _ = _random_case(seed=4)
    labels = (torch.rand(logits.shape, generator=torch.Generator().manual_seed(5)) < 0.4).long()
    ignored = torch.zeros_like(labels, dtype=torch.bool)
    ignored[:, 1, :3] = True  # channel 1 unannotated in part of the volume
    loss = build_loss("dice_bce")
    base = loss(logits, torch.where(ignored, 255, labels))
    assert loss(torch.where(ignored, -logits, logits), torch.where(ignored, 255, labels)).item() == pytest.approx(base.item())
    assert loss(logits, labels).item() != pytest.approx(base.item())


def test_bf16_logits_give_float32_loss():
    logits, target, _ = _random_case()
    low = logits.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = build_loss("dice_ce")(low, target)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(build_loss("dice_ce")(low.float(), target).item(), rel=1e-6)


def test_deep_supervision_weights_and_target_downsampling():
    assert default_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])  # no zero weight: every output trains
    assert default_weights(2) == pytest.approx([2 / 3, 1 / 3])  # nnU-Net's 3-output weights, lowest dropped
    assert default_weights(1) == [1.0]
    target = torch.randint(0, 3, (1, 1, 37, 51, 29))
    small = downsample_target(target, (10, 13, 8))  # cumulative stride 4
    assert torch.equal(small, target[:, :, ::4, ::4, ::4])
    g = torch.Generator().manual_seed(0)
    outputs = [torch.randn(1, 3, 37, 51, 29, generator=g), torch.randn(1, 3, 19, 26, 15, generator=g), torch.randn(1, 3, 10, 13, 8, generator=g)]
    base = build_loss("dice_ce")
    ds = DeepSupervisionLoss(base)(outputs[:2], target)
    expected = 2 / 3 * base(outputs[0], target) + 1 / 3 * base(outputs[1], target[:, :, ::2, ::2, ::2])
    assert ds.item() == pytest.approx(expected.item(), rel=1e-6)
    three = DeepSupervisionLoss(base)(outputs, target)
    assert three.item() == pytest.approx((4 * base(outputs[0], target) + 2 * base(outputs[1], target[:, :, ::2, ::2, ::2])
                                          + base(outputs[2], small)).item() / 7, rel=1e-6)
    leaves = [o.clone().requires_grad_() for o in outputs]
    explicit = DeepSupervisionLoss(base, weights=[0.0, 0.0, 1.0])(leaves, target)
    assert explicit.item() == pytest.approx(base(outputs[2], small).item(), rel=1e-6)
    explicit.backward()  # a weight of 0 still reaches its output (zero gradient), so DDP sees every head used
    assert all(leaf.grad is not None for leaf in leaves) and not leaves[0].grad.any()
    assert DeepSupervisionLoss(base)(outputs[0], target).item() == pytest.approx(base(outputs[0], target).item())


def test_deep_supervision_decay_sets_the_relative_weights():
    assert default_weights(3, decay=1.0) == pytest.approx([1 / 3] * 3)  # every output alike
    assert default_weights(3, decay=0.25) == pytest.approx([16 / 21, 4 / 21, 1 / 21])
    assert default_weights(3) == default_weights(3, decay=0.5)  # nnU-Net's
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ConfigError, match=r"deep supervision decay .* expected 0 < decay <= 1"):
            default_weights(3, decay=bad)
    g = torch.Generator().manual_seed(1)
    outputs = [torch.randn(1, 3, 8, 8, 8, generator=g), torch.randn(1, 3, 4, 4, 4, generator=g)]
    target = torch.randint(0, 3, (1, 1, 8, 8, 8), generator=g)
    base = build_loss("dice_ce")
    equal = DeepSupervisionLoss(base, decay=1.0)(outputs, target)
    assert equal.item() == pytest.approx((base(outputs[0], target) + base(outputs[1], target[:, :, ::2, ::2, ::2])).item() / 2, rel=1e-6)


def test_errors_name_the_problem():
    with pytest.raises(ConfigError, match=r"unknown loss 'dice_c', did you mean 'dice_ce'\? Known: dice, dice_ce"):
        build_loss("dice_c")
    with pytest.raises(ConfigError, match="unknown option.*gama"):
        build_loss("focal", gama=2)
    logits, target, _ = _random_case()
    with pytest.raises(ConfigError, match="class_weights has 2 values"):
        build_loss("dice_ce", class_weights=[1, 2])(logits, target)
    with pytest.raises(ConfigError, match="label 7"):
        build_loss("dice_ce")(logits, torch.full_like(target, 7))
