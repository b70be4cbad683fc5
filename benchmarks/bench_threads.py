"""15 training iterations of a 3D U-Net under different thread settings, alone and beside a busy neighbour.

    .venv/bin/python benchmarks/bench_threads.py [--iterations 15] [--repeats 1]

Settings (each in a fresh process, since OpenMP reads its environment when torch starts):
- torch default: one thread per core, OpenMP's default (spinning) wait policy;
- OMP_NUM_THREADS=1;
- OMP_WAIT_POLICY=PASSIVE (one thread per core, waiting threads sleep);
- medseg default (`medseg.threads`: passive waiting, one thread per core; docs/benchmarks.md
  records the figure of an earlier default that cut the threads by the 1-minute load).
Each runs alone, then beside a neighbour: one CPU-bound busy-loop process this script starts
and stops itself. The model: a small 3D U-Net (features 8-16-32, patch 24x32x24, batch 2), AdamW, on
random tensors; the first iteration (warm-up) is not timed.
The 1-minute load average before each run is printed: on a shared machine it is part of the result.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time

FEATURES = (8, 16, 32)  # a small 3D U-Net: the whole benchmark must fit a few minutes on a shared 2-core machine
PATCH = (24, 32, 24)
SETTINGS = {
    "torch default": {},
    "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "medseg default": {"MEDSEG_BENCH_MEDSEG_THREADS": "1"},
}


def worker(iterations: int) -> None:
    """Run in a child: time `iterations` steps, print one JSON line."""
    if os.environ.get("MEDSEG_BENCH_MEDSEG_THREADS"):
        from medseg.threads import prepare_environment, set_threads

        prepare_environment()
        threads = set_threads()
    import torch

    from medseg.models import build_model
    from medseg.preprocess.plan import ConfigurationPlan

    if not os.environ.get("MEDSEG_BENCH_MEDSEG_THREADS"):
        threads = torch.get_num_threads()
    torch.manual_seed(0)
    plan = ConfigurationPlan(spatial_dims=3, patch_size=list(PATCH), batch_size=2, features_per_stage=list(FEATURES),
                             strides=[[1, 1, 1]] + [[2, 2, 2]] * (len(FEATURES) - 1), kernel_sizes=[[3, 3, 3]] * len(FEATURES))
    net = build_model("unet3d", plan, in_channels=1, num_classes=3, deep_supervision=False)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, y = torch.randn(2, 1, *PATCH), torch.randint(0, 3, (2, *PATCH))

    def step():
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    print(json.dumps({"seconds": time.perf_counter() - start, "threads": threads}))


def _spin() -> None:
    while True:
        pass


def run(setting: str, iterations: int) -> dict:
    env = {**os.environ, **SETTINGS[setting]}
    for key in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY"):
        if key not in SETTINGS[setting]:
            env.pop(key, None)
    out = subprocess.run([sys.executable, __file__, "--worker", "--iterations", str(iterations)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--only", action="append", choices=list(SETTINGS), help="run only these settings (repeatable)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.iterations)
        return
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} core(s); {args.iterations} iterations per run; seconds (threads used; 1-min load before the run)")
    print(f"{'setting':<26} {'alone':>24} {'beside one busy loop':>30}")
    for setting in args.only or SETTINGS:
        cells = []
        for neighbour in (False, True):
            spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(1 if neighbour else 0)]
            for p in spinners:
                p.start()
            try:
                times = []
                for _ in range(args.repeats):
                    load = os.getloadavg()[0]
                    result = run(setting, args.iterations)
                    times.append(result["seconds"])
                cells.append(f"{min(times):.1f} s ({result['threads']} thr; load {load:.1f})")
            finally:
                for p in spinners:
                    p.terminate()
                    p.join()
        print(f"{setting:<26} {cells[0]:>24} {cells[1]:>30}", flush=True)


if __name__ == "__main__":
    main()
