"""Export fixtures: the inference tests' tiny blob bundle, its exports, and a tiny fold-0 workdir for int8."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from module_loader import load_module

REPO = Path(__file__).resolve().parents[2]
_inference = load_module(REPO / "tests" / "inference" / "conftest.py", "_export_inference_fixtures")
_training = load_module(REPO / "tests" / "training" / "conftest.py", "_export_training_fixtures")




@pytest.fixture(scope="session")
def blob_bundle(tmp_path_factory) -> Path:
    return _inference.train_tiny_bundle(tmp_path_factory.mktemp("export_bundle") / "blobs")


@pytest.fixture(scope="session")
def onnx_export(blob_bundle, tmp_path_factory) -> Path:
    """The blob bundle exported to ONNX (with its per-window benchmark)."""
    from medseg.export import export_bundle

    return export_bundle(blob_bundle, tmp_path_factory.mktemp("exports") / "blobs-onnx", format="onnx").path


@pytest.fixture(scope="session")
def fold_workdir(tmp_path_factory):
    """(workdir, bundle): the training tests' tiny 3-class workdir (6 cases) with a 2-fold splits.json,
    and a small U-Net trained on fold 0's training cases, written as that fold's bundle."""
    from medseg.bundle import write_bundle
    from medseg.models import build_model
    from medseg.preprocess.cache import list_cached_cases, load_case
    from medseg.preprocess.plan import Plan

    work = _training._make_workdir(tmp_path_factory.mktemp("int8") / "work", n_cases=6)
    ids = list_cached_cases(work)
    (work / "splits.json").write_text(json.dumps([{"train": ids[:4], "val": ids[4:]}, {"train": ids[2:], "val": ids[:2]}]))
    plan = Plan.load(work / "plan.json")
    cfg = plan.configurations["3d"]
    torch.manual_seed(0)
    net = build_model("unet3d", cfg, in_channels=1, num_classes=3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    cases = [load_case(work, c) for c in ids[:4]]
    rng = np.random.default_rng(0)
    for _ in range(60):
        xs, ys = [], []
        for case in (cases[rng.integers(4)] for _ in range(2)):
            o = [int(rng.integers(0, s - 16 + 1)) for s in case.label.shape]
            sl = tuple(slice(a, a + 16) for a in o)
            xs.append(torch.from_numpy(np.array(case.image[(slice(None), *sl)])))
            ys.append(torch.from_numpy(case.label[sl].astype(np.int64)))
        loss = torch.nn.functional.cross_entropy(net(torch.stack(xs)), torch.stack(ys))
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    bundle = write_bundle(work / "models" / "unet3d" / "fold_0", model_name="unet3d", configuration="3d", fold=0, model_options={},
                          plan=plan, config={"steps": 60}, labels=plan.labels, postprocessing=[], precision="fp32",
                          state_dict_best=state, state_dict_last=state)
    return work, bundle
