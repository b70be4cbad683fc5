"""Throughput of sharded batch inference (issue 21): the 52-case Hippocampus job (every 4th case of
../shared/data/hippocampus/imagesTr) with 1 process and with `torchrun --nproc_per_node 2`, and the
ledger's cost per case (pending + claim + done with the output's sha256 + a refresh), measured alone.

    python benchmarks/bench_sharded.py --model BUNDLE [--out /tmp/bench_sharded] [--cases 52]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hippocampus" / "imagesTr"


def run(cmd: list[str]) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def ledger_cost(out: Path, n: int) -> float:
    """Seconds per case of the ledger's work for `n` cases, on the job's real output files."""
    from medseg.inference.ledger import Ledger

    files = sorted(out.glob("*.nii.gz"))[:n]
    folder = out.parent / "ledger_only"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for f in files:
        shutil.copy(f, folder / f.name)
    ledger = Ledger(folder, "bench")
    t0 = time.perf_counter()
    ledger.refresh()
    ledger.pending([f.name for f in files])
    for f in files:
        ledger.claim(f.name)
        ledger.done(f.name, 1.0, [folder / f.name])
        ledger.refresh()
        ledger.counts([g.name for g in files])
    seconds = (time.perf_counter() - t0) / len(files)
    ledger.close()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default="/tmp/bench_sharded")
    ap.add_argument("--cases", type=int, default=52)
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    scans = sorted(DATA.glob("*.nii.gz"))[::4][: args.cases]
    listing = out / "cases.txt"
    listing.write_text("\n".join(str(p.resolve()) for p in scans) + "\n")
    print(f"{len(scans)} cases; load average before: {os.getloadavg()}")
    medseg = [sys.executable, "-m", "medseg", "infer", str(listing), "--model", args.model, "--device", "cpu", "--threads", "1"]
    one = run(medseg + ["-o", str(out / "one")])
    print(f"1 process: {one:.1f} s, {len(scans) / one * 60:.1f} cases/min; load average {os.getloadavg()}")
    two = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", "29731", "-m", "medseg", *medseg[3:], "-o", str(out / "two")])
    print(f"2 processes (torchrun): {two:.1f} s, {len(scans) / two * 60:.1f} cases/min; load average {os.getloadavg()}")
    again = run(medseg + ["-o", str(out / "one")])
    print(f"rerun of the finished 1-process job (every case skipped after its sha256 check): {again:.1f} s")
    print(f"ledger cost: {ledger_cost(out / 'one', len(scans)) * 1000:.2f} ms per case")


if __name__ == "__main__":
    main()
