"""The cache: a run killed with SIGKILL midway and rerun equals an uninterrupted run; reruns skip
unchanged cases; cached cases load as the architecture's CachedCase."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from medseg.preprocess.cache import list_cached_cases, load_case
from medseg.preprocess.run import run_preprocess

N_CASES = 10


def run_cli(dataset, out, **kwargs):
    cmd = [sys.executable, "-m", "medseg", "preprocess", str(dataset), "--out", str(out), "--workers", "1"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def assert_same_cache(a, b):
    assert list_cached_cases(a) == list_cached_cases(b)
    for cid in list_cached_cases(a):
        x, y = load_case(a, cid), load_case(b, cid)
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.label, y.label)
        assert x.properties == y.properties
        assert x.locations.keys() == y.locations.keys()
        for k in x.locations:
            np.testing.assert_array_equal(x.locations[k], y.locations[k])
    assert json.loads((a / "plan.json").read_text()) == json.loads((b / "plan.json").read_text())


@pytest.mark.slow
def test_killed_run_completes_on_rerun(msd_factory, tmp_path):
    # spacings differ per case so every case is resampled (slow enough to be killed midway)
    spacings = [(0.9 + 0.04 * i, 1.0, 1.1) for i in range(N_CASES)]
    dataset = msd_factory(N_CASES, shape=(80, 72, 56), spacings=spacings)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = run_cli(dataset, killed)
    deadline = time.monotonic() + 120
    while len(list_cached_cases(killed)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list_cached_cases(killed))
    assert 0 < done_at_kill < N_CASES, "the run was not killed midway; make the cases larger"

    rerun = run_cli(dataset, killed)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read().decode()
    assert "unchanged" in rerun.stdout.read().decode()
    assert not [p for p in (killed / "preprocessed").iterdir() if p.name.startswith(".")]
    assert run_cli(dataset, clean).wait(timeout=300) == 0
    assert_same_cache(killed, clean)


def test_rerun_skips_unchanged_and_redoes_changed(msd_factory, tmp_path, write_nifti):
    dataset = msd_factory(3)
    first = run_preprocess(dataset, tmp_path / "w")
    assert first.processed == ["case_000", "case_001", "case_002"]
    again = run_preprocess(dataset, tmp_path / "w")
    assert again.processed == [] and again.skipped_unchanged == ["case_000", "case_001", "case_002"]
    image = np.random.default_rng(1).normal(3.0, 0.5, (24, 20, 16)).astype(np.float32)  # a changed scan (not a 2-valued map)
    image[5:9] += 6.0
    write_nifti(image, dataset / "imagesTr" / "case_001.nii.gz")
    third = run_preprocess(dataset, tmp_path / "w")
    assert third.processed == ["case_001"]


def test_cached_case_layout(msd_factory, tmp_path):
    dataset = msd_factory(2)
    run_preprocess(dataset, tmp_path / "w", workers=2)
    for name in ("plan.json", "fingerprint.json", "manifest.json"):
        assert (tmp_path / "w" / name).is_file()
    case = load_case(tmp_path / "w", "case_000")
    assert case.image.dtype == np.float32 and case.image.ndim == 4 and case.image.shape[0] == 1
    assert isinstance(case.image, np.memmap)
    assert case.label.dtype == np.uint8 and case.label.shape == case.image.shape[1:]
    assert sorted(case.locations) == [1, 2]
    for k, idx in case.locations.items():
        assert idx.shape[1] == 3 and np.all(case.label[tuple(idx.T)] == k)
    assert len(case.locations[1]) == np.sum(case.label == 1)  # fewer than 10000: all kept
    fp = json.loads((tmp_path / "w" / "fingerprint.json").read_text())
    assert fp["cases"][0]["voxels_per_class"]["1"] == 6 * 7 * 6


@pytest.mark.slow
def test_dicom_series_manifest_with_label_in_other_voxel_order(real_data, tmp_path):
    from medseg.io import read_volume
    from medseg.inference.invert import invert_to_original

    series = real_data / "dicom" / "totalsegmentator" / "ct_series_4slices"
    seg = real_data / "dicom" / "totalsegmentator" / "ct_series_4slices_reference_seg.nii.gz"
    (tmp_path / "m.csv").write_text(f"case_id,image,label,modality\nct1,{series},{seg},CT\n")
    run_preprocess(tmp_path / "m.csv", tmp_path / "w")
    case = load_case(tmp_path / "w", "ct1")
    back = invert_to_original(np.asarray(case.label), case.properties)
    image = read_volume(series)
    np.testing.assert_allclose(back.affine, image.affine)
    expected = read_volume(seg).reoriented(image.orientation)
    np.testing.assert_array_equal(back.array, expected.array)
