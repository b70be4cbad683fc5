"""Run under torchrun by tests/training/test_budget.py: a time-budgeted run where rank 1 is slower.

usage: torchrun --nproc_per_node 2 tests/training/ddp_budget.py WORKDIR CONFIG.yaml OUT_DIR BUDGET SLOW_S
Rank 1 sleeps SLOW_S seconds at the end of every epoch's training (a slower machine or a noisy
neighbour); writes OUT_DIR/rank<r>.json {plans, epochs, sha256, own_epoch_s}.
"""

import json
import sys
import time
from pathlib import Path

import torch.distributed as dist

from medseg.training import budget as budget_mod
from medseg.training.config import load_train_config
from medseg.training.loop import train
from medseg.training.trainer import Trainer


def main(workdir: str, config: str, out_dir: str, budget: str, slow_s: str) -> None:
    dist.init_process_group("gloo")
    rank, own, planners = dist.get_rank(), [], []
    plain_epoch, plain_planner = Trainer.train_epoch, budget_mod.make_planner

    def train_epoch(self, epoch):
        if rank == 1:
            time.sleep(float(slow_s))  # counted in this rank's epoch time, as a slow step would be
        metrics = plain_epoch(self, epoch)
        metrics["epoch_time_s"] += float(slow_s) if rank == 1 else 0.0
        own.append(metrics["epoch_time_s"])
        return metrics

    def make_planner(*args, **kwargs):
        planners.append(plain_planner(*args, **kwargs))
        return planners[-1]

    Trainer.train_epoch, budget_mod.make_planner = train_epoch, make_planner
    r = train(workdir, load_train_config(config), preset_name="ddp", fold=0, time_budget=budget)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(
        {"plans": planners[0].history, "epochs": r.epochs_done, "sha256": r.weights_sha256, "own_epoch_s": own}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:6])
