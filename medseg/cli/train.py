"""`medseg train WORKDIR --config configs/unet3d.yaml [--fold 0|..|4|0,1,..|all|none] ...`"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from medseg.precision import Precision


class _Progress:
    """A one-line progress bar with ETA on stderr (only when stderr is a terminal)."""

    def __init__(self):
        self.tty = sys.stderr.isatty()
        self.t0 = None

    def __call__(self, it: int, total: int, loss: float) -> None:
        if self.t0 is None or it == 1:
            self.t0 = time.monotonic()
        if not self.tty:
            return
        elapsed = time.monotonic() - self.t0
        eta = elapsed / it * (total - it)
        filled = int(30 * it / total)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {it}/{total} loss {loss:.4f} ETA {eta:5.0f} s ")
        if it == total:
            sys.stderr.write("\r" + " " * 80 + "\r")
        sys.stderr.flush()


def command(
    workdir: Path = typer.Argument(..., help="The folder `medseg preprocess` wrote (plan.json, preprocessed/)."),
    config: Path = typer.Option(..., "--config", "-c", help="A YAML preset, e.g. configs/unet3d.yaml."),
    fold: str = typer.Option("0", "--fold", help="0-4, a list such as 0,2 (trained in turn), 'all' (the five folds in turn) or 'none' (every case, no validation: a final model)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the fold's training_state.pt, exactly."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Total epochs (on a finished run: extend it)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", min=0, help="Stop after the epoch that passes this many minutes, with a checkpoint."),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="Wall clock for the whole run (90s, 60m, 1.5h or plain minutes): epochs sized and re-sized so the LR schedule, final validation and bundle end within it. Not with --epochs/--max-minutes."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (weights, sampling, augmentation); default: the config's seed."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for torch (config: threads); default: one per core, waiting threads sleep (see README)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a model already trained in this fold's folder (else refused; --resume continues it)."),
    deterministic: bool = typer.Option(False, "--deterministic", help="Deterministic kernels, so resumed runs repeat exactly."),
    precision: Optional[Precision] = typer.Option(None, "--precision", help="auto picks bf16 + channels-last on CPUs with bf16 units."),
    iterations_per_epoch: Optional[int] = typer.Option(None, "--iterations-per-epoch", min=1, help="Training iterations (batches) per epoch; default: the config's."),
) -> None:
    """Train a model on a preprocessed WORKDIR; each fold's bundle goes to WORKDIR/models/<preset>/fold_<k>/."""
    import os

    from medseg.commands import train_command
    from medseg.training.preempt import PREEMPTED_EXIT, Preempted

    try:
        train_command(workdir, config=config, fold=fold, resume=resume, epochs=epochs, max_minutes=max_minutes, seed=seed,
              deterministic=deterministic, precision=precision.value if precision else None,
              iterations_per_epoch=iterations_per_epoch, echo=typer.echo, progress=_Progress(), time_budget=time_budget,
              overwrite=overwrite, threads=threads)
    except KeyboardInterrupt:  # Ctrl-C: the run is marked KILLED and the last epoch's checkpoint stays
        if int(os.environ.get("RANK", "0")) == 0:
            typer.echo("medseg: interrupted; resume with --resume", err=True)
        raise SystemExit(130) from None
    except Preempted as exc:  # SIGTERM / SIGUSR1: checkpoint written; the same command resumes (docs/distributed.md)
        if int(os.environ.get("RANK", "0")) == 0:
            typer.echo(f"medseg: {exc}", err=True)
        raise SystemExit(PREEMPTED_EXIT) from None
