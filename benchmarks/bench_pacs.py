"""PACS throughput: series per minute through `medseg.pacs.Client.segment_series` against a real
Orthanc (started here on 127.0.0.1, as the tests do), with each series' time split into retrieval
(QIDO + WADO-RS of the instances, decoding left to the reader), segmentation (`predictor.segment`:
read, preprocess, network, inversion), building (SEG and RTSTRUCT Datasets) and storage (STOW-RS).

Workloads (every series uploaded as a fresh copy with new UIDs, so nothing is cached by Orthanc):
- hippocampus: the 1 mm oblique MR crop of ../shared/data (tcia_mr_oblique/11_HCropVolume, 34x50x40,
  Hippocampus-sized) through a model of the Hippocampus plan (nnU-Net's 32-256 3D U-Net, 1 mm,
  planned on --plan-cases Hippocampus cases and trained here for --train-steps Adam steps on 32^3
  crops: throughput needs a mask that follows the anatomy, not a good one);
- ct: the JPEG 2000 CT series (512x512x20) through the tiny 3 mm blob model of the tests (a 3 mm
  CT model, as TotalSegmentator's --fast is): retrieval, decoding and the 512x512 SEG/RTSTRUCT dominate.

Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_pacs.py [--series 4] [--formats dicom-seg,rtstruct]
           [--only hippocampus|ct] [--threads 2]
Prints one row per workload (mean seconds per stage, series per minute) and the machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "tests"))


def load(path: Path, name: str):
    from module_loader import load_module

    return load_module(path, name)


def hippocampus_bundle(work: Path, cases: int, steps: int) -> Path:
    """A Hippocampus-plan bundle: plan on `cases` training cases, train `steps` steps (unet3d_cpu preset)."""
    import medseg

    dataset = work / "hippocampus"
    (dataset / "imagesTr").mkdir(parents=True)
    (dataset / "labelsTr").mkdir()
    source = DATA / "hippocampus"
    meta = json.loads((source / "dataset.json").read_text())
    names = sorted(p.name for p in (source / "labelsTr").glob("*.nii.gz"))[:cases]
    for name in names:  # the MSD layout of ../shared/data: imagesTr/NAME beside labelsTr/NAME
        shutil.copy(source / "imagesTr" / name, dataset / "imagesTr" / name)
        shutil.copy(source / "labelsTr" / name, dataset / "labelsTr" / name)
    meta["numTraining"] = len(names)
    meta["training"] = [{"image": f"./imagesTr/{n}", "label": f"./labelsTr/{n}"} for n in names]
    (dataset / "dataset.json").write_text(json.dumps(meta))
    summary = medseg.plan_and_preprocess(dataset, work / "hippo_work")
    return train_on_cache(work / "hippo_work", summary.plan, steps, work / "hippo_bundle")


def train_on_cache(workdir: Path, plan, steps: int, out: Path) -> Path:
    """The plan's 3D U-Net trained for `steps` Adam steps on random 32^3 crops (batch 2) of the cached
    cases: a mask that follows the anatomy, which is all a throughput figure needs."""
    import numpy as np
    import torch

    from medseg.bundle import write_bundle
    from medseg.models import build_model
    from medseg.preprocess.cache import list_cached_cases, load_case

    cfg = plan.configurations["3d"]
    cases = [load_case(workdir, c) for c in list_cached_cases(workdir)]
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = build_model("unet3d", cfg, in_channels=1, num_classes=len(plan.labels))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    weights = torch.tensor([0.2] + [1.0] * (len(plan.labels) - 1))
    for _ in range(steps):
        xs, ys = [], []
        for _ in range(2):
            case = cases[rng.integers(len(cases))]
            image, label = np.zeros((1, 32, 32, 32), np.float32), np.zeros((32, 32, 32), np.int64)
            src = tuple(slice(o, o + min(s, 32)) for o, s in
                        ((int(rng.integers(0, max(s - 32, 0) + 1)), s) for s in case.label.shape))
            dst = tuple(slice(0, sl.stop - sl.start) for sl in src)
            image[(slice(None), *dst)] = case.image[(slice(None), *src)]
            label[dst] = case.label[src]
            xs.append(image)
            ys.append(label)
        out_ = net(torch.from_numpy(np.stack(xs)))
        out_ = out_[0] if isinstance(out_, (list, tuple)) else out_
        loss = torch.nn.functional.cross_entropy(out_, torch.from_numpy(np.stack(ys)), weight=weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return write_bundle(out, model_name="unet3d", configuration="3d", fold=0, model_options={}, plan=plan,
                        config={"steps": steps}, labels=plan.labels, postprocessing=[], precision="fp32",
                        state_dict_best=state, state_dict_last=state)


def run(name: str, client, orthanc, predictor, source: list, copies: int, formats: list[str], conftest) -> dict:
    rows = []
    for i in range(copies):
        datasets = conftest.renamed_series(source, f"bench {name} {i} {time.time()}")
        orthanc.upload(datasets)
        study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
        start = time.perf_counter()
        result = client.segment_series(study, series, predictor, formats)
        total = time.perf_counter() - start
        rows.append({**result.timings, "total": total})
        print(f"{name} {i}: " + ", ".join(f"{k} {v:.2f} s" for k, v in rows[-1].items()), flush=True)
    keep = rows[1:] if len(rows) > 1 else rows  # the first pays the lazy imports (highdicom, rt-utils)
    mean = {k: sum(r.get(k, 0.0) for r in keep) / len(keep) for k in ("retrieve", "segment", "build", "store", "total")}
    return {"workload": name, "series": len(keep), **mean, "per_minute": 60.0 / mean["total"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=4, help="series per workload (the first is a warm-up, left out)")
    ap.add_argument("--formats", default="dicom-seg,rtstruct")
    ap.add_argument("--only", choices=["hippocampus", "ct"])
    ap.add_argument("--plan-cases", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import medseg
    import medseg.pacs
    from medseg.io.dicom import source_datasets

    conftest = load(REPO / "tests" / "pacs" / "conftest.py", "_bench_pacs_conftest")
    inference = load(REPO / "tests" / "inference" / "conftest.py", "_bench_pacs_inference")
    work = Path(tempfile.mkdtemp(prefix="medseg-bench-pacs-"))
    orthanc = conftest.Orthanc(work)
    orthanc.start()
    try:
        client = medseg.pacs.Client(orthanc.url, username=orthanc.user, password=orthanc.password)
        formats = args.formats.split(",")
        results = []
        load_before = os.getloadavg()
        if args.only in (None, "hippocampus"):
            t0 = time.perf_counter()
            bundle = hippocampus_bundle(work, args.plan_cases, args.train_steps)
            print(f"hippocampus bundle trained in {time.perf_counter() - t0:.0f} s", flush=True)
            mr = conftest.part10(conftest.read_series(DATA / "dicom" / "tcia_mr_oblique" / "11_HCropVolume"))
            results.append(run("hippocampus", client, orthanc, medseg.load_model(bundle, device="cpu"), mr, args.series, formats, conftest))
        if args.only in (None, "ct"):
            bundle = inference.train_tiny_bundle(work / "blobs")
            ct = conftest.part10(source_datasets(conftest.read_series(DATA / "dicom" / "totalsegmentator" / "ct_series")))
            results.append(run("ct", client, orthanc, medseg.load_model(bundle, device="cpu"), ct, args.series, formats, conftest))
        load_after = os.getloadavg()
    finally:
        orthanc.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nformats {args.formats}; torch threads {args.threads}; load average before {load_before[0]:.1f}, "
          f"after {load_after[0]:.1f} (1 min), {os.cpu_count()} CPUs")
    print("| workload | series | retrieve s | segment s | build s | store s | total s | series/min |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['workload']} | {r['series']} | {r['retrieve']:.2f} | {r['segment']:.2f} | {r['build']:.2f} | "
              f"{r['store']:.2f} | {r['total']:.2f} | {r['per_minute']:.1f} |")


if __name__ == "__main__":
    main()
