import subprocess
import sys

import numpy as np
import pytest

from medseg.errors import ConfigError
from medseg.io import read_volume, write_volume
from medseg.pipelines import load_pipeline, step_argv
from medseg.volume import Volume


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "medseg", *map(str, args)], capture_output=True, text=True, timeout=120)


def write_pipeline(path, steps, variables):
    import yaml

    path.write_text(yaml.safe_dump({"name": "t", "variables": variables, "steps": steps, "summary": ["done: ${out}"]}, sort_keys=False))
    return path


def test_options_become_the_flags_a_user_would_type(tmp_path):
    pipeline = write_pipeline(
        tmp_path / "p.yaml",
        [{"command": "train", "args": ["${out}"], "options": {"max_minutes": 3, "resume": True, "debug_x": False, "folds": [0, 1]}}],
        {"out": "w"},
    )
    step = load_pipeline(pipeline).steps[0]
    assert step_argv(step) == ["train", "w", "--max-minutes", "3", "--resume", "--folds", "0", "--folds", "1"]
    assert load_pipeline(pipeline, {"out": "other"}).steps[0].args == ["other"]


def test_pipeline_runs_its_steps_in_order(tmp_path):
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    write_volume(Volume(array, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "in.nii.gz")
    pipeline = write_pipeline(
        tmp_path / "p.yaml",
        [
            {"command": "convert", "args": ["${dir}/in.nii.gz", "${dir}/mid.nrrd"]},
            {"command": "convert", "args": ["${dir}/mid.nrrd", "${out}"]},
        ],
        {"dir": str(tmp_path), "out": str(tmp_path / "final.mha")},
    )
    result = run_cli("run", pipeline)
    assert result.returncode == 0, result.stderr
    assert "1/2" in result.stdout and "2/2" in result.stdout and f"done: {tmp_path / 'final.mha'}" in result.stdout
    np.testing.assert_array_equal(read_volume(tmp_path / "final.mha").array, array)


def test_failing_step_stops_the_pipeline_with_one_line(tmp_path):
    pipeline = write_pipeline(
        tmp_path / "p.yaml",
        [
            {"command": "convert", "args": ["${dir}/absent.nii.gz", "${dir}/a.nii.gz"]},
            {"command": "convert", "args": ["${dir}/a.nii.gz", "${dir}/b.nii.gz"]},
        ],
        {"dir": str(tmp_path), "out": "x"},
    )
    result = run_cli("run", pipeline)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "absent.nii.gz" in result.stderr
    assert "2/2" not in result.stdout


def test_bad_pipelines_are_config_errors(tmp_path):
    bad_var = write_pipeline(tmp_path / "v.yaml", [{"command": "info", "args": ["${nope}"]}], {"out": "x"})
    with pytest.raises(ConfigError, match=r"\$\{nope\}"):
        load_pipeline(bad_var)
    (tmp_path / "k.yaml").write_text("name: t\nsteps:\n  - command: info\n    typo: 1\n")
    with pytest.raises(ConfigError, match="invalid pipeline"):
        load_pipeline(tmp_path / "k.yaml")
    with pytest.raises(ConfigError, match="no such pipeline"):
        load_pipeline(tmp_path / "missing.yaml")
    result = run_cli("run", bad_var)
    assert result.returncode == 1 and "nope" in result.stderr


def test_variables_may_use_each_other(tmp_path):
    pipeline = write_pipeline(tmp_path / "p.yaml", [{"command": "info", "args": ["${images}"]}],
                              {"images": "${data}/imagesTs", "data": "d", "out": "x"})
    assert load_pipeline(pipeline).steps[0].args == ["d/imagesTs"]
    assert load_pipeline(pipeline, {"data": "/other"}).steps[0].args == ["/other/imagesTs"]


@pytest.mark.parametrize("name", ["demo", "hippocampus"])
def test_shipped_pipelines_use_only_real_commands_and_options(name):
    """Every step of pipelines/*.yaml names a medseg command and only options that command has."""
    from pathlib import Path

    import typer.main

    from medseg.cli.main import app

    root = Path(__file__).resolve().parents[1]
    commands = typer.main.get_command(app).commands
    pipeline = load_pipeline(root / "pipelines" / f"{name}.yaml")
    for step in pipeline.steps:
        assert step.command in commands, step.command
        known = {opt for param in commands[step.command].params for opt in param.opts}
        flags = [a for a in step_argv(step) if a.startswith("--")]
        assert set(flags) <= known, (step.command, set(flags) - known)
        assert all("${" not in a for a in step_argv(step))
