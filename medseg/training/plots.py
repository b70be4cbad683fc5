"""Training plots (the `plots` extra, matplotlib): learning curves and validation overlays as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: dict, path: Path) -> None:
    """Train loss per epoch; validation Dice and its EMA on a second axis when there are any."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(history["train_loss"]) + 1), history["train_loss"], label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if history["val_mean"]:
        ax2 = ax.twinx()
        e, v = zip(*history["val_mean"])
        ax2.plot([x + 1 for x in e], v, "g.-", label="val Dice")
        e, v = zip(*history["ema"])
        ax2.plot([x + 1 for x in e], v, "g--", label="val Dice EMA")
        ax2.set_ylabel("Dice")
        ax2.legend(loc="lower right")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_overlay(model, workdir, case_id, plan, config, precision, device, path: Path) -> None:
    """Image slice through the most foreground, reference contour in green, prediction in red."""
    from medseg.preprocess.cache import load_case
    from medseg.training.validation import predict_case

    plt = _pyplot()
    case = load_case(workdir, case_id)
    pred = predict_case(model, case.image, plan, config, precision, device)
    label = np.asarray(case.label)
    z = int(np.argmax((label > 0).sum(axis=(0, 1)))) if (label > 0).any() else label.shape[2] // 2
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(np.asarray(case.image[0, :, :, z]).T, cmap="gray", origin="lower")
    ax.contour((label[:, :, z] > 0).T, levels=[0.5], colors="lime", linewidths=1)
    ax.imshow(np.ma.masked_equal(pred[:, :, z].T, 0), cmap="autumn", alpha=0.4, origin="lower")
    ax.set_title(f"{case_id} (green: reference, red: prediction)", fontsize=8)
    ax.axis("off")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
