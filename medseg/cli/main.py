"""The `medseg` Typer app and its entry point.

Command modules import only typer and the standard library at top level, so `medseg --help`
answers instantly; heavy imports (torch, SimpleITK, pydicom...) live inside the commands.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

import typer

from medseg import __version__
from medseg.cli import convert, info, run
from medseg.cli import models as models_cli
from medseg.cli import preprocess as preprocess_cmd
from medseg.cli import train as train_cmd
from medseg.cli import evaluate as evaluate_cmd
from medseg.cli import ui as ui_cmd
from medseg.cli import infer as infer_cmd
from medseg.cli import export as export_cmd
from medseg.cli import pacs as pacs_cli
from medseg.cli import evaluate_interactive as evaluate_interactive_cmd

app = typer.Typer(
    name="medseg",
    help="Segment volumetric medical scans end to end: preprocess, train, infer, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # a DICOM header in a local variable is patient data
    rich_markup_mode=None,  # click's plain help: wraps the help text, never cuts option names at 80 columns as rich's table does
    add_completion=False,
)
app.command("convert")(convert.command)
app.command("info")(info.command)
app.command("models")(models_cli.command)
app.command("run")(run.command)
app.command("preprocess")(preprocess_cmd.command)
app.command("train")(train_cmd.command)
app.command("infer")(infer_cmd.command)
app.command("evaluate")(evaluate_cmd.command)
app.command("ui")(ui_cmd.command)
app.command("export")(export_cmd.command)
app.command("evaluate-interactive")(evaluate_interactive_cmd.command)
app.add_typer(pacs_cli.app, name="pacs")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks (may be given anywhere on the line)."),
) -> None:
    """medseg: DICOM/NIfTI in, masks out, every run tracked in MLflow."""


def run_argv(argv: list[str]) -> None:
    """Run one medseg command in this process (used by pipelines); errors propagate."""
    from medseg.errors import ConfigError

    try:
        code = app(args=argv, prog_name="medseg", standalone_mode=False)
    except _click_exceptions() as exc:  # a usage error in the step's arguments
        raise ConfigError(f"medseg {argv[0]}: {exc.format_message()}") from None
    except SystemExit as exc:
        code = exc.code
    if code not in (0, None):
        raise ConfigError(f"medseg {' '.join(argv)} exited with code {code}")


def _click_exceptions() -> tuple[type, ...]:
    """Click's ClickException classes: Typer >= 0.2x raises those of its vendored copy (typer._click)."""
    import click

    classes = [click.ClickException]
    try:
        from typer import _click

        classes.append(_click.exceptions.ClickException)
    except (ImportError, AttributeError):
        pass
    return tuple(classes)


def click_command(name: str):
    """The click command behind `medseg NAME`, or None (for checking a pipeline step's options)."""
    import typer.main

    return typer.main.get_command(app).commands.get(name)


def one_line(exc: BaseException) -> str:
    """The message of `exc` as one line.

    torch's DataLoader re-raises a worker's exception as the same class holding "Caught X in DataLoader
    worker process N.\nOriginal Traceback ...\nmodule.X: message"; the original message is its last line.
    """
    text = str(exc).strip()
    if "\n" not in text:
        return text
    lines = [line for line in text.splitlines() if line.strip()]
    if "Original Traceback" in text and lines:
        last = lines[-1].strip()
        name = type(exc).__name__
        for prefix in (f"{type(exc).__module__}.{name}: ", f"{name}: "):
            if last.startswith(prefix):
                return last[len(prefix):]
        return last
    return " ".join(line.strip() for line in lines)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: bad input becomes one line on stderr and exit code 1."""
    from medseg.errors import MedsegError

    from medseg.threads import prepare_environment

    prepare_environment()  # before any command imports torch (OpenMP reads it once, at start)
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        code = app(args=args, prog_name="medseg", standalone_mode=False)
    except SystemExit:
        raise
    except _click_exceptions() as exc:  # a usage error (unknown option, missing argument): exit 1 as documented, not click's 2
        ctx = getattr(exc, "ctx", None)
        where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        typer.echo(f"medseg: error: {one_line(Exception(exc.format_message()))}{where}", err=True)
        sys.exit(1)
    except MedsegError as exc:
        if debug:
            raise
        typer.echo(f"medseg: error: {one_line(exc)}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("medseg: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug, not bad input: still one line unless --debug
        if debug:
            raise
        typer.echo(f"medseg: internal error: {type(exc).__name__}: {one_line(exc)} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)
    if code not in (0, None):  # typer.Exit(code) inside a command
        sys.exit(code)
