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
    from medseg.pipelines import load_pipeline, run_pipeline

    overrides = {}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected NAME=VALUE, e.g. --set workdir=/tmp/run")
        overrides[key] = value
    loaded = load_pipeline(pipeline, overrides)

    def run_command(argv: list[str]) -> None:
        if dry_run:
            return
        from medseg.cli.main import run_argv

        run_argv(argv)

    run_pipeline(loaded, run_command, typer.echo)
