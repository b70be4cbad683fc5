"""RTSTRUCT round trip on the real series of ../shared/data (issue 23, item 5): volume ratio and Dice
of each ROI drawn back onto the grid, for medseg's boundary contours and for rt-utils' own
(centre-traced) contours, by three rasterisers: medseg's reader, rt-utils' reader and the
independent one of tests/io/test_rtstruct_boundary.py (each contour through its own slice's header,
pixel centres inside, as dicompyler-core does).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_rtstruct_roundtrip.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "io"))
SHARED = REPO.parent / "shared" / "data"


def main() -> None:
    from rt_utils import RTStruct
    from rt_utils.ds_helper import create_rtstruct_dataset
    from test_rtstruct_boundary import anatomy_mask, dice, rasterise_independently, rasterise_with_rt_utils

    from medseg.io import read_volume
    from medseg.io.dicom import load_dicom_series, read_rtstruct, write_rtstruct
    from medseg.io.dicom.series import source_datasets

    cases = {
        "CT (TotalSegmentator, 20 x 512 x 512; its organ mask)": (
            SHARED / "dicom/totalsegmentator/ct_series", SHARED / "dicom/totalsegmentator/ct_series_reference_seg.nii.gz"),
        "oblique MR (TCIA 11-T1post, 22 x 320 x 280; threshold mask + ring)": (SHARED / "dicom/tcia_mr_oblique/11-T1post-18670", None),
    }
    out = Path(tempfile.mkdtemp())
    print("| series | ROI | voxels | reader | boundary contours: volume ratio, Dice | rt-utils' centre contours: volume ratio, Dice |")
    print("|---|---|---|---|---|---|")
    for title, (folder, mask_path) in cases.items():
        src = load_dicom_series(folder)
        datasets = source_datasets(src.datasets)
        if mask_path is not None:
            labels = np.asarray(read_volume(mask_path).reoriented(src.volume.orientation).array)
            values = [int(v) for v, n in zip(*np.unique(labels, return_counts=True)) if v and n > 200][:4]
            labels = np.where(np.isin(labels, values), labels, 0).astype(np.uint8)
        else:
            labels = anatomy_mask(src.volume.array)  # six middle slices
            values = [1, 2]
        names = {v: f"roi {v}" for v in values}
        t0 = time.perf_counter()
        ours = write_rtstruct(src.volume.with_array(labels), datasets, out / "boundary.dcm", {0: "bg", **names})
        t_write = time.perf_counter() - t0
        rt = RTStruct(datasets, create_rtstruct_dataset(datasets))
        for v in values:
            rt.add_roi(mask=np.ascontiguousarray((labels == v).transpose(1, 0, 2)), name=names[v])
        rt.ds.save_as(out / "centres.dcm", enforce_file_format=True)
        for reader in ("medseg", "rt-utils", "independent"):
            got = {}
            for kind, path in (("boundary", ours), ("centres", out / "centres.dcm")):
                if reader == "medseg":
                    got[kind] = read_rtstruct(path, src.volume)
                elif reader == "rt-utils":
                    got[kind] = rasterise_with_rt_utils(path, datasets, labels.shape)
                else:
                    got[kind] = rasterise_independently(path, datasets, labels.shape)
            for v in values:
                truth = labels == v
                cells = [f"{got[k][names[v]].sum() / truth.sum():.4f}, {dice(got[k][names[v]], truth):.4f}" for k in ("boundary", "centres")]
                print(f"| {title} | {names[v]} | {int(truth.sum())} | {reader} | {cells[0]} | {cells[1]} |")
        print(f"<!-- {title}: boundary RTSTRUCT written in {t_write:.1f} s -->")


if __name__ == "__main__":
    main()
