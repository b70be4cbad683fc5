"""How many CPU threads torch uses, and how they wait (`--threads`, config `threads`).

PyTorch's default (one thread per core, OpenMP threads spinning while they wait) collapses when
another process shares the CPU: each step waits for the thread whose core was taken, while the
others spin. Measured in docs/benchmarks.md ("Issue 23: threads"): with OMP_WAIT_POLICY=PASSIVE
(waiting threads sleep instead of spinning) all cores stay faster than one thread even beside a
busy process, so medseg's default is
- OMP_WAIT_POLICY=PASSIVE, set before torch starts its OpenMP runtime (`prepare_environment`,
  called by the CLI first thing); an explicit OMP_WAIT_POLICY in the environment is kept;
- one thread per core this process may use (its CPU affinity: a container's or taskset's share),
  `default_threads`; a count that does not change with the load, so runs repeat exactly.
`--threads N` (or `threads: N` in a training config) sets N exactly; OMP_NUM_THREADS in the
environment is honoured as it is when neither is given.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def prepare_environment() -> None:
    """Passive OpenMP waiting, unless the environment says otherwise; call before importing torch."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's or taskset's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """One thread per core this process may use (with passive waiting, fastest quiet or loaded)."""
    return available_cores()


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: `threads` when given (>= 1), else OMP_NUM_THREADS when set,
    else `default_threads()`. Returns the number set."""
    import torch

    from medseg.errors import ConfigError

    if threads is not None and threads < 1:
        raise ConfigError(f"threads {threads}: expected at least 1, e.g. --threads 2")
    if threads is None and os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        return torch.get_num_threads()  # the user's own setting, applied by torch at start-up
    chosen = threads or default_threads()
    torch.set_num_threads(chosen)
    log.debug("torch uses %d thread(s) (%d core(s) available)", chosen, available_cores())
    return chosen
