"""`medseg run PIPELINE.yaml`: run a pipeline of medseg commands stored as data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def command(
    pipeline: Annotated[Path, typer.Argument(help="A pipeline YAML file, e.g. pipelines/demo.yaml.")],
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="Override a pipeline variable: --set workdir=/tmp/run (repeatable).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the commands without running them.")] = False,
) -> None:
    """Run the steps of a pipeline (preprocess, train, infer, evaluate ...) one after the other."""
    from medseg.errors import ConfigError
    from medseg.pipelines import check_steps, load_pipeline, run_pipeline

    overrides = {}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected NAME=VALUE, e.g. --set workdir=/tmp/run")
        overrides[key] = value
    loaded = load_pipeline(pipeline, overrides)
    check_steps(loaded, _options_of)
    step = iter(range(1, len(loaded.steps) + 1))

    def run_command(argv: list[str]) -> None:
        number = next(step)
        if dry_run:
            return
        from medseg.cli.main import run_argv

        try:
            run_argv(argv)
        except ConfigError as exc:
            prefix = f"medseg {argv[0]}: "
            if str(exc).startswith(prefix):  # a usage error (run_argv): say where, in which pipeline file
                raise ConfigError(f"{pipeline}: step {number} ({argv[0]}): {str(exc)[len(prefix):]}") from None
            raise

    run_pipeline(loaded, run_command, typer.echo)


def _options_of(command_name: str) -> set[str] | None:
    """The option names `medseg COMMAND_NAME` accepts (None: no such command)."""
    from medseg.cli.main import click_command

    command = click_command(command_name)
    if command is None:
        return None
    return {opt for param in command.params for opt in (*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])) if opt.startswith("-")}
