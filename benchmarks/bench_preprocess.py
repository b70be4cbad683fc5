"""Preprocessing speed and memory: `medseg preprocess --workers 2` vs nnU-Net v2, on all 208
hippocampus cases, one after the other. Peak memory is the summed RSS of the process tree,
sampled from /proc every 20 ms.

Run: .venv/bin/python benchmarks/bench_preprocess.py [--data ../shared/data/hippocampus] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree_rss(root_pid: int) -> int:
    """Summed RSS in bytes of `root_pid` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
        stack.extend(children.get(pid, []))
    return total


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, int]:
    """(wall seconds, peak tree RSS bytes) of a command, which must succeed."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid))
        time.sleep(0.02)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{proc.stderr.read().decode()[-3000:]}")
    return wall, peak


def nnunet_raw(data: Path, raw: Path) -> None:
    """Dataset004_Hippocampus in nnU-Net v2 raw layout (symlinks + v2 dataset.json)."""
    meta = json.loads((data / "dataset.json").read_text())
    ds = raw / "Dataset004_Hippocampus"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    for entry in meta["training"]:
        name = Path(entry["image"]).name
        cid = name[: -len(".nii.gz")]
        (ds / "imagesTr" / f"{cid}_0000.nii.gz").symlink_to(data / "imagesTr" / name)
        (ds / "labelsTr" / name).symlink_to(data / "labelsTr" / name)
    v2 = {
        "channel_names": {"0": "MRI"},
        "labels": {v: int(k) for k, v in meta["labels"].items()},
        "numTraining": len(meta["training"]),
        "file_ending": ".nii.gz",
    }
    (ds / "dataset.json").write_text(json.dumps(v2, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "hippocampus")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    if not (args.data / "dataset.json").is_file():
        raise SystemExit(f"{args.data}: hippocampus data not found (it sits at ../shared/data beside the repository)")
    from _nnunet_env import ensure_nnunet_env

    nn_bin = ensure_nnunet_env()
    medseg = [str(ROOT / ".venv" / "bin" / "medseg"), "preprocess", str(args.data), "--workers", "2"]
    rows = []
    for r in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            m_wall, m_peak = measure(medseg + ["--out", str(tmp / "medseg")])
            nnunet_raw(args.data.resolve(), tmp / "raw")
            env = dict(os.environ, nnUNet_raw=str(tmp / "raw"), nnUNet_preprocessed=str(tmp / "pre"), nnUNet_results=str(tmp / "res"))
            n_wall, n_peak = measure([str(nn_bin / "nnUNetv2_plan_and_preprocess"), "-d", "4", "-c", "3d_fullres", "-np", "2"], env)
        rows.append((m_wall, m_peak, n_wall, n_peak))
        print(
            f"run {r + 1}: medseg {m_wall:.1f} s, {m_peak / 2**20:.0f} MiB | nnU-Net {n_wall:.1f} s, {n_peak / 2**20:.0f} MiB | "
            f"time ratio {m_wall / n_wall:.2f}, memory ratio {m_peak / n_peak:.2f}",
            flush=True,
        )
    print("\n| run | medseg wall (s) | medseg peak RSS (MiB) | nnU-Net wall (s) | nnU-Net peak RSS (MiB) | time ratio | memory ratio |")
    print("|---|---|---|---|---|---|---|")
    for i, (mw, mp, nw, np_) in enumerate(rows, 1):
        print(f"| {i} | {mw:.1f} | {mp / 2**20:.0f} | {nw:.1f} | {np_ / 2**20:.0f} | {mw / nw:.2f} | {mp / np_:.2f} |")


if __name__ == "__main__":
    main()
