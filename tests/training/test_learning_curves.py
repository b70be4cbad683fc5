"""The trainer records what the learning curves draw: the learning rate per epoch and the
validation Dice per class (tests/test_plotting.py checks the drawing itself)."""

from __future__ import annotations

import sys

import pytest

import medseg.plotting as plotting


@pytest.mark.slow
def test_training_records_lr_and_dice_per_class_for_the_curves(tiny_config, tiny_workdir, monkeypatch, tmp_path):
    import torch

    from medseg.training.loop import train
    from medseg.training.plots import plot_curves

    monkeypatch.setitem(sys.modules, "mlflow", None)  # no tracking: the history is in the training state
    result = train(tiny_workdir, tiny_config(), preset_name="unet3d", fold=0, echo=lambda *_: None)
    state = torch.load(result.bundle_dir / "training_state.pt", weights_only=True, map_location="cpu")
    h = state["history"]
    assert len(h["lr"]) == len(h["train_loss"]) == result.epochs_done
    assert h["lr"][0] > h["lr"][-1] >= 0  # the poly schedule anneals (to 0 after the last step)
    assert [sorted(d) for _, d in h["val_dice"]] == [["ball", "box"]] * len(h["val_mean"])
    kept = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path, dpi=80: kept.append(fig))
    plot_curves(h, tmp_path / "c.png")
    assert [line.get_label() for line in kept[0].axes[1].lines] == ["ball", "box", "mean", "mean, smoothed"]
    plotting.pyplot().close(kept[0])
