"""How many CPU threads torch uses, and how they wait (`--threads`, config `threads`).

PyTorch's default (one thread per core, OpenMP threads spinning while they wait) collapses when
another process shares the CPU: each step waits for the thread whose core was taken, while the
others spin. Measured in docs/benchmarks.md ("Issue 23: threads"). medseg's default instead:
- OMP_WAIT_POLICY=PASSIVE (waiting threads sleep instead of spinning), set before torch starts
  its OpenMP runtime (`prepare_environment`, called by the CLI first thing); an explicit
  OMP_WAIT_POLICY in the environment is kept;
- as many threads as there are cores this process may use, minus the cores other processes keep
  busy (the 1-minute load average), at least 1 (`default_threads`).
`--threads N` (or `threads: N` in a training config) sets N exactly; OMP_NUM_THREADS in the
environment is honoured as it is when neither is given.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
_default: int | None = None  # the default, decided once per process (later runs in it get the same count)


def prepare_environment() -> None:
    """Passive OpenMP waiting, unless the environment says otherwise; call before importing torch."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's or taskset's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads(cores: int | None = None, load: float | None = None) -> int:
    """Threads for a process starting now: the cores, less those the others keep busy (1-min load)."""
    cores = available_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(cores, cores - int(round(load))))


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: `threads` when given (>= 1), else OMP_NUM_THREADS when set,
    else `default_threads()`, decided at the first call of the process and kept, so that runs in
    one process (a resumed training in a notebook, a test session) use one thread count and
    repeat exactly. Returns the number set."""
    global _default
    import torch

    from medseg.errors import ConfigError

    if threads is not None and threads < 1:
        raise ConfigError(f"threads {threads}: expected at least 1, e.g. --threads 2")
    if threads is None and os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        return torch.get_num_threads()  # the user's own setting, applied by torch at start-up
    if threads is None and _default is None:
        _default = default_threads()
    chosen = threads or _default
    torch.set_num_threads(chosen)
    log.debug("torch uses %d thread(s) (%d core(s) available)", chosen, available_cores())
    return chosen
