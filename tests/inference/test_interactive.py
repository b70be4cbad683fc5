"""Promptable segmentation: prompts in mm land on the right voxels of an oblique, flipped real
scan; bad prompts fail in one line; the zoom window grows; undo is exact; the simulated user is
deterministic."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import tiny_plan
from medseg.errors import InputError
from medseg.interactive.prompts import ObjectPrompts, Point, encode, load_prompts
from medseg.interactive.session import InteractiveSession
from medseg.interactive.simulate import corrective_click, first_prompt, interior_point, pick_object
from medseg.preprocess.plan import Plan
from medseg.volume import Volume

OBLIQUE = "tcia_mr_oblique/11-T1post-18670"


def binary_plan(spacing=(3.0, 3.0, 3.0)) -> Plan:
    return tiny_plan(spacing).model_copy(update={"labels": {0: "background", 1: "object"}})


@pytest.mark.slow
def test_a_click_in_mm_lands_on_its_voxel_of_an_oblique_flipped_scan(real_data):
    from medseg.inference.invert import channels_on_original
    from medseg.io import read_volume
    from medseg.preprocess.case import preprocess_case

    volume = read_volume(real_data / "dicom" / OBLIQUE)
    assert volume.orientation != "RAS" and not np.allclose(volume.direction, np.diag(np.diag(volume.direction)))
    plan = binary_plan((1.5, 1.5, 1.5))
    case = preprocess_case([volume], plan)
    ijk = np.array(volume.spatial_shape) // 3
    ras = (volume.affine @ np.r_[ijk, 1.0])[:3]
    lps = ras * [-1, -1, 1]
    grids = []
    for space, xyz in (("RAS", ras), ("LPS", lps), ("voxel", ijk)):
        prompts = ObjectPrompts(points=[Point(tuple(xyz))], space=space)
        grids.append(encode(prompts, volume.affine, volume.spatial_shape, np.asarray(case.properties.resampled_affine),
                            case.image.shape[1:], radius_mm=3.0))
    assert np.array_equal(grids[0], grids[1]) and np.array_equal(grids[0], grids[2])
    back = np.asarray(channels_on_original((grids[0][0] > 0).astype(np.uint8), case.properties).array) > 0
    assert back[tuple(ijk)], "the clicked voxel lies inside the encoded ball, mapped back to the scan"
    centre = np.argwhere(back).mean(0)
    assert np.linalg.norm((centre - ijk) * volume.spacing) < 1.5  # mm


def test_prompts_outside_the_scan_or_malformed_fail_in_one_line(tmp_path):
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    outside = ObjectPrompts(points=[Point((500.0, 0.0, 0.0))])
    with pytest.raises(InputError) as info:
        encode(outside, affine, (10, 10, 10), affine, (10, 10, 10), source="prompts.json")
    assert "outside the scan" in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "p.json").write_text(json.dumps({"objects": [{"label": 1, "points": [{"xyz": [1, 2]}]}]}))
    with pytest.raises(InputError, match="three numbers"):
        load_prompts(tmp_path / "p.json")
    (tmp_path / "q.json").write_text(json.dumps({"space": "IJK", "objects": [{"points": [{"xyz": [1, 2, 3]}]}]}))
    with pytest.raises(InputError, match="space 'IJK' is unknown"):
        load_prompts(tmp_path / "q.json")


def scan_with_ball(radius_vox: float) -> Volume:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in (96, 96, 48)], indexing="ij"), -1)
    ball = np.linalg.norm(grid - [48, 48, 24], axis=-1) < radius_vox
    rng = np.random.default_rng(0)
    return Volume((rng.normal(0, 0.1, ball.shape) + 3 * ball + 1).astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))


class BrightVoxels:
    """A stand-in network: everything bright in the (normalised) image channel is the object."""

    def __init__(self):
        self.threshold = None

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        return inputs[0] > self.threshold

    def calibrate(self, session) -> None:
        low, high = np.median(session.image[0]), session.image[0].max()
        self.threshold = (low + high) / 2


def test_the_zoom_window_grows_until_the_object_fits_and_undo_is_exact():
    volume = scan_with_ball(30)  # much larger than one 32 x 32 x 16 patch
    network = BrightVoxels()
    session = InteractiveSession(None, volume, plan=binary_plan(), predict_fn=network)
    network.calibrate(session)
    session.add_point((48 * 3.0, 48 * 3.0, 24 * 3.0))
    window = session.last_window
    assert any(s.stop - s.start > p for s, p in zip(window, (32, 32, 16))), "the window grew past one patch"
    first = session.mask()
    truth = np.asarray(volume.array) > 2.0
    assert (np.asarray(first.array) > 0).sum() == pytest.approx(truth.sum(), rel=0.1)
    assert first.same_geometry(volume)
    before = session.current.copy()
    session.add_point((10 * 3.0, 10 * 3.0, 10 * 3.0), positive=False)
    session.undo()
    assert np.array_equal(session.current, before) and len(session.prompts.points) == 1
    assert np.array_equal(session.mask().array, first.array)


def test_a_small_object_stays_in_one_patch():
    network = BrightVoxels()
    session = InteractiveSession(None, scan_with_ball(4), plan=binary_plan(), predict_fn=network)
    network.calibrate(session)
    session.add_box((40 * 3.0, 40 * 3.0, 18 * 3.0), (56 * 3.0, 56 * 3.0, 30 * 3.0))
    assert tuple(s.stop - s.start for s in session.last_window) == (32, 32, 16)


def test_the_simulated_user_is_deterministic_with_a_seed():
    label = np.zeros((30, 30, 20), np.uint8)
    label[5:15, 5:15, 5:15] = 1
    label[20:25, 20:25, 5:10] = 2
    runs = []
    for _ in range(2):
        rng = np.random.default_rng(7)
        target = pick_object(label, rng)
        prompt = first_prompt(target, rng)
        prediction = np.zeros_like(target)
        prediction[tuple(slice(a, a + 3) for a in np.argwhere(target).min(0))] = True
        prediction[0:2, 0:2, 0:2] = True
        runs.append((target.copy(), prompt, corrective_click(prediction, target, rng)))
    assert np.array_equal(runs[0][0], runs[1][0]) and runs[0][1:] == runs[1][1:]
    click = corrective_click(np.zeros_like(label, bool), label == 1, np.random.default_rng(0))
    assert click["positive"] and click["click"] == interior_point(label == 1, np.random.default_rng(0))
    assert label[click["click"]] == 1
    wrong = (label == 1) | (label == 2)
    fp = corrective_click(wrong, label == 1, np.random.default_rng(0))
    assert not fp["positive"] and label[fp["click"]] == 2


def test_a_first_pass_mask_seeds_the_session():
    volume = scan_with_ball(6)
    seed = volume.with_array((np.asarray(volume.array) > 2.0).astype(np.uint8))
    session = InteractiveSession(None, volume, plan=binary_plan(), predict_fn=lambda x: x[4] > 0.5, seed=seed)
    assert np.array_equal(np.asarray(session.mask().array) > 0, np.asarray(seed.array) > 0)
    session.add_point((48 * 3.0, 48 * 3.0, 24 * 3.0))  # this stand-in network returns the previous-mask channel
    assert np.array_equal(np.asarray(session.mask().array) > 0, np.asarray(seed.array) > 0)
