import json

import pytest

from medseg.data.splits import fold_cases, load_or_create_splits, make_splits
from medseg.errors import ConfigError, InputError


def test_five_folds_partition_the_cases_and_are_seeded():
    ids = [f"case_{i:03d}" for i in range(23)]
    splits = make_splits(ids, seed=7)
    vals = [set(s["val"]) for s in splits]
    assert len(splits) == 5
    assert set().union(*vals) == set(ids)
    assert sum(len(v) for v in vals) == len(ids)  # disjoint
    assert {len(v) for v in vals} <= {4, 5}
    for s in splits:
        assert set(s["train"]) == set(ids) - set(s["val"])
    assert make_splits(ids, seed=7) == splits
    assert make_splits(ids, seed=8) != splits


def test_splits_file_is_written_then_reused(tmp_path):
    ids = [f"c{i}" for i in range(10)]
    first = load_or_create_splits(tmp_path, ids, seed=1)
    assert json.loads((tmp_path / "splits.json").read_text()) == first
    assert load_or_create_splits(tmp_path, ids, seed=999) == first  # the file wins over the seed
    with pytest.raises(ConfigError, match="splits.json"):
        load_or_create_splits(tmp_path, ids + ["new"], seed=1)


def test_manifest_fold_column_wins(tmp_path):
    cases = [{"case_id": f"c{i}", "fold": i % 2} for i in range(6)]
    (tmp_path / "manifest.json").write_text(json.dumps({"cases": cases}))
    splits = load_or_create_splits(tmp_path, [c["case_id"] for c in cases])
    assert len(splits) == 2
    assert splits[1]["val"] == ["c1", "c3", "c5"]


def test_fold_none_trains_on_everything_and_bad_fold_is_refused():
    ids = [f"c{i}" for i in range(5)]
    splits = make_splits(ids)
    assert fold_cases(splits, None, ids) == (ids, [])
    train, val = fold_cases(splits, 2, ids)
    assert len(val) == 1 and val[0] not in train
    with pytest.raises(ConfigError):
        fold_cases(splits, 5, ids)
    with pytest.raises(InputError):
        make_splits(ids[:3])
