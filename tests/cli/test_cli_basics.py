"""The CLI as users run it: a real subprocess, exit codes, one-line errors, no partial output."""

import subprocess
import sys
import time

import numpy as np

from medseg.io import read_volume, write_volume
from medseg.volume import Volume, affine_from_geometry


def medseg(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "medseg", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_help_is_fast_and_lists_commands():
    start = time.perf_counter()
    result = medseg("--help")
    elapsed = time.perf_counter() - start
    assert result.returncode == 0
    assert "convert" in result.stdout and "info" in result.stdout
    assert elapsed < 3.0  # interpreter start included; the import itself must stay light
    imports = subprocess.run(
        [sys.executable, "-c", "import sys, medseg.cli.main; print(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    for heavy in ("torch", "monai", "SimpleITK", "pydicom", "mlflow", "nibabel", "scipy"):
        assert heavy not in imports, f"{heavy} imported at CLI start-up"


def test_version():
    from medseg import __version__

    result = medseg("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"medseg {__version__}"


def test_convert_and_info(tmp_path):
    affine = affine_from_geometry((0.9, 0.9, 2.0), (1.0, 2.0, 3.0), np.diag([-1.0, 1.0, -1.0]))
    source = write_volume(Volume(np.arange(60, dtype=np.int16).reshape(3, 4, 5), affine), tmp_path / "in.nii.gz")
    result = medseg("convert", source, tmp_path / "out.mha")
    assert result.returncode == 0, result.stderr
    back = read_volume(tmp_path / "out.mha")
    np.testing.assert_array_equal(back.array, np.arange(60).reshape(3, 4, 5))
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)
    info = medseg("info", tmp_path / "out.mha", "--json")
    assert info.returncode == 0, info.stderr
    import json

    report = json.loads(info.stdout)
    assert report["shape"] == [3, 4, 5] and report["orientation"] == "LAI"
    assert report["intensity_range"] == [0.0, 59.0]


def test_bad_input_is_one_line_with_exit_code_1_and_no_output(tmp_path):
    noise = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    good = write_volume(Volume(noise, np.eye(4)), tmp_path / "good.nii.gz")
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases = [
        (["convert", truncated, tmp_path / "a.nrrd"], "truncated.nii.gz", tmp_path / "a.nrrd"),
        (["convert", good, tmp_path / "nofolder" / "b.nii.gz"], "does not exist", tmp_path / "nofolder" / "b.nii.gz"),
        (["convert", tmp_path / "absent.nii.gz", tmp_path / "c.nii.gz"], "no such file", tmp_path / "c.nii.gz"),
        (["convert", good, tmp_path / "d.png"], "cannot write", tmp_path / "d.png"),
    ]
    for args, expected, output in cases:
        result = medseg(*args)
        assert result.returncode == 1, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("medseg: error:") and expected in lines[0], result.stderr
        assert "Traceback" not in result.stderr
        assert not output.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_debug_shows_the_traceback(tmp_path):
    result = medseg("convert", tmp_path / "absent.nii.gz", tmp_path / "x.nii.gz", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_pipeline_mistakes_are_one_line_naming_the_file_before_any_step_runs(tmp_path):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    typo = medseg("run", repo / "pipelines" / "demo.yaml", "--set", "minuts=1", "--set", f"workdir={tmp_path / 'w'}")
    assert typo.returncode == 1 and "Traceback" not in typo.stderr
    lines = typo.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medseg: error:") and "demo.yaml" in lines[0] and "minutes" in lines[0], typo.stderr
    pipeline = tmp_path / "two.yaml"
    pipeline.write_text(
        "name: two\n"
        "steps:\n"
        f"  - {{command: convert, args: [{tmp_path / 'absent.nii.gz'}, {tmp_path / 'out.nii.gz'}]}}\n"
        "  - {command: info, args: [x], options: {jsn: true}}\n"
    )
    result = medseg("run", pipeline)
    assert result.returncode == 1 and "Usage" not in result.stderr and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "two.yaml: step 2 (info): unknown option 'jsn'" in lines[0], result.stderr
    assert "=== two 1/2" not in result.stdout  # refused before step 1 ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.yaml"]
