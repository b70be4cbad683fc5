"""Run the medseg CLI in-process from tests and get its exit code."""

from __future__ import annotations

from medseg.cli.main import main


def run(*args) -> int:
    """`medseg ARGS...` in this process (so session fixtures stay warm); returns the exit code."""
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
