"""Run under torchrun by tests/training/test_distributed.py: train each variant in one process group.

usage: torchrun --nproc_per_node N tests/training/ddp_matrix.py WORKDIR MATRIX.json OUT_DIR
MATRIX.json: [[name, config dict, fold or null, interrupted], ...]; interrupted: stopped after the
first epoch (max_minutes=0), then resumed. Writes OUT_DIR/rank<r>.json {name: {losses, sha256, val_dice}}.
"""

import json
import sys
import time
from pathlib import Path

import torch.distributed as dist

from medseg.training.config import TrainConfig
from medseg.training.loop import train


def main(workdir: str, matrix_path: str, out_dir: str) -> None:
    dist.init_process_group("gloo")  # one group for every run: train() leaves a group it did not make
    results = {}
    for name, config, fold, interrupted in json.loads(Path(matrix_path).read_text()):
        t0 = time.monotonic()
        config = TrainConfig.model_validate(config)
        if interrupted:
            assert train(workdir, config, preset_name=name, fold=fold, max_minutes=0).stopped_early
        r = train(workdir, config, preset_name=name, fold=fold, resume=interrupted)
        results[name] = {"losses": r.train_losses, "sha256": r.weights_sha256, "val_dice": r.val_dice,
                         "seconds": round(time.monotonic() - t0, 1)}
        dist.barrier()
    Path(out_dir, f"rank{dist.get_rank()}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
