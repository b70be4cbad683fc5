"""Predictor: bundle -> masks on the input's exact grid; bad input gives one clear line."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import InputError
from medseg.inference.predictor import Predictor
from medseg.volume import Volume


def oblique_case(shape=(30, 26, 12), seed=1):
    """A blob volume on an oblique, anisotropic LPS-like grid; returns (image, true mask)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1) * np.array([2.0, 2.0, 4.0])
    mask = np.linalg.norm(grid - np.array([30, 26, 24]), axis=-1) < 12
    image = (100 + 20 * rng.normal(size=shape) + 200 * mask).astype(np.int16)
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[-c, -s, 0], [s, -c, 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot * np.array([2.0, 2.0, 4.0])
    affine[:3, 3] = [10, -20, 30]
    return Volume(image, affine), mask


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_prediction_is_on_the_input_grid_and_finds_the_blob(tiny_bundle):
    image, mask = oblique_case()
    predictor = Predictor([tiny_bundle], device="cpu", precision="fp32")
    out = predictor.predict([image], probabilities=True)
    assert out.labels.array.shape == image.array.shape and out.labels.array.dtype == np.uint8
    assert np.array_equal(out.labels.affine, image.affine)
    assert out.probabilities.array.shape == (2, *image.array.shape)
    np.testing.assert_allclose(out.probabilities.array.sum(0), 1, atol=1e-4)
    assert dice(out.labels.array == 1, mask) > 0.8


def test_bf16_agrees_with_fp32_and_tta_with_two_folds_still_finds_the_blob(tiny_bundle):
    image, mask = oblique_case(seed=2)
    fp32 = Predictor([tiny_bundle], device="cpu", precision="fp32").predict([image]).labels.array
    bf16 = Predictor([tiny_bundle], device="cpu", precision="bf16").predict([image]).labels.array
    assert dice(fp32 == 1, bf16 == 1) > 0.98
    both = Predictor([tiny_bundle, tiny_bundle], device="cpu", precision="fp32", tta=True).predict([image]).labels.array
    assert dice(both == 1, mask) > 0.8


def test_instances_and_postprocessing_steps_apply(tiny_bundle):
    image, _ = oblique_case(seed=3)
    out = Predictor([tiny_bundle], device="cpu", precision="fp32", extra_steps=[{"name": "instances", "params": {}}]).predict([image])
    assert out.labels.array.dtype == np.uint16 and out.labels.array.max() >= 1


def test_wrong_channel_count_and_2d_image_are_refused(tiny_bundle):
    predictor = Predictor([tiny_bundle], device="cpu", precision="fp32")
    image, _ = oblique_case()
    with pytest.raises(InputError, match="2 channel.*expects 1"):
        predictor.predict([image, image])
    flat = Volume(np.zeros((40, 40, 1), np.int16), np.eye(4))
    with pytest.raises(InputError, match="2D image.*model is 3D"):
        predictor.predict([flat])


def test_2d_and_3d_bundles_of_one_plan_ensemble_each_configuration_weighing_the_same(tiny_bundle, tiny_2d_bundle):
    import torch

    from medseg.preprocess.case import preprocess_case

    image, mask = oblique_case(seed=7)
    alone = {name: Predictor([b], device="cpu", precision="fp32") for name, b in (("3d", tiny_bundle), ("2d", tiny_2d_bundle))}
    assert dice(alone["2d"].predict([image]).labels.array == 1, mask) > 0.7
    x = torch.from_numpy(preprocess_case([image], alone["3d"].bundle.plan).image)
    expected = (alone["3d"].logits_to_probabilities(x) + alone["2d"].logits_to_probabilities(x)) / 2
    # two 3D folds and one 2D: each configuration's folds are averaged first, then the configurations
    both = Predictor([tiny_bundle, tiny_2d_bundle, tiny_bundle], device="cpu", precision="fp32")
    assert [(config.spatial_dims, len(nets)) for config, nets in both.groups] == [(3, 2), (2, 1)]
    torch.testing.assert_close(both.logits_to_probabilities(x), expected, atol=1e-5, rtol=0)
    out = both.predict([image])
    assert np.array_equal(out.labels.affine, image.affine) and dice(out.labels.array == 1, mask) > 0.8
    flat = Volume(np.zeros((40, 40, 1), np.int16), np.eye(4))
    with pytest.raises(InputError, match="model is 3D"):  # the 3D member needs a volume
        both.predict([flat])


def test_bundles_preprocessed_differently_are_not_ensembled(tiny_bundle, tiny_2d_bundle, tmp_path):
    import json
    import shutil

    from medseg.errors import BundleError

    other = shutil.copytree(tiny_2d_bundle, tmp_path / "blobs2d_2mm")
    plan = json.loads((other / "plan.json").read_text())
    plan["target_spacing"] = [2.0, 2.0, 2.0]
    (other / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(BundleError, match="blobs2d_2mm: its preprocessing or labels differ from .*same plan"):
        Predictor([tiny_bundle, other], device="cpu", precision="fp32")


def test_one_window_per_pass_on_cpu_by_default_and_batching_changes_nothing(tiny_bundle):
    image, _ = oblique_case(seed=4)
    single = Predictor([tiny_bundle], device="cpu", precision="fp32")
    assert single.batch_size == 1
    batched = Predictor([tiny_bundle], device="cpu", precision="fp32", batch_size=3)
    a = single.predict([image], probabilities=True).probabilities.array
    b = batched.predict([image], probabilities=True).probabilities.array
    np.testing.assert_allclose(a, b, atol=1e-5)  # instance norm is per sample: batching is only speed


def test_logit_buffer_goes_to_the_gpu_only_when_it_fits():
    import torch

    from medseg.inference.predictor import accumulation_device

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert accumulation_device(cpu, (512, 512, 400), 3, torch.float32, free_bytes=0) == cpu
    # 100^3 voxels x (3 classes x 4 B + 4 B weight sum) = 16 MB: fits in 40 MB free, not in 20 MB
    assert accumulation_device(cuda, (100, 100, 100), 3, torch.float32, free_bytes=40_000_000) == cuda
    assert accumulation_device(cuda, (100, 100, 100), 3, torch.float32, free_bytes=20_000_000) == cpu
    # a float16 buffer is 10 MB: fits in 20 MB free
    assert accumulation_device(cuda, (100, 100, 100), 3, torch.float16, free_bytes=20_000_000) == cuda


def test_in_place_softmax_and_float16_buffer_agree_with_the_defaults(tiny_bundle):
    import torch

    from medseg.inference.predictor import softmax_

    logits = torch.randn(4, 7, 5, 3) * 20
    torch.testing.assert_close(softmax_(logits.clone()), torch.softmax(logits, dim=0))
    image, _ = oblique_case(seed=5)
    fp32 = Predictor([tiny_bundle], device="cpu", precision="fp32").predict([image], probabilities=True)
    fp16 = Predictor([tiny_bundle], device="cpu", precision="fp32", accumulate_dtype=torch.float16).predict([image], probabilities=True)
    np.testing.assert_allclose(fp16.probabilities.array, fp32.probabilities.array, atol=5e-3)
    assert dice(fp16.labels.array == 1, fp32.labels.array == 1) > 0.99


def _relabelled_bundle(bundle, dest, labels: dict[int, str]):
    """A copy of `bundle` whose plan and bundle.json give its channels other label values."""
    import json
    import shutil

    shutil.copytree(bundle, dest)
    for name in ("bundle.json", "plan.json"):
        data = json.loads((dest / name).read_text())
        data["labels"] = {str(k): v for k, v in labels.items()}
        if name == "bundle.json":
            data["label_codes"] = {}
        else:
            data.pop("label_codes", None)
        (dest / name).write_text(json.dumps(data))
    return dest


def test_label_values_are_written_not_channel_indices(tiny_bundle, tmp_path):
    import nibabel as nib
    from cli_helpers import run

    from medseg.io import write_volume

    image, _ = oblique_case(seed=6)
    plain = Predictor([tiny_bundle], device="cpu", precision="fp32").predict([image]).labels.array
    assert set(np.unique(plain).tolist()) == {0, 1}
    relabelled = _relabelled_bundle(tiny_bundle, tmp_path / "b1000", {0: "background", 1000: "blob"})
    for probabilities in (False, True):  # streamed and full-probability inversions
        out = Predictor([relabelled], device="cpu", precision="fp32").predict([image], probabilities=probabilities).labels
        assert out.array.dtype == np.uint16 and np.array_equal(out.affine, image.affine)
        assert np.array_equal(out.array == 1000, plain == 1) and set(np.unique(out.array).tolist()) == {0, 1000}
    # through the CLI: a uint16 NIfTI of values 0 and 1000 on the input's grid
    write_volume(image, tmp_path / "scan.nii.gz")
    assert run("infer", tmp_path / "scan.nii.gz", "--model", relabelled, "-o", tmp_path / "mask.nii.gz", "--device", "cpu",
               "--precision", "fp32", "--no-postprocess") == 0
    written = nib.load(str(tmp_path / "mask.nii.gz"))
    assert written.get_data_dtype() == np.uint16 and np.allclose(written.affine, image.affine, atol=1e-5)
    assert np.array_equal(np.asarray(written.dataobj), np.where(plain == 1, 1000, 0))
