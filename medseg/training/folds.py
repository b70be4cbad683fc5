"""Cross-validation folds in parallel: `torchrun --nproc_per_node N -m medseg train W --fold all`
trains one fold per rank (nnU-Net's way to use several GPUs), each fold a plain one-process run on
the rank's own GPU (CUDA_VISIBLE_DEVICES=LOCAL_RANK, set before CUDA starts), not DDP.

Rank r trains folds[r::N]. Rank 0 writes `splits.json` before any rank starts, so the folds come
from one split; the ranks meet at a gloo barrier when every fold is done, and only then is the
ensemble complete: rank 0 makes the pooled post-processing choice over all folds (`select_pooled`)
and reports. One fold under torchrun (`--fold 0`) is still trained by all ranks together (DDP).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE")


def folds_of_rank(folds: list, rank: int, world: int) -> list:
    return folds[rank::world]


class FoldParallel:
    """One fold per rank: `mine` are this rank's folds; train each inside `alone()`; `finish()`
    waits for every rank (the ensemble is then complete)."""

    def __init__(self, workdir, folds: list, seed: int, env: dict | None = None):
        import torch.distributed as dist

        env = os.environ if env is None else env
        self.rank, self.world = int(env["RANK"]), int(env["WORLD_SIZE"])
        self.local_rank = int(env.get("LOCAL_RANK", "0"))
        self.mine = folds_of_rank(folds, self.rank, self.world)
        if "CUDA_VISIBLE_DEVICES" not in env or "," in env.get("CUDA_VISIBLE_DEVICES", ""):
            self._own_gpu(env)
        self.owns = not dist.is_initialized()
        if self.owns:  # folds take hours: no barrier timeout in the way
            dist.init_process_group("gloo", timeout=timedelta(days=7))
        if self.rank == 0:
            from medseg.data.splits import load_or_create_splits
            from medseg.preprocess.cache import list_cached_cases

            cases = list_cached_cases(Path(workdir))
            if cases:
                load_or_create_splits(Path(workdir), cases, seed=seed)
        dist.barrier()

    def _own_gpu(self, env) -> None:
        """CUDA_VISIBLE_DEVICES = this rank's GPU, when CUDA has not started yet (it reads it once)."""
        import torch

        if torch.cuda.is_initialized():
            return
        visible = env.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else None
        count = len(ids) if ids else torch.cuda.device_count()  # device_count does not start CUDA
        if count:
            os.environ["CUDA_VISIBLE_DEVICES"] = ids[self.local_rank % count] if ids else str(self.local_rank % count)

    @contextmanager
    def alone(self):
        """Within: this process trains as a single process (no torchrun variables, so no DDP)."""
        saved = {k: os.environ.pop(k) for k in RANK_VARS if k in os.environ}
        try:
            yield
        finally:
            os.environ.update(saved)

    def finish(self) -> None:
        import torch.distributed as dist

        dist.barrier()
        if self.owns:
            dist.destroy_process_group()
