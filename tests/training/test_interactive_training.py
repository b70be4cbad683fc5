"""Promptable training: simulated prompts per sample, a bundle that takes them, and a session that
answers a click with the trained network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cli_helpers import run
from medseg.training.interactive import InteractiveOptions, PromptSimulator
from medseg.training.loop import train
from medseg.volume import Volume


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


def test_a_held_out_class_is_never_an_object_and_stays_background():
    labels = np.zeros((8, 12, 12, 12), np.uint8)
    labels[:, 1:5, 1:5, 1:5] = 1
    labels[:, 7:11, 7:11, 7:11] = 2
    labels[3] = np.where(labels[3] == 1, 0, labels[3])  # a sample holding only the held-out class

    def model(inputs):
        return torch.zeros(inputs.shape[0], 2, *inputs.shape[2:])

    simulator = PromptSimulator(InteractiveOptions(max_corrective_clicks=1, exclude_labels=[2]), (1.0, 1.0, 1.0),
                                seed=0, exclude_channels=(2,))
    inputs, target = simulator(model, torch.randn(8, 1, 12, 12, 12), torch.from_numpy(labels))
    target = target.numpy()
    assert not target[labels == 2].any(), "held-out voxels are background in every target"
    assert all(target[b][labels[b] == 1].all() or not target[b].any() for b in range(8))
    assert not target[3].any() and not inputs[3, 1:].any(), "nothing to prompt when only the held-out class is there"


@pytest.mark.slow
def test_a_budgeted_promptable_run_reserves_no_time_for_validations_it_never_runs(tiny_config, tiny_workdir, dead_tracking_uri):
    # a promptable model is scored by evaluate-interactive, not by the epochs' sliding-window validation:
    # a plan that reserved that time (the fold has validation cases) left a third of a 45-minute budget unused
    config = tiny_config("interactive3d", epochs=2, iterations_per_epoch=2)
    lines: list[str] = []
    result = train(tiny_workdir, config, preset_name="interactive3d", fold=0, time_budget="20s", echo=lines.append)
    plans = result.budget["plans"]
    assert plans and all(p["val_s"] == 0.0 for p in plans), plans
    assert not any("val Dice" in line or "validate every" in line for line in lines), lines


@pytest.mark.slow
def test_a_tiny_promptable_model_trains_and_answers_a_click(tiny_config, tiny_workdir, dead_tracking_uri, tmp_path, capsys):
    from medseg.api import load_model
    from medseg.bundle import load_bundle
    from medseg.interactive.session import InteractiveSession

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
    from medseg.io import read_volume, write_volume

    scan = write_volume(volume, tmp_path / "scan.nii.gz")
    (tmp_path / "prompts.json").write_text(json.dumps({"space": "voxel", "objects": [{"label": 7, "points": [{"xyz": [10, 10, 9]}]}]}))
    code = run("infer", scan, "--model", result.bundle_dir, "--prompt", tmp_path / "prompts.json",
                   "-o", tmp_path / "mask.nii.gz", "--precision", "fp32")
    assert code == 0
    written = np.asarray(read_volume(tmp_path / "mask.nii.gz").array)
    assert set(np.unique(written)) == {0, 7} and np.array_equal(written == 7, mask)
    assert run("infer", scan, "--model", result.bundle_dir, "-o", tmp_path / "plain.nii.gz") == 1
    assert "promptable" in capsys.readouterr().err and not (tmp_path / "plain.nii.gz").exists()

    # the simulated user on the fold's validation cases: a curve per object, one click at a time
    write_raw_manifest(tiny_workdir, tmp_path / "raw")
    out = tmp_path / "interactive.json"
    assert run("evaluate-interactive", result.bundle_dir, "--workdir", tiny_workdir, "--clicks", "3", "-o", out) == 0
    body = json.loads(out.read_text())
    val = json.loads((tiny_workdir / "splits.json").read_text())[0]["val"]
    assert {r["case_id"] for r in body["rows"]} == set(val)
    assert all(len(r["dice"]) == 3 and len(r["seconds"]) == 3 for r in body["rows"])
    summary = body["summary"]
    assert summary["objects"] == len(body["rows"]) and 1 <= summary["noc85"] <= 4
    assert summary["dice_auc"] == pytest.approx(np.mean([r["dice"] for r in body["rows"]]))
    assert (tmp_path / "interactive_dice_per_click.png").is_file()

    # the same clicks on its OpenVINO export (prompt channels included): the same masks, to rounding
    exported = tmp_path / "exported"
    assert run("export", result.bundle_dir, "--format", "openvino", "-o", exported, "--no-benchmark") == 0
    assert run("export", result.bundle_dir, "--int8", "--calibration", tiny_workdir, "-o", tmp_path / "q") == 1
    assert "promptable model is exported in float32 only" in capsys.readouterr().err
    out_ov = tmp_path / "interactive_ov.json"
    assert run("evaluate-interactive", exported, "--workdir", tiny_workdir, "--clicks", "3", "--runtime", "openvino",
               "-o", out_ov) == 0
    rows_ov = json.loads(out_ov.read_text())["rows"]
    assert [r["case_id"] for r in rows_ov] == [r["case_id"] for r in body["rows"]]
    assert np.allclose([r["dice"] for r in rows_ov], [r["dice"] for r in body["rows"]], atol=0.02)

    # refinement of a first pass (item 4): a "semantic model" that finds the box (label 2) exactly and misses the ball
    from medseg.interactive.evaluate import evaluate_interactive

    class BoxOnly:
        def __init__(self, manifest):
            self.labels = {np.asarray(read_volume(c["images"][0]).array).tobytes(): c["label"] for c in manifest["cases"]}

        def segment(self, volumes):
            reference = np.asarray(read_volume(self.labels[np.asarray(volumes[0].array).tobytes()]).array)
            return type("Result", (), {"labels": volumes[0].with_array(np.where(reference == 2, 2, 0).astype(np.uint8))})

    predictor = load_model(result.bundle_dir, device="cpu", precision="fp32")
    report = evaluate_interactive(predictor, tiny_workdir, clicks=2, refine=BoxOnly(json.loads((tiny_workdir / "manifest.json").read_text())))
    assert {(r["label"], r["dice_seed"]) for r in report.rows} == {(1, 0.0), (2, 1.0)}
    assert report.summary()["dice_seed"] == pytest.approx(0.5) and all(len(r["dice"]) == 2 for r in report.rows)


def write_raw_manifest(workdir, folder) -> None:
    """The cached cases as scans (their preprocessed grid) plus a manifest.json, as preprocess leaves one."""
    from medseg.io import write_volume
    from medseg.preprocess.cache import load_case

    folder.mkdir()
    cases = []
    for case_dir in sorted((workdir / "preprocessed").rglob("image.npy")):
        cid = case_dir.parent.name
        case = load_case(workdir, cid, mmap=False)
        affine = np.asarray(case.properties.resampled_affine)
        image = write_volume(Volume(case.image[0], affine), folder / f"{cid}.nii.gz")
        label = write_volume(Volume(case.label.astype(np.uint8), affine), folder / f"{cid}_seg.nii.gz")
        cases.append({"case_id": cid, "images": [str(image)], "label": str(label)})
    manifest = {"name": "Tiny", "channel_names": ["MR"], "modalities": ["MR"],
                "labels": {"0": "background", "1": "ball", "2": "box"}, "cases": cases}
    (workdir / "manifest.json").write_text(json.dumps(manifest))


