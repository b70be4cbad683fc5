"""Training plots (the `plots` extra, matplotlib): learning curves and validation overlays as PNG
(drawn with `medseg.plotting`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_curves(history: dict, path: Path) -> None:
    """Learning curves in three panels over epochs (1-based): training loss; validation Dice per
    class with their mean (raw) and the smoothed mean that picks the checkpoint; learning rate.
    Each panel's legend sits right of it, off the lines. history: the trainer's ("train_loss",
    "val_mean", "ema", and when recorded "val_dice" [epoch, {class: Dice}] and "lr" per epoch)."""
    from medseg.plotting import label_colours, pyplot, save_figure

    plt = pyplot()
    fig, (loss_ax, dice_ax, lr_ax) = plt.subplots(3, 1, figsize=(7, 7.5), sharex=True)
    epochs = range(1, len(history["train_loss"]) + 1)
    loss_ax.plot(epochs, history["train_loss"], "k.-", label="train loss")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("training loss", fontsize=9)
    dice_ax.set_title("validation Dice", fontsize=9)
    dice_ax.set_ylabel("Dice")
    per_class = history.get("val_dice") or []
    names = sorted({name for _, scores in per_class for name in scores})
    colours = label_colours(range(1, len(names) + 1))
    for n, name in enumerate(names, start=1):
        points = [(e + 1, scores[name]) for e, scores in per_class if name in scores]
        dice_ax.plot(*zip(*points), ".-", color=colours[n], label=name)
    if history.get("val_mean"):
        dice_ax.plot(*zip(*[(e + 1, v) for e, v in history["val_mean"]]), "k.-", lw=2, label="mean")
        dice_ax.plot(*zip(*[(e + 1, v) for e, v in history["ema"]]), "--", color="grey", label="mean, smoothed")
    else:
        dice_ax.text(0.5, 0.5, "no validation", ha="center", va="center", transform=dice_ax.transAxes)
    lr_ax.set_title("learning rate", fontsize=9)
    lr_ax.set_ylabel("lr")
    lr_ax.set_xlabel("epoch")
    if history.get("lr"):
        lr_ax.plot(range(1, len(history["lr"]) + 1), history["lr"], "b.-", label="lr (end of epoch)")
    else:
        lr_ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=lr_ax.transAxes)
    for ax in (loss_ax, dice_ax, lr_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    save_figure(fig, path)


def plot_overlay(model, workdir, case_id, plan, config, precision, device, path: Path) -> None:
    """A validation case on the preprocessed grid, through the slice with the most reference
    foreground: prediction filled, reference dashed, one colour per label with a legend."""
    from medseg.plotting import draw_labels, intensity_window, label_colours, label_legend, pyplot, save_figure
    from medseg.preprocess.cache import load_case
    from medseg.training.validation import predict_case

    plt = pyplot()
    case = load_case(workdir, case_id)
    pred = predict_case(model, case.image, plan, config, precision, device)
    label = np.asarray(case.label)
    image = np.asarray(case.image[0])
    z = int(np.argmax((label > 0).sum(axis=(0, 1)))) if (label > 0).any() else label.shape[2] // 2
    names = {v: name for v, name in enumerate(plan.labels[k] for k in sorted(plan.labels))}  # channel k = k-th label
    colours = label_colours(names)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    draw_labels(ax, image[:, :, z].T, intensity_window(image), names, colours, pred=pred[:, :, z].T, ref=label[:, :, z].T, origin="lower")
    ax.set_title(f"{case_id}: slice {z} / {label.shape[2]} (preprocessed grid)\nfilled: prediction, dashed: reference", fontsize=8)
    label_legend(fig, names, colours)
    fig.tight_layout()
    save_figure(fig, path)
