"""Cross-validation folds over case ids, stored in `WORKDIR/splits.json`.

The file holds a list of `{"train": [...], "val": [...]}`, one per fold, like nnU-Net's
`splits_final.json`. A manifest's own split column (`"fold"` per case) wins over the random split.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from medseg.errors import ConfigError, InputError

NUM_FOLDS = 5


def make_splits(case_ids: list[str], num_folds: int = NUM_FOLDS, seed: int = 12345) -> list[dict[str, list[str]]]:
    """K folds: cases shuffled with `seed`, then dealt round-robin (fold sizes differ by at most 1)."""
    ids = sorted(case_ids)
    if len(ids) < num_folds:
        raise InputError(f"{len(ids)} cases cannot be split into {num_folds} folds; add cases or train with --fold none")
    order = np.random.default_rng(seed).permutation(len(ids))
    folds: list[list[str]] = [[] for _ in range(num_folds)]
    for rank, index in enumerate(order):
        folds[rank % num_folds].append(ids[index])
    return [
        {"train": sorted(c for f, part in enumerate(folds) if f != k for c in part), "val": sorted(folds[k])}
        for k in range(num_folds)
    ]


def splits_from_manifest_folds(case_folds: dict[str, int]) -> list[dict[str, list[str]]]:
    """Folds given per case by a manifest (case id -> fold index 0..K-1)."""
    num_folds = max(case_folds.values()) + 1
    splits = []
    for k in range(num_folds):
        val = sorted(c for c, f in case_folds.items() if f == k)
        if not val:
            raise InputError(f"the manifest's split column has no case in fold {k}; number the folds 0..{num_folds - 1}")
        splits.append({"train": sorted(c for c, f in case_folds.items() if f != k), "val": val})
    return splits


def _manifest_folds(workdir: Path) -> dict[str, int] | None:
    """The manifest's per-case fold column, if `WORKDIR/manifest.json` has one."""
    path = workdir / "manifest.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    cases = data.get("cases", data) if isinstance(data, dict) else data
    if isinstance(cases, dict):
        cases = [dict(v, case_id=k) if isinstance(v, dict) else {} for k, v in cases.items()]
    folds: dict[str, int] = {}
    for case in cases if isinstance(cases, list) else []:
        if not isinstance(case, dict):
            continue
        value = case.get("fold", case.get("split"))
        case_id = case.get("case_id", case.get("id"))
        if case_id is not None and isinstance(value, int) and not isinstance(value, bool):
            folds[str(case_id)] = value
    return folds or None


def load_or_create_splits(workdir: str | os.PathLike, case_ids: list[str], seed: int = 12345) -> list[dict[str, list[str]]]:
    """Read `WORKDIR/splits.json`, or create it (manifest folds first, else a seeded 5-fold split).

    An existing file is kept as long as it covers exactly `case_ids`, so folds stay stable across runs.
    """
    workdir = Path(workdir)
    path = workdir / "splits.json"
    if path.is_file():
        splits = json.loads(path.read_text())
        covered = {c for s in splits for c in s["val"]}
        if covered == set(case_ids):
            return splits
        raise ConfigError(
            f"{path}: its folds cover {len(covered)} cases but the cache has {len(case_ids)}; "
            "delete splits.json to re-split (earlier folds' models will no longer match)"
        )
    manifest = _manifest_folds(workdir)
    if manifest is not None:
        manifest = {c: f for c, f in manifest.items() if c in set(case_ids)}
    splits = splits_from_manifest_folds(manifest) if manifest else make_splits(case_ids, seed=seed)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(splits, indent=1))
    os.replace(tmp, path)
    return splits


def fold_cases(splits: list[dict[str, list[str]]], fold: int | None, case_ids: list[str]) -> tuple[list[str], list[str]]:
    """(train ids, val ids) for `fold`; `fold=None` trains on every case with no validation."""
    if fold is None:
        return sorted(case_ids), []
    if not 0 <= fold < len(splits):
        raise ConfigError(f"fold {fold} does not exist: splits.json has folds 0..{len(splits) - 1}")
    return list(splits[fold]["train"]), list(splits[fold]["val"])
