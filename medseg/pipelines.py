"""Pipelines as data: a YAML list of medseg steps run one after the other.

    name: demo
    variables: {workdir: work/demo}          # ${workdir} is substituted everywhere below
    steps:
      - command: preprocess
        args: [data/sample/hippocampus]       # positional arguments
        options: {out: "${workdir}"}          # the command's options: out -> --out, max_minutes or max-minutes
    summary:                                  # printed when every step has succeeded
      - "masks: ${workdir}/predictions"

Each step calls the library function its CLI command calls (`STEPS`: `medseg.commands.preprocess_command`,
`medseg.api.infer`, ...), args as its positional parameters and options as its keyword arguments
under the CLI's option names, so a step does exactly what the command does. Every step is checked
before any runs (unknown steps or options, with a did-you-mean; values of the wrong type; missing
ones). A failing step stops the pipeline with its own one-line error.
"""

from __future__ import annotations

import difflib
import inspect
import pkgutil
import string
import typing
from dataclasses import dataclass, field
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
        raise ConfigError(f"{path}: --set {unknown[0]}: no such variable in this pipeline{_did_you_mean(unknown[0], declared)} "
                          f"(it defines: {known})")
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


@dataclass(frozen=True)
class StepSpec:
    """How a pipeline step calls the library: `function` ("module:name") gets the step's args as its
    positional parameters and its options as keyword arguments, under the CLI's option names."""

    function: str
    forwards_to: tuple[str, ...] = ()  # functions whose keyword parameters `function`'s **kwargs passes on
    negated: dict[str, str] = field(default_factory=dict)  # CLI flag -> the keyword it negates (no_postprocess)
    echo_as: str = "echo"  # the parameter receiving the printed lines
    finish: str | None = None  # "module:name"(result, echo) run after the step (prints, raises on failures)
    progress: str | None = None  # "module:name" of the command's progress display, passed as progress=Display()


STEPS: dict[str, StepSpec] = {
    "preprocess": StepSpec("medseg.commands:preprocess_command", progress="medseg.cli.preprocess:_Bar"),
    "train": StepSpec("medseg.commands:train_command", progress="medseg.cli.train:_Progress"),
    "infer": StepSpec("medseg.api:infer", forwards_to=("medseg.api:load_model",), negated={"no_postprocess": "postprocess"},
                      echo_as="progress", finish="medseg.commands:finish_infer"),
    "evaluate": StepSpec("medseg.commands:evaluate_command"),
    "convert": StepSpec("medseg.commands:convert_command"),
    "info": StepSpec("medseg.commands:info_command"),
}
_INTERNAL = {"echo", "progress"}  # callbacks the pipeline fills, never options


@dataclass
class PreparedStep:
    """One step, checked: the function and the arguments it will be called with."""

    number: int
    step: PipelineStep
    spec: StepSpec
    args: list[Any]
    kwargs: dict[str, Any]


def _function_at(reference: str) -> Callable:
    return pkgutil.resolve_name(reference)


def _parameters(spec: StepSpec) -> tuple[list[inspect.Parameter], dict[str, inspect.Parameter]]:
    """(positional parameters in order, keyword parameters by name) of the step's function(s)."""
    function = _function_at(spec.function)
    params = list(inspect.signature(function).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in _INTERNAL]
    keywords = {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in _INTERNAL}
    for other in spec.forwards_to:
        for p in inspect.signature(_function_at(other)).parameters.values():
            if p.kind == p.KEYWORD_ONLY and p.name not in _INTERNAL and p.name not in keywords:
                keywords[p.name] = p
    for flag, target in spec.negated.items():
        negated = keywords.pop(target)
        keywords[flag] = negated.replace(name=flag, default=not negated.default)
    return positional, keywords


