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


def _parse_folds(text: str) -> list[int | None]:
    """'all' -> the five folds in turn; 'none' -> [None] (every case, no validation: fold_none);
    '0' -> [0]; '0,2' -> [0, 2]."""
    from medseg.errors import ConfigError

    if text == "all":
        return list(range(5))
    if text == "none":
        return [None]
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() and int(p) < 5 for p in parts):
        raise ConfigError(f"--fold {text!r}: expected 0-4, a comma-separated list of them, 'all' (five folds) or 'none' (every case)")
    return [int(p) for p in parts]


def command(
    workdir: Path = typer.Argument(..., help="The folder `medseg preprocess` wrote (plan.json, preprocessed/)."),
    config: Path = typer.Option(..., "--config", "-c", help="A YAML preset, e.g. configs/unet3d.yaml."),
    fold: str = typer.Option("0", "--fold", help="0-4, a list such as 0,2 (trained in turn), 'all' (the five folds in turn) or 'none' (every case, no validation: a final model)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the fold's training_state.pt, exactly."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Total epochs (on a finished run: extend it)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", min=0, help="Stop after the epoch that passes this many minutes, with a checkpoint."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    deterministic: bool = typer.Option(False, "--deterministic", help="Deterministic kernels, so resumed runs repeat exactly."),
    precision: Optional[Precision] = typer.Option(None, "--precision", help="auto picks bf16 + channels-last on CPUs with bf16 units."),
    iterations_per_epoch: Optional[int] = typer.Option(None, "--iterations-per-epoch", min=1),
) -> None:
    """Train a model on a preprocessed WORKDIR; each fold's bundle goes to WORKDIR/models/<preset>/fold_<k>/."""
    import os

    from medseg.api import train
    from medseg.errors import ConfigError
    from medseg.training.config import load_train_config

    folds = _parse_folds(fold)
    overrides = {"seed": seed,
                 "iterations_per_epoch": iterations_per_epoch, "deterministic": True if deterministic else None}
    cfg = load_train_config(config, overrides)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    echo = (lambda s: typer.echo(s)) if rank == 0 else (lambda s: None)
    stopped_any = False
    for k in folds:
        try:
            result = train(workdir, cfg, k, preset_name=config.stem, resume=resume, epochs=epochs,
                           precision=precision.value if precision else None, max_minutes=max_minutes,
                           echo=echo, progress=_Progress())
        except KeyboardInterrupt:  # Ctrl-C: the run is marked KILLED and the last epoch's checkpoint stays
            if rank == 0:
                typer.echo("medseg: interrupted; resume with --resume", err=True)
            raise SystemExit(130) from None
        if world > 1:  # lets users (and the tests) check that every rank ended with the same weights
            typer.echo(f"rank {rank}/{world}: final weights sha256 {result.weights_sha256}", err=True)
        if rank == 0:
            if result.val_dice:
                typer.echo("validation Dice: " + ", ".join(f"{n} {v:.4f}" for n, v in result.val_dice.items()))
            typer.echo(f"bundle: {result.bundle_dir}")
        stopped_any = stopped_any or result.stopped_early
    if fold == "all" and rank == 0 and not stopped_any:  # one post-processing choice over every fold's validation
        from medseg.postprocess.select import select_pooled

        select_pooled(workdir, config.stem, folds, echo=echo)
