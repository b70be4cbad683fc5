"""Issue 23, item 4: a missed structure is penalised (never a NaN dropped from a mean), empty-vs-empty
pairs are left out of means unless counted, and training validation's headline is the raw Dice.
Every expected number is worked out by hand in the comments."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from medseg.evaluation import EvaluationReport, format_report, summary_of
from medseg.metrics import dice_per_class, distance_penalty, summarise
from medseg.metrics.case import array_metrics
from medseg.training.validation import class_means, smoothed

SPACING = (2.0, 1.0, 0.5)
SHAPE = (4, 5, 6)  # extent 8 x 5 x 3 mm: diagonal sqrt(64 + 25 + 9) = sqrt(98) = 9.899 mm


def box(start, stop, shape=SHAPE, label=1) -> np.ndarray:
    array = np.zeros(shape, np.uint8)
    array[tuple(slice(a, b) for a, b in zip(start, stop))] = label
    return array


def test_the_penalty_is_the_image_diagonal_in_mm():
    assert distance_penalty(SHAPE, SPACING) == pytest.approx(math.sqrt(98))
    assert distance_penalty((240, 240, 155), (1, 1, 1)) == pytest.approx(373.13, abs=0.01)  # BraTS's 374 mm


def test_missed_and_false_structures_get_the_penalty_not_nan():
    ref = box((1, 1, 1), (3, 3, 3))
    empty = np.zeros(SHAPE, np.uint8)
    (missed,) = array_metrics(empty, ref, SPACING, labels=[1])
    (false,) = array_metrics(ref, empty, SPACING, labels=[1])
    for row in (missed, false):
        assert row["dice"] == 0.0 and row["nsd"] == 0.0 and row["both_empty"] == 0
        assert row["hd95"] == row["assd"] == pytest.approx(math.sqrt(98))
    (fixed,) = array_metrics(empty, ref, SPACING, labels=[1], penalty_mm=374.0)
    assert fixed["hd95"] == fixed["assd"] == 374.0


def test_the_mean_hd95_over_a_found_and_a_missed_case():
    """The issue's case: a missed structure made the printed mean HD95 0.0000."""
    ref = box((1, 1, 1), (3, 3, 3))
    found = box((1, 1, 1), (3, 3, 3))  # identical: HD95 0
    missed = np.zeros(SHAPE, np.uint8)
    rows = [{"case_id": "found", **r} for r in array_metrics(found, ref, SPACING, labels=[1])]
    rows += [{"case_id": "missed", **r} for r in array_metrics(missed, ref, SPACING, labels=[1])]
    summary = summarise(rows)
    assert summary["per_class"][1]["hd95"]["mean"] == pytest.approx((0 + math.sqrt(98)) / 2)  # 4.95 mm
    assert summary["per_class"][1]["hd95"]["n"] == 2 and summary["per_class"][1]["hd95"]["n_nan"] == 0
    assert summary["per_class"][1]["dice"]["mean"] == pytest.approx(0.5)
    report = EvaluationReport(rows=rows, summary=summary, tolerance_mm=1.0, pairs={"found": (None, None), "missed": (None, None)})
    table = format_report(report)
    assert "4.9497" in table and "nan" not in table


def test_empty_pairs_are_left_out_unless_counted():
    """Label 1 overlaps half (Dice 2*4/(8+8) = 0.5) in case a; label 2 is absent from both in case a
    and exact in case b (Dice 1); label 3 is absent from both everywhere."""
    ref_a, pred_a = box((0, 0, 0), (2, 2, 2)), box((1, 0, 0), (3, 2, 2))
    ref_b = box((0, 0, 0), (2, 2, 2), label=2)
    rows = [{"case_id": "a", **r} for r in array_metrics(pred_a, ref_a, SPACING, labels=[1, 2, 3])]
    rows += [{"case_id": "b", **r} for r in array_metrics(ref_b, ref_b, SPACING, labels=[2, 3])]
    assert [r["both_empty"] for r in rows] == [0, 1, 1, 0, 1]
    left_out = summary_of(rows)
    assert left_out["per_class"][1]["dice"]["mean"] == pytest.approx(0.5)
    assert left_out["per_class"][2]["dice"]["mean"] == 1.0 and left_out["per_class"][2]["dice"]["n_empty"] == 1
    assert math.isnan(left_out["per_class"][3]["dice"]["mean"]) and left_out["per_class"][3]["dice"]["n_empty"] == 2
    assert left_out["mean"]["dice"] == pytest.approx((0.5 + 1.0) / 2)  # 0.75: label 3 scores nothing
    counted = summary_of(rows, count_empty=True)
    assert counted["per_class"][2]["dice"]["n"] == 2 and counted["per_class"][3]["dice"]["mean"] == 1.0
    assert counted["mean"]["dice"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)  # 0.8333: the flattering reading


def test_validation_leaves_empty_pairs_out_of_its_class_means():
    pred, ref = box((1, 0, 0), (3, 2, 2)), box((0, 0, 0), (2, 2, 2))
    assert dice_per_class(pred, ref, [1, 2]) == {1: 0.5, 2: 1.0}
    marked = dice_per_class(pred, ref, [1, 2], empty=math.nan)
    assert marked[1] == 0.5 and math.isnan(marked[2])
    # sums and counts per class over the validation cases: label 2 never present anywhere
    assert class_means({"a": (1.5, 2), "b": (0.0, 0)}) == {"a": 0.75, "mean": 0.75}
    assert class_means({"a": (0.0, 0)}) == {"a": 1.0, "mean": 1.0}


def test_the_headline_is_the_raw_dice_and_the_smoothed_one_lags():
    """With alpha 0.9 the EMA of a run that climbs to 0.83 reads about 0.70 (the issue saw 0.72)."""
    raw = [0.3, 0.55, 0.65, 0.72, 0.76, 0.78, 0.8, 0.81, 0.82, 0.82, 0.83, 0.83, 0.83, 0.83, 0.83, 0.83]
    ema = None
    for value in raw:
        ema = smoothed(ema, value, 0.9)
    assert smoothed(None, 0.3, 0.9) == 0.3 and smoothed(0.3, 0.55, 0.9) == pytest.approx(0.325)
    assert ema == pytest.approx(0.6998, abs=1e-4)


def test_trainer_logs_raw_dice_as_headline_and_the_ema_beside_it(monkeypatch):
    import medseg.training.validation as validation
    from medseg.training.trainer import Trainer

    scores = iter([{"ball": 0.4, "mean": 0.4}, {"ball": 0.8, "mean": 0.8}])
    monkeypatch.setattr(validation, "validate", lambda *args, **kwargs: next(scores))
    trainer = SimpleNamespace(
        model=None, eval_model=None, workdir=None, val_ids=["x"], run_plan=None, config=SimpleNamespace(ema_alpha=0.9), precision=None,
        device="cpu", labels={}, dist=SimpleNamespace(is_main=True), ema=None, best_ema=-math.inf,
        history={"train_loss": [], "val_mean": [], "ema": []}, _weights=lambda: {"w": 1},
    )
    for epoch in range(2):
        metrics: dict[str, float] = {}
        Trainer.validate_epoch(trainer, epoch, metrics)
    assert metrics["val_dice_mean"] == 0.8  # the raw Dice of the epoch
    assert metrics["val_dice_smoothed"] == pytest.approx(0.9 * 0.4 + 0.1 * 0.8)  # 0.44
    assert "val_dice_ema" not in metrics
    assert trainer.history["val_mean"] == [[0, 0.4], [1, 0.8]]
