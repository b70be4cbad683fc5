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


def default_sigint() -> None:
    """`preexec_fn` for a `medseg` subprocess that a test interrupts with SIGINT: a shell's
    background job (`nohup ... &`, as a CI runner may start the suite) ignores SIGINT, children
    inherit that, and Python then never raises KeyboardInterrupt."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
