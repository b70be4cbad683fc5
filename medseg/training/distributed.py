"""torchrun support: DistributedDataParallel with gloo on CPU and NCCL on GPU.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them training runs as one process.
Rank r takes its share of every global batch (patches drawn per global sample index, so a batch is
the same at any world size); validation cases are shared out and their Dice sums all-reduced; only
rank 0 logs and writes, with every rank's RNG state in the checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process group was created here (so `cleanup` destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun prepared (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    owns = not dist.is_initialized()
    if device_type == "cuda":
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if owns:  # a caller that made its own group (several train() calls in one job) keeps it
        # on GPU: NCCL for the gradients, gloo for the small CPU collectives (stop flags, Dice sums, RNG states)
        backend = "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"
        store = _restart_round_store(world)
        if store is None:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world)
    return DistInfo(rank, world, int(os.environ.get("LOCAL_RANK", "0")), owns)


def _restart_round_store(world: int):
    """torchrun's c10d rendezvous hands its own TCP store to the workers of every restart round
    with no per-round key prefix, so a restarted round's gloo could read the previous round's peer
    addresses and wait forever to connect to a dead process (seen under load). A prefix per restart
    count keeps the rounds apart. None outside torchrun's shared store (plain env:// then)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    import torch.distributed as dist

    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False)
    return dist.PrefixStore(f"medseg/restart_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def any_rank(info: DistInfo, flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one (e.g. a time limit reached)."""
    if not info.enabled:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(info: DistInfo, value: float) -> float:
    if not info.enabled:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def sum_over_ranks(info: DistInfo, values) -> "np.ndarray":
    """Element-wise sum of a float array over ranks (float64), the same on every rank."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    if not info.enabled:
        return values
    import torch
    import torch.distributed as dist

    t = torch.from_numpy(values.copy())
    dist.all_reduce(t)
    return t.numpy()


def gather_objects(info: DistInfo, obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (small picklable objects, e.g. RNG states)."""
    if not info.enabled:
        return [obj]
    import torch.distributed as dist

    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def cleanup(info: DistInfo) -> None:
    if info.enabled and info.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
