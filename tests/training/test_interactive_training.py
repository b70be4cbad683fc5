"""Promptable training: simulated prompts per sample, a bundle that takes them, and a session that
answers a click with the trained network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medseg.training.interactive import InteractiveOptions, PromptSimulator
from medseg.training.loop import train


def test_the_simulator_builds_one_object_target_and_prompt_channels_deterministically():
    labels = np.zeros((2, 16, 16, 16), np.uint8)
    labels[0, 2:8, 2:8, 2:8] = 1
    labels[0, 10:14, 10:14, 10:14] = 2
    labels[1, 4:12, 4:12, 4:12] = 2
    labels[1, 0, 0, 0] = 255
    image = torch.randn(2, 1, 16, 16, 16)

    def model(inputs):  # predicts nothing: every corrective click is a positive one inside the object
        return torch.zeros(inputs.shape[0], 2, *inputs.shape[2:])

    runs = []
    for _ in range(2):
        simulator = PromptSimulator(InteractiveOptions(max_corrective_clicks=3), (1.0, 1.0, 1.0), seed=3)
        runs.append(simulator(model, image, torch.from_numpy(labels)))
    (inputs, target), (inputs2, target2) = runs
    assert torch.equal(inputs, inputs2) and torch.equal(target, target2)
    assert inputs.shape == (2, 1 + 4, 16, 16, 16) and torch.equal(inputs[:, :1], image)
    for b in range(2):
        t = target[b].numpy()
        obj = t == 1
        assert obj.any() and set(np.unique(labels[b][obj])) <= {1, 2} and len(set(np.unique(labels[b][obj]))) == 1
        prompted = (inputs[b, 1] > 0).numpy() | (inputs[b, 3] > 0).numpy()
        assert (prompted & obj).any(), "the first prompt (click or box) falls on the object"
        assert not (inputs[b, 2] > 0).numpy()[~obj].all()
    assert target[1, 0, 0, 0] == 255, "unannotated voxels stay ignored"


@pytest.mark.slow
def test_a_tiny_promptable_model_trains_and_answers_a_click(tiny_config, tiny_workdir, dead_tracking_uri, tmp_path, capsys):
    from medseg.api import load_model
    from medseg.bundle import load_bundle
    from medseg.interactive.session import InteractiveSession
    from medseg.volume import Volume

    config = tiny_config("interactive3d", epochs=12, iterations_per_epoch=10)
    result = train(tiny_workdir, config, preset_name="interactive3d", fold=0, echo=lambda *a: None)
    bundle = load_bundle(result.bundle_dir)
    assert bundle.plan.prompt_channels == 4 and bundle.labels == {0: "background", 1: "object"}
    assert bundle.build_network()(torch.zeros(1, 5, 16, 16, 16)).shape == (1, 2, 16, 16, 16)

    grid = np.indices((20, 20, 18)).transpose(1, 2, 3, 0)
    ball = np.linalg.norm(grid - [10, 10, 9], axis=-1) < 4
    image = (ball * 1.5 + np.random.default_rng(5).normal(0, 0.5, ball.shape)).astype(np.float32)
    volume = Volume(image, np.eye(4))
    session = InteractiveSession(load_model(result.bundle_dir, device="cpu", precision="fp32"), volume)
    session.add_point((10.0, 10.0, 9.0))
    mask = np.asarray(session.mask().array) > 0
    assert session.mask().same_geometry(volume)
    dice = 2 * (mask & ball).sum() / (mask.sum() + ball.sum())
    assert dice > 0.6, f"one click on a ball like the training objects gives Dice {dice:.2f}"

    # the same click through `medseg infer --prompt`, on the scan's grid; a plain infer is refused in one line
    from medseg.cli.main import main
    from medseg.io import read_volume, write_volume

    scan = write_volume(volume, tmp_path / "scan.nii.gz")
    (tmp_path / "prompts.json").write_text(json.dumps({"space": "voxel", "objects": [{"label": 7, "points": [{"xyz": [10, 10, 9]}]}]}))
    code = run_cli(main, "infer", scan, "--model", result.bundle_dir, "--prompt", tmp_path / "prompts.json",
                   "-o", tmp_path / "mask.nii.gz", "--precision", "fp32")
    assert code == 0
    written = np.asarray(read_volume(tmp_path / "mask.nii.gz").array)
    assert set(np.unique(written)) == {0, 7} and np.array_equal(written == 7, mask)
    assert run_cli(main, "infer", scan, "--model", result.bundle_dir, "-o", tmp_path / "plain.nii.gz") == 1
    assert "promptable" in capsys.readouterr().err and not (tmp_path / "plain.nii.gz").exists()


def run_cli(main, *args) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
