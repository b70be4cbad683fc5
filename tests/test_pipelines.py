import functools
import subprocess
import sys

import numpy as np
import pytest

from medseg.errors import ConfigError
from medseg.io import read_volume, write_volume
from medseg.pipelines import load_pipeline, prepare_steps, run_pipeline, step_argv
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


def test_steps_call_the_library_not_the_command_line(tmp_path, monkeypatch):
    """A step is the library call its CLI command makes, with the options as keyword arguments
    (YAML strings coerced to the parameter's type); no argv is parsed."""
    import medseg.cli.main
    import medseg.commands

    monkeypatch.setattr(medseg.cli.main, "run_argv", lambda argv: pytest.fail(f"argv chained: {argv}"))
    calls = []

    @functools.wraps(medseg.commands.train_command)  # the real signature: what the step's options are checked against
    def record(*args, **kwargs):
        calls.append((args, kwargs))

    monkeypatch.setattr(medseg.commands, "train_command", record)
    pipeline = write_pipeline(
        tmp_path / "p.yaml",
        [{"command": "train", "args": ["${out}"], "options": {"config": "c.yaml", "fold": 0, "max-minutes": "${m}", "resume": "true"}}],
        {"out": "w", "m": "2.5"},
    )
    lines = []
    run_pipeline(load_pipeline(pipeline), lambda line="", err=False: lines.append(line))
    (args, kwargs), = calls
    assert args == ("w",)
    assert kwargs["config"] == "c.yaml" and kwargs["fold"] == "0" and kwargs["max_minutes"] == 2.5 and kwargs["resume"] is True
    assert callable(kwargs["echo"]) and "done: w" in lines


def test_every_step_is_checked_before_any_runs(tmp_path):
    """A typo in a later step's option stops the pipeline before the first step writes anything."""
    write_volume(Volume(np.zeros((2, 3, 4), np.int16), np.eye(4)), tmp_path / "in.nii.gz")
    steps = [
        {"command": "convert", "args": [f"{tmp_path}/in.nii.gz", f"{tmp_path}/out.nrrd"]},
        {"command": "train", "args": ["w"], "options": {"config": "c.yaml", "minuts": 1}},
    ]
    pipeline = write_pipeline(tmp_path / "p.yaml", steps, {"out": "x"})
    with pytest.raises(ConfigError, match=r"p\.yaml: step 2 \(train\): unknown option 'minuts'; did you mean 'max_minutes'\?"):
        run_pipeline(load_pipeline(pipeline), lambda *a, **k: None)
    assert not (tmp_path / "out.nrrd").exists()
    result = run_cli("run", pipeline)
    assert result.returncode == 1 and "did you mean 'max_minutes'" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "out.nrrd").exists()


@pytest.mark.parametrize(
    "step, message",
    [
        ({"command": "inferr", "args": ["a"]}, r"no pipeline step 'inferr'; did you mean 'infer'\?"),
        ({"command": "preprocess", "args": ["d"], "options": {"out": "w", "workers": "two"}}, r"Invalid value for '--workers': 'two' is not valid"),
        ({"command": "evaluate", "options": {"pred": "p"}}, r"missing 'ref'; give it under options"),
        ({"command": "infer", "args": ["scans"], "options": {"model": None}}, r"missing 'model'; give it under options \(or as an arg\)"),
        ({"command": "convert", "args": ["a", "b", "c"]}, r"3 args given, but medseg convert takes 2 \(input, output\)"),
        ({"command": "info", "args": ["a"], "options": {"input": "b"}}, r"'input' is already given as an arg"),
        ({"command": "run", "args": ["other.yaml"]}, r"pipelines do not nest"),
    ],
)
def test_bad_steps_are_one_line_config_errors(tmp_path, step, message):
    pipeline = load_pipeline(write_pipeline(tmp_path / "p.yaml", [step], {"out": "x"}))
    with pytest.raises(ConfigError, match=message):
        prepare_steps(pipeline)


def test_set_typo_is_an_error_naming_the_file_with_a_did_you_mean():
    """`medseg run pipelines/demo.yaml --set minuts=1` must not retrain with the default 5 minutes."""
    from pathlib import Path

    demo = Path(__file__).resolve().parents[1] / "pipelines" / "demo.yaml"
    with pytest.raises(ConfigError, match=r"demo\.yaml: --set minuts: no such variable in this pipeline; did you mean 'minutes'\?"):
        load_pipeline(demo, {"minuts": "1"})
    result = run_cli("run", demo, "--set", "minuts=1")
    assert result.returncode == 1 and "did you mean 'minutes'" in result.stderr and "demo.yaml" in result.stderr
    assert "===" not in result.stdout  # no step started


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
    prepared = prepare_steps(pipeline)  # and every step maps onto its library call
    assert [p.spec.function for p in prepared][:2] == ["medseg.commands:preprocess_command", "medseg.commands:train_command"]