def _annotation(function: Callable, parameter: inspect.Parameter) -> Any:
    """The parameter's type, for coercing YAML strings ("5" -> 5.0); Any when it cannot be evaluated."""
    annotation = parameter.annotation
    for _ in range(2):  # `from __future__ import annotations` strings, and quoted names inside them
        if not isinstance(annotation, str):
            break
        try:
            annotation = eval(annotation, getattr(function, "__globals__", {}), vars(typing))  # noqa: S307 (our own source)
        except Exception:
            return Any
    return Any if annotation is inspect.Parameter.empty else annotation


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    from pydantic import TypeAdapter, ValidationError

    if annotation is Any:
        return value
    try:
        adapter = TypeAdapter(annotation)
    except Exception:  # a type pydantic has no schema for: the function checks it itself
        return value
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # fold: 0 where a string is expected
            try:
                return adapter.validate_python(str(value))
            except ValidationError:
                pass
        message = exc.errors()[0]["msg"] if exc.errors() else str(exc).splitlines()[0]
        raise ConfigError(f"{where}: {value!r} is not valid ({message})") from None


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def prepare_steps(pipeline: Pipeline) -> list[PreparedStep]:
    """Check every step before any runs: a step medseg knows, its args and options those of the
    command (dashes or underscores), their values of the right type, no required one missing."""
    prepared = []
    for number, step in enumerate(pipeline.steps, start=1):
        where = f"{pipeline._source}: step {number} ({step.command})"
        if step.command == "run":  # a pipeline naming itself would recurse without end
            raise ConfigError(f"{where}: pipelines do not nest; copy the other pipeline's steps here instead of `run`")
        spec = STEPS.get(step.command)
        if spec is None:
            raise ConfigError(f"{where}: no pipeline step '{step.command}'{_did_you_mean(step.command, STEPS)} "
                              f"(steps: {', '.join(STEPS)})")
        function = _function_at(spec.function)
        positional, keywords = _parameters(spec)
        if len(step.args) > len(positional):
            raise ConfigError(f"{where}: {len(step.args)} args given, but medseg {step.command} takes "
                              f"{len(positional)} ({', '.join(p.name for p in positional) or 'none'}); name the rest under options")
        values: dict[str, Any] = {p.name: a for p, a in zip(positional, step.args)}
        for key, value in step.options.items():
            name = key.replace("-", "_")
            if name not in keywords or name in values:
                known = sorted(keywords)
                why = f"'{name}' is already given as an arg" if name in values else f"unknown option '{key}'{_did_you_mean(name, known)}"
                raise ConfigError(f"{where}: {why} (valid options: {', '.join(known)})")
            values[name] = value
        params = {p.name: p for p in positional} | keywords
        missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and values.get(n) is None]
        if missing:
            arg = " (or as an arg)" if missing[0] in (p.name for p in positional) else ""
            raise ConfigError(f"{where}: missing '{missing[0]}'; give it under options{arg}")
        kwargs = {}
        for name, value in values.items():
            if value is None:
                continue
            target = spec.negated.get(name)
            source = _function_at(spec.forwards_to[0]) if spec.forwards_to and name not in inspect.signature(function).parameters else function
            coerced = _coerce(value, _annotation(source, params[name]), f"{where}: Invalid value for '--{name.replace('_', '-')}'")
            kwargs[target or name] = (not coerced) if target else coerced
        args = []
        for p in positional:  # in order while given; any after a gap go as keywords
            if p.name not in kwargs:
                break
            args.append(kwargs.pop(p.name))
        prepared.append(PreparedStep(number, step, spec, args, kwargs))
    return prepared


def run_pipeline(pipeline: Pipeline, echo: Callable[..., None], dry_run: bool = False) -> None:
    """Check every step, then call each step's library function in turn; print a header (the
    equivalent command line) before each and the summary after. A failing step raises its error."""
    prepared = prepare_steps(pipeline)
    total = len(prepared)
    for item in prepared:
        echo(f"\n=== {pipeline.name} {item.number}/{total}: medseg {' '.join(step_argv(item.step))}")
        if dry_run:
            continue
        callbacks = {item.spec.echo_as: echo}
        if item.spec.progress:  # the same bar (or per-stage lines) as the command shows
            callbacks["progress"] = _function_at(item.spec.progress)()
        result = _function_at(item.spec.function)(*item.args, **item.kwargs, **callbacks)
        if item.spec.finish:
            _function_at(item.spec.finish)(result, echo)
    if pipeline.summary and not dry_run:
        echo("")
        for line in pipeline.summary:
            echo(line)
