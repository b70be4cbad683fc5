"""Instances at equal CPU budget: (a) semantic unet3d + connected components against (b) the same
unet3d trained on border/core labels, on the lesion benchmark of make_lesion_dataset.py.

    python benchmarks/make_lesion_dataset.py --out work/lesions
    python benchmarks/bench_instances.py --data work/lesions --epochs 8 --iterations-per-epoch 25

Both train the configs/unet3d_cpu.yaml recipe on the same 48 cases for the same number of
iterations (the CPU budget), then segment the 24 test cases (`--format instances`) and are scored
by `medseg evaluate --instances` (IoU > 0.5) against the reference instances, on every test case
and on those where lesions touch. Prints one table, both methods side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEDSEG = [sys.executable, "-m", "medseg"]


def sh(*args) -> float:
    start = time.perf_counter()
    subprocess.run([*MEDSEG, *map(str, args)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    from medseg.instance_evaluation import evaluate_instances, summarise_rows

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO / "work" / "lesions")
    parser.add_argument("--work", type=Path, default=None, help="default: DATA/runs")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--iterations-per-epoch", type=int, default=25)
    args = parser.parse_args()
    work = args.work or args.data / "runs"
    test = args.data / "test"
    touching = set(json.loads((test / "touching.json").read_text()))

    results = {}
    for method in ("semantic", "bordercore"):
        wd = work / method
        minutes = {"preprocess": sh("preprocess", args.data / method, "--out", wd) / 60}
        minutes["train"] = sh("train", wd, "--config", REPO / "configs" / "unet3d_cpu.yaml", "--fold", "none",
                              "--epochs", args.epochs, "--iterations-per-epoch", args.iterations_per_epoch,
                              "--precision", "fp32", "--overwrite") / 60
        bundle = next((wd / "models").glob("*/fold_none"))
        out = wd / "test_instances"
        minutes["infer"] = sh("infer", test / "imagesTs", "--model", bundle, "-o", out, "--format", "instances",
                              "--precision", "fp32") / 60
        pred = wd / "test_instance_maps"
        pred.mkdir(exist_ok=True)
        for path in out.glob("*_instances.nii.gz"):  # evaluate matches by case id: <case>.nii.gz + <case>.json
            case = path.name[: -len("_instances.nii.gz")]
            (pred / f"{case}.nii.gz").write_bytes(path.read_bytes())
            (pred / f"{case}.json").write_text((out / f"{case}_instances.json").read_text())
        report = evaluate_instances(pred, test / "instancesTs", things=[1])
        touching_rows = [r for r in report.rows if r["case_id"] in touching]
        results[method] = (report.summary["mean"], summarise_rows(touching_rows)["mean"], minutes)

    names = {"semantic": "(a) unet3d + connected components", "bordercore": "(b) unet3d border/core"}
    print(f"budget: {args.epochs} x {args.iterations_per_epoch} iterations of configs/unet3d_cpu.yaml each, fp32; "
          f"{len(touching)} of the test cases have touching lesions")
    print(f"{'method':<36}{'cases':<10}{'PQ':>8}{'RQ':>8}{'SQ':>8}{'F1=RQ':>8}{'lesion Dice':>13}{'train min':>11}")
    for method, (mean_all, mean_touch, minutes) in results.items():
        for subset, mean in (("all", mean_all), ("touching", mean_touch)):
            print(f"{names[method]:<36}{subset:<10}{mean['pq']:>8.3f}{mean['rq']:>8.3f}{mean['sq']:>8.3f}"
                  f"{mean['rq']:>8.3f}{mean['lesion_dice']:>13.3f}{minutes['train']:>11.1f}")


if __name__ == "__main__":
    main()
