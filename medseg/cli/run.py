"""`medseg run PIPELINE.yaml`: run a pipeline of medseg steps stored as data (medseg/pipelines.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def command(
    pipeline: Annotated[Path, typer.Argument(help="A pipeline YAML file, e.g. pipelines/demo.yaml.")],
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="Override a pipeline variable: --set workdir=/tmp/run (repeatable).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check every step and print each as the command line it equals, without running them.")] = False,
) -> None:
    """Run the steps of a pipeline (preprocess, train, infer, evaluate, convert, info) one after the other.

    Each step calls the library function of its command, with the step's options under the
    command's option names; every step is checked before the first runs.
    """
    from medseg.errors import ConfigError
    from medseg.pipelines import load_pipeline, run_pipeline

    overrides = {}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected NAME=VALUE, e.g. --set workdir=/tmp/run")
        overrides[key] = value
    run_pipeline(load_pipeline(pipeline, overrides), typer.echo, dry_run=dry_run)
