"""A small trained bundle, made once per session: a tiny 3D U-Net that segments bright blobs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.bundle import write_bundle
from medseg.preprocess.plan import ChannelNormalization, ConfigurationPlan, Plan, ResamplingPlan

LABELS = {0: "background", 1: "blob"}


def tiny_plan(target_spacing=(3.0, 3.0, 3.0), channels=("image",)) -> Plan:
    return Plan(
        dataset_name="blobs",
        channel_names=list(channels),
        modalities=["MR"] * len(channels),
        labels=LABELS,
        target_spacing=list(target_spacing),
        resampling=ResamplingPlan(image_order=1),
        normalization=[ChannelNormalization(scheme="zscore") for _ in channels],
        configurations={
            "3d": ConfigurationPlan(
                spatial_dims=3, patch_size=[32, 32, 16], batch_size=2, features_per_stage=[4, 8],
                strides=[[1, 1, 1], [2, 2, 2]], kernel_sizes=[[3, 3, 3], [3, 3, 3]],
            ),
        },
    )


def blob_batch(rng: np.random.Generator, n: int, shape=(32, 32, 16)):
    """Images N(0, 0.5) plus bright balls; labels are the balls."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    images, labels = [], []
    for _ in range(n):
        label = np.zeros(shape, bool)
        for _ in range(rng.integers(1, 4)):
            centre = rng.uniform(4, np.array(shape) - 4)
            label |= np.linalg.norm(grid - centre, axis=-1) < rng.uniform(2.5, 6)
        images.append(rng.normal(0, 0.5, shape) + 2.5 * label - 0.3)
        labels.append(label)
    return torch.tensor(np.stack(images)[:, None], dtype=torch.float32), torch.tensor(np.stack(labels), dtype=torch.long)


def train_tiny_bundle(path, steps: int = 40, seed: int = 0):
    from medseg.models import build_model

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    plan = tiny_plan()
    cfg = plan.configurations["3d"]
    net = build_model("unet3d", cfg, in_channels=1, num_classes=2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        x, y = blob_batch(rng, 2)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return write_bundle(
        path, model_name="unet3d", configuration="3d", fold=0, model_options={}, plan=plan,
        config={"steps": steps}, labels=LABELS,
        label_codes={1: {"category": ["49755003", "SCT", "Morphologically Altered Structure"], "type": ["108369006", "SCT", "Neoplasm"]}},
        postprocessing=[], precision="fp32", state_dict_best=state, state_dict_last=state,
    )


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """Path of a bundle folder holding a tiny trained blob segmenter (patch 32x32x16, 3 mm grid)."""
    return train_tiny_bundle(tmp_path_factory.mktemp("bundle") / "blobs")


def train_tiny_2d_bundle(path, steps: int = 40, seed: int = 0, target_spacing=(3.0, 3.0, 3.0)):
    """A tiny 2D U-Net on axial (axis 2) slices of the same blobs, with a "2d" configuration of the
    same plan as `train_tiny_bundle`'s (so the two can be ensembled) unless `target_spacing` differs."""
    from medseg.models import build_model

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    plan = tiny_plan(target_spacing)
    plan.configurations["2d"] = ConfigurationPlan(
        spatial_dims=2, patch_size=[32, 32], batch_size=8, features_per_stage=[8, 16],  # [4, 8] learns only background
        strides=[[1, 1], [2, 2]], kernel_sizes=[[3, 3], [3, 3]], slice_axis=2,
    )
    net = build_model("unet2d", plan.configurations["2d"], in_channels=1, num_classes=2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        x, y = blob_batch(rng, 2)
        x2d, y2d = x.permute(0, 4, 1, 2, 3).flatten(0, 1), y.permute(0, 3, 1, 2).flatten(0, 1)  # (B*Z, 1, X, Y)
        loss = torch.nn.functional.cross_entropy(net(x2d), y2d)
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return write_bundle(
        path, model_name="unet2d", configuration="2d", fold=0, model_options={}, plan=plan,
        config={"steps": steps}, labels=LABELS, label_codes={}, postprocessing=[], precision="fp32",
        state_dict_best=state, state_dict_last=state,
    )


@pytest.fixture(scope="session")
def tiny_2d_bundle(tmp_path_factory):
    """Path of a 2D bundle of the blob segmenter's plan (slices along axis 2, patch 32x32)."""
    return train_tiny_2d_bundle(tmp_path_factory.mktemp("bundle2d") / "blobs2d")
