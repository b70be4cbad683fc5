"""A tiny synthetic WORKDIR (plan + preprocessed cache) for training tests."""

from __future__ import annotations

import shutil
import socket

import numpy as np
import pytest

from medseg.preprocess import preprocess_case
from medseg.preprocess.cache import write_case
from medseg.preprocess.plan import ChannelNormalization, ConfigurationPlan, Plan
from medseg.volume import Volume


def tiny_plan() -> Plan:
    return Plan(
        dataset_name="Tiny",
        channel_names=["MR"],
        modalities=["MR"],
        labels={0: "background", 1: "ball", 2: "box"},
        target_spacing=[1.0, 1.0, 1.0],
        normalization=[ChannelNormalization(scheme="zscore")],
        configurations={
            "3d": ConfigurationPlan(spatial_dims=3, patch_size=[16, 16, 16], batch_size=2, features_per_stage=[4, 8],
                                    strides=[[1, 1, 1], [2, 2, 2]], kernel_sizes=[[3, 3, 3], [3, 3, 3]]),
            "2d": ConfigurationPlan(spatial_dims=2, patch_size=[16, 16], batch_size=4, features_per_stage=[4, 8],
                                    strides=[[1, 1], [2, 2]], kernel_sizes=[[3, 3], [3, 3]], slice_axis=2),
        },
    )


def _make_workdir(root, n_cases: int = 6):
    plan = tiny_plan()
    root.mkdir(parents=True, exist_ok=True)
    plan.save(root / "plan.json")
    rng = np.random.default_rng(0)
    grid = np.indices((20, 20, 18)).transpose(1, 2, 3, 0)
    for i in range(n_cases):
        centre = rng.uniform(6, 12, size=3)
        label = np.zeros((20, 20, 18), np.uint8)
        label[np.linalg.norm(grid - centre, axis=-1) < 4] = 1
        x = int(rng.integers(1, 10))
        label[x : x + 5, 14:18, 2:7] = 2
        image = (label * 1.5 + rng.normal(0, 0.5, label.shape)).astype(np.float32)
        case = preprocess_case([Volume(image, np.eye(4))], plan, Volume(label, np.eye(4)))
        write_case(root, f"case_{i:02d}", case, {})
    return root


@pytest.fixture(scope="session")
def _tiny_template(tmp_path_factory):
    return _make_workdir(tmp_path_factory.mktemp("tiny") / "work")


@pytest.fixture
def tiny_workdir(_tiny_template, tmp_path):
    """A fresh copy of the tiny WORKDIR per test (training writes into it)."""
    return shutil.copytree(_tiny_template, tmp_path / "work")


@pytest.fixture
def dead_tracking_uri(monkeypatch):
    """MLFLOW_TRACKING_URI pointing at a local port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


TINY_OVERRIDES = {"epochs": 2, "iterations_per_epoch": 3, "validate_every": 1, "num_workers": 0, "precision": "fp32"}


@pytest.fixture
def tiny_config():
    """load_train_config(configs/<name>.yaml) with tiny-run overrides (2 epochs x 3 iterations, fp32)."""
    from medseg.training.config import load_train_config

    def make(name: str = "unet3d", **extra):
        return load_train_config(f"configs/{name}.yaml", {**TINY_OVERRIDES, **extra})

    return make


@pytest.fixture(scope="session")
def _hippocampus_template(tmp_path_factory):
    """The shipped Hippocampus sample (12 real MR crops) preprocessed: the real plan, 4 stages, 32-256 features."""
    from medseg.cli.main import run_argv

    out = tmp_path_factory.mktemp("hippocampus") / "work"
    run_argv(["preprocess", "data/sample/hippocampus", "--out", str(out)])
    return out


@pytest.fixture
def hippocampus_workdir(_hippocampus_template, tmp_path):
    """A fresh copy of the preprocessed Hippocampus sample per test."""
    return shutil.copytree(_hippocampus_template, tmp_path / "hippocampus")
