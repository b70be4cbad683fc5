"""Time to read a DICOM series: medseg vs SimpleITK's ImageSeriesReader vs dcm2niix.

    .venv/bin/python benchmarks/bench_io.py [--repeats 5]

Series: the 20-slice JPEG 2000 CT (dicom/totalsegmentator/ct_series) and the largest series in
dicom/tcia_mr_oblique, from ../shared/data. Each reader runs `repeats` times in turn (interleaved,
so background load hits all alike); the table shows the median wall time and the ratio to medseg.
dcm2niix runs as a subprocess writing an uncompressed .nii (`-z n`), so its time includes process
start-up and the write; medseg and SimpleITK are timed in-process, reading into memory only.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom"


def read_medseg(folder: Path) -> tuple:
    from medseg.io.dicom import read_dicom

    return read_dicom(folder).spatial_shape


def read_simpleitk(folder: Path) -> tuple:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute().GetSize()


def read_dcm2niix(folder: Path) -> tuple:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(["dcm2niix", "-z", "n", "-f", "out", "-o", out, str(folder)], check=True, capture_output=True)
        import nibabel as nib

        return nib.load(next(Path(out).glob("*.nii"))).shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"real test data not found at {DATA}; it sits beside the repository (see its README)")
    tcia = [p for p in (DATA / "tcia_mr_oblique").iterdir() if p.is_dir()]
    largest = max(tcia, key=lambda p: sum(f.stat().st_size for f in p.iterdir()))
    series = {
        "ct_series (CT, 20 x 512x512, JPEG 2000)": DATA / "totalsegmentator" / "ct_series",
        f"tcia {largest.name} (MR, {len(list(largest.iterdir()))} x 320x280, oblique)": largest,
    }
    readers = {"medseg": read_medseg, "SimpleITK": read_simpleitk}
    if shutil.which("dcm2niix"):
        readers["dcm2niix"] = read_dcm2niix
    else:
        print("dcm2niix not installed: its column is left out", file=sys.stderr)

    rows = []
    for name, folder in series.items():
        for reader in readers.values():  # warm-up: imports, codec plugins, file cache
            reader(folder)
        times: dict[str, list[float]] = {r: [] for r in readers}
        for _ in range(args.repeats):
            for label, reader in readers.items():
                start = time.perf_counter()
                reader(folder)
                times[label].append(time.perf_counter() - start)
        medians = {label: statistics.median(t) for label, t in times.items()}
        rows.append((name, medians))

    labels = list(readers)
    print(f"median of {args.repeats} runs, seconds (ratio = time / medseg time)\n")
    print("| series | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for name, medians in rows:
        base = medians["medseg"]
        cells = [f"{medians[label]:.3f} s ({medians[label] / base:.2f}x)" for label in labels]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
