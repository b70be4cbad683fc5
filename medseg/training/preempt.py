"""Preemption: SIGTERM or SIGUSR1 (SLURM's warning before a preemption or the time limit) stops
training at the next iteration boundary with a checkpoint, and the next start resumes from it.

- `handling_signals()` (around `Trainer.fit`) turns either signal into a flag; every rank checks
  it after each optimizer step, all ranks together (`any_rank`: one signalled rank stops them all).
- The stop writes `training_state.pt` as after an epoch, plus `resume_at` = {epoch, iteration, the
  epoch's losses so far, averaged over ranks}; `Preempted` is raised and `medseg train` exits with `PREEMPTED_EXIT` (75,
  EX_TEMPFAIL: "try again").
- `auto_resume(state_path)`: a start finds a preemption checkpoint, or is a torchrun restart
  (`TORCHELASTIC_RESTART_COUNT` > 0, so `torchrun --max-restarts` continues after a crash) with a
  checkpoint: it resumes without --resume.
- Exact: patches depend only on (seed, epoch, sample index), so the resumed epoch takes the samples
  after `iteration`; the torch/numpy/python RNG states saved at the stop are restored after the
  resumed epoch's loader has drawn its seed, where the uninterrupted run stood at that step.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

PREEMPTED_EXIT = 75
SIGNALS = ("SIGTERM", "SIGUSR1")


class Preempted(Exception):
    """Training stopped on a signal with a resumable checkpoint (`medseg train` exits 75)."""

    def __init__(self, out_dir: Path, epoch: int, iteration: int, signal_name: str):
        self.out_dir, self.epoch, self.iteration, self.signal_name = Path(out_dir), epoch, iteration, signal_name
        super().__init__(f"{signal_name}: stopped at epoch {epoch + 1}, iteration {iteration}, with a checkpoint in "
                         f"{out_dir}; run the same command again to resume (it finds the checkpoint)")


class _Flag:
    def __init__(self):
        self.signal_name: str | None = None

    def __call__(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name


@contextmanager
def handling_signals():
    """Within: SIGTERM / SIGUSR1 set the returned flag instead of ending the process (main thread
    only; elsewhere nothing is installed). The previous handlers come back on exit."""
    flag = _Flag()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for name in SIGNALS:
            if hasattr(signal, name):
                previous[name] = signal.signal(getattr(signal, name), flag)
    try:
        yield flag
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


def requested(trainer) -> bool:
    """At an iteration boundary: whether any rank got a signal (every rank calls this each step)."""
    from medseg.training.distributed import any_rank

    flag = getattr(trainer, "preempt_flag", None)
    if flag is None:
        return False
    return any_rank(trainer.dist, flag.signal_name is not None)


def resume_point(trainer, epoch: int) -> tuple[int, list[float]]:
    """(iterations of `epoch` already done, their losses) for a run resumed mid-epoch, else (0, [])."""
    at = getattr(trainer, "resume_at", None)
    if at is None or int(at["epoch"]) != epoch:
        return 0, []
    return int(at["iteration"]), [float(x) for x in at["losses"]]


def restore_rng(trainer) -> None:
    """The saved RNG states of a mid-epoch resume, once the resumed epoch's loader drew its seed."""
    from medseg.training import checkpoint as ckpt

    rng = getattr(trainer, "resume_rng", None)
    if rng is not None:
        ckpt.set_rng_states(rng)
        trainer.resume_rng = None


def take_resume_state(trainer, saved: dict) -> None:
    """On resume from a preemption checkpoint: where to continue, and this rank's RNG state kept
    for `restore_rng` (the epoch-boundary restore in `Trainer._restore` would come too early)."""
    trainer.resume_at = saved.get("resume_at")
    trainer.resume_rng = None
    rngs = saved.get("rng") or []
    if trainer.resume_at is not None and len(rngs) == trainer.dist.world_size:
        trainer.resume_rng = rngs[trainer.dist.rank]


def stop(trainer, epoch: int, iteration: int, losses: list[float]) -> None:
    """Write the preemption checkpoint (rank 0; every rank's RNG state gathered) and raise `Preempted`."""
    from medseg.training import checkpoint as ckpt
    from medseg.training.distributed import barrier, gather_objects

    dist = trainer.dist
    rng_per_rank = gather_objects(dist, ckpt.rng_states())
    # each step's loss averaged over the ranks: every rank resumes with these, so the epoch's mean
    # over ranks is the uninterrupted one (at any world size)
    losses = [sum(step) / len(step) for step in zip(*gather_objects(dist, [float(x) for x in losses]))]
    name = getattr(trainer.preempt_flag, "signal_name", None) or "a signal on another rank"
    if dist.is_main:
        writer = trainer.checkpoints
        writer.resume_at = {"epoch": epoch, "iteration": iteration, "losses": [float(x) for x in losses]}
        try:
            writer.write(epoch - 1, None, rng_per_rank, history=trainer.history, best_ema=trainer.best_ema,
                         ema=trainer.ema, run_id=trainer.run_id)
        finally:
            writer.resume_at = None
        trainer.echo(f"{name}: checkpoint at epoch {epoch + 1}, iteration {iteration}/{trainer.iterations_in(epoch)}; "
                     f"exiting with {PREEMPTED_EXIT} (resumable)")
        if trainer.tracker is not None:
            trainer.tracker.end("KILLED")  # stopped from outside, not a failure
            trainer.tracker = None
    barrier(dist)
    raise Preempted(trainer.out_dir, epoch, iteration, name)


def auto_resume(state_path: Path, env: dict | None = None) -> str | None:
    """Why a start without --resume resumes (a preemption checkpoint; a torchrun restart with a
    checkpoint), or None."""
    from medseg.training import checkpoint as ckpt

    env = os.environ if env is None else env
    if not Path(state_path).is_file():
        return None
    restarted = int(env.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
    try:
        state = ckpt.load_state(state_path)
    except Exception:
        return None  # an unreadable state is reported by an explicit --resume, not guessed at here
    if state.get("resume_at") is not None:
        at = state["resume_at"]
        return f"resuming the preempted run from {state_path} (epoch {int(at['epoch']) + 1}, iteration {at['iteration']})"
    if restarted:
        return f"torchrun restart {env['TORCHELASTIC_RESTART_COUNT']}: resuming from {state_path} (epoch {int(state['epoch']) + 1})"
    return None


