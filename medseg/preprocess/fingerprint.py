"""The dataset fingerprint (`WORKDIR/fingerprint.json`): per-case geometry and intensities, and
dataset-wide foreground intensity statistics per channel (what CT normalisation uses)."""

from __future__ import annotations

import numpy as np

from medseg.preprocess.plan import IGNORE_LABEL
from medseg.preprocess.validate import CaseReport


def compute_fingerprint(name: str, channel_names: list[str], modalities: list[str], labels: dict[int, str], reports: list[CaseReport]) -> dict:
    """Fingerprint from valid `CaseReport`s; `intensity` per channel pools every case's samples.

    Shapes and spacings are (X, Y, Z) in RAS axis order (after reorientation). `labels` are the
    declared ones, or when none are declared every value found in a mask except IGNORE_LABEL;
    0 (background) is always included.
    """
    reports = [r for r in reports if r.fingerprint is not None]
    intensity = []
    for c in range(len(channel_names)):
        pooled = np.concatenate([r.samples[c] for r in reports]).astype(np.float64) if reports else np.zeros(1)
        intensity.append(
            {
                "mean": float(pooled.mean()),
                "std": float(pooled.std()),
                "percentile_00_5": float(np.percentile(pooled, 0.5)),
                "percentile_99_5": float(np.percentile(pooled, 99.5)),
                "min": float(pooled.min()),
                "max": float(pooled.max()),
            }
        )
    found = {int(k) for r in reports for k in r.fingerprint["voxels_per_class"]}
    declared = bool(labels)
    if not declared:  # not declared: every value found in the masks (but the ignore value) is a label
        labels = {v: ("background" if v == 0 else f"label_{v}") for v in sorted((found - {IGNORE_LABEL}) | {0})}
    labels = {0: "background", **{int(k): v for k, v in labels.items()}}
    cases_per_value = {v: sum(str(v) in r.fingerprint["voxels_per_class"] for r in reports) for v in sorted(set(labels) | found)}
    return {
        "dataset_name": name,
        "channel_names": channel_names,
        "modalities": modalities,
        "labels": {str(k): v for k, v in sorted(labels.items())},
        "labels_declared": declared,
        # label value -> number of cases whose mask holds it (IGNORE_LABEL included when found)
        "cases_per_label": {str(k): n for k, n in cases_per_value.items()},
        "intensity": intensity,
        "cases": [r.fingerprint for r in sorted(reports, key=lambda r: r.case_id)],
    }
