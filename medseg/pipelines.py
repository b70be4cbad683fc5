"""Pipelines as data: a YAML list of medseg commands run one after the other.

    name: demo
    variables: {workdir: work/demo}          # ${workdir} is substituted everywhere below
    steps:
      - command: preprocess
        args: [data/sample/hippocampus]       # positional arguments
        options: {out: "${workdir}"}          # --out work/demo; true -> a flag; lists repeat the option
    summary:                                  # printed when every step has succeeded
      - "masks: ${workdir}/predictions"

Each step runs the same command a user would type, in this process, so a pipeline cannot do
anything the CLI cannot. A failing step stops the pipeline with its own one-line error.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from medseg.errors import ConfigError


class PipelineStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: str
    args: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)


class Pipeline(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    variables: dict[str, str] = Field(default_factory=dict)
    steps: list[PipelineStep]
    summary: list[str] = Field(default_factory=list)
    _source: str = PrivateAttr(default="pipeline")  # the YAML file it was read from, for error messages


def load_pipeline(path: Path, overrides: dict[str, str] | None = None) -> Pipeline:
    """Read a pipeline YAML and substitute ${variables} (overrides win over the file's values)."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such pipeline file; see pipelines/ for the shipped ones") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with 'name' and 'steps', found {type(raw).__name__}")
    declared = raw.get("variables") or {}
    if not isinstance(declared, dict):
        raise ConfigError(f"{path}: 'variables' must be a mapping NAME: VALUE, found {type(declared).__name__}")
    unknown = sorted(set(overrides or {}) - set(declared))
    if unknown:
        known = ", ".join(sorted(declared)) or "none"
        raise ConfigError(f"{path}: --set {unknown[0]}: no such variable in this pipeline (it defines: {known}); check the spelling")
    variables = _resolve_variables({**declared, **(overrides or {})})
    cyclic = sorted(k for k, v in variables.items() if any(f"${{{name}}}" in v or f"${name}" in v.split() for name in variables))
    if cyclic:
        raise ConfigError(f"{path}: variables {', '.join(cyclic)} refer to each other in a cycle; give one of them a plain value")
    try:
        substituted = _substitute(raw, variables)
        substituted["variables"] = variables
        pipeline = Pipeline.model_validate(substituted)
        pipeline._source = str(path)
        return pipeline
    except KeyError as exc:
        raise ConfigError(f"{path}: variable ${{{exc.args[0]}}} is used but not defined; add it under 'variables'") from None
    except ValueError as exc:  # pydantic.ValidationError
        first = str(exc).splitlines()
        raise ConfigError(f"{path}: invalid pipeline ({'; '.join(first[:3])})") from None


def _resolve_variables(variables: dict[str, Any]) -> dict[str, str]:
    """Let variables use each other (test_images: ${data}/imagesTs), whatever their order."""
    resolved = {k: str(v) for k, v in variables.items()}
    for _ in range(len(resolved)):
        resolved = {k: string.Template(v).safe_substitute(resolved) for k, v in resolved.items()}
    return resolved


def _substitute(value: Any, variables: dict[str, str]) -> Any:
    if isinstance(value, str):
        return string.Template(value).substitute(variables)
    if isinstance(value, list):
        return [_substitute(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, variables) for k, v in value.items()}
    return value


def step_argv(step: PipelineStep) -> list[str]:
    """The command line a user would type for `step` (without the program name)."""
    argv = [step.command, *map(str, step.args)]
    for key, value in step.options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


def check_steps(pipeline: Pipeline, options_of: Callable[[str], set[str] | None]) -> None:
    """Refuse, before any step runs, a step whose command or options medseg does not know.

    options_of(command): the option names ("--out", ...) `medseg COMMAND` accepts, or None when there
    is no such command.
    """
    for number, step in enumerate(pipeline.steps, start=1):
        where = f"{pipeline._source}: step {number} ({step.command})"
        if step.command == "run":  # a pipeline naming itself would recurse without end
            raise ConfigError(f"{where}: pipelines do not nest; copy the other pipeline's steps here instead of `run`")
        known = options_of(step.command)
        if known is None:
            raise ConfigError(f"{where}: no command 'medseg {step.command}'; use one of those `medseg --help` lists")
        for key in step.options:
            flag = "--" + key.replace("_", "-")
            if flag not in known:
                names = ", ".join(sorted(k[2:] for k in known if k.startswith("--") and k != "--help"))
                raise ConfigError(f"{where}: unknown option '{key}' (medseg {step.command} has no {flag}); valid options: {names}")


def run_pipeline(pipeline: Pipeline, run_command: Callable[[list[str]], None], echo: Callable[[str], None]) -> None:
    """Run every step through `run_command(argv)`; print a header before each and the summary after."""
    total = len(pipeline.steps)
    for number, step in enumerate(pipeline.steps, start=1):
        argv = step_argv(step)
        echo(f"\n=== {pipeline.name} {number}/{total}: medseg {' '.join(argv)}")
        run_command(argv)
    if pipeline.summary:
        echo("")
        for line in pipeline.summary:
            echo(line)
