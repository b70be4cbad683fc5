"""The pictures a reviewer reads: overlays (one colour per label, a legend of the label names, the
image windowed by percentiles, case and slice in the titles) and learning curves (loss, Dice per
class, learning rate in their own panels, legends off the lines). Figure content, not pixels."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_rgb

import medseg.plotting as plotting
from medseg.io import write_volume
from medseg.volume import Volume

NAMES = {0: "background", 1: "liver", 2: "spleen", 3: "kidney"}


@pytest.fixture
def figures(monkeypatch):
    """Figures handed to save_figure, kept open for inspection (nothing is written)."""
    kept = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path, dpi=80: kept.append((fig, path)))
    yield kept
    for fig, _ in kept:
        plotting.pyplot().close(fig)


def legend_entries(legend):
    return [t.get_text() for t in legend.get_texts()]


def scene(shape=(40, 30, 12)):
    """An RAS volume with three labels in different slabs; label 3 (kidney) is on z = 9 only."""
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    image = np.random.default_rng(0).normal(100, 20, shape)
    image[0, 0, 0] = 1e6  # one hot voxel must not wash out the window
    ref = np.zeros(shape, np.uint8)
    ref[10:20, 5:15, 3:7] = 1
    ref[22:30, 10:20, 2:9] = 2
    ref[30:36, 20:26, 9] = 3
    ref[0:2, 0:2, :] = 255  # unannotated: neither drawn nor used to pick the slice
    pred = ref.copy()
    pred[pred == 255] = 0
    pred[12:22, 5:15, 3:8] = 1
    return Volume(image, affine), Volume(pred, affine), Volume(ref, affine)


def test_label_colours_are_distinct_and_stable():
    for n in (3, 10, 15, 40):
        colours = plotting.label_colours(range(n + 1))
        assert sorted(colours) == list(range(1, n + 1))  # background gets none
        assert len({tuple(np.round(c, 3)) for c in colours.values()}) == n
    assert plotting.label_colours([0, 5, 2])[2] == plotting.label_colours([0, 2, 5, 9])[2]  # by rank among the labels


def test_intensity_window_ignores_outliers():
    image = np.concatenate([np.linspace(0, 100, 10_000), [1e6, np.nan]])
    vmin, vmax = plotting.intensity_window(image)
    assert 0.5 < vmin < 2 and 98 < vmax < 100
    assert plotting.intensity_window(np.full(5, 7.0)) == (7.0, 8.0)  # a constant image still has a range


def test_overlay_names_case_slices_and_labels():
    image, pred, ref = scene()
    fig, indices = plotting.overlay_figure("case_7", NAMES, image=image, pred=pred, ref=ref,
                                           views=("axial", "coronal", "sagittal"), note="mean Dice 0.81")
    try:
        assert [ax.get_title() for ax in fig.axes] == [f"axial slice {indices['axial']} / 12", f"coronal slice {indices['coronal']} / 30",
                                                       f"sagittal slice {indices['sagittal']} / 40"]
        # the busiest reference slice along S (z unchanged from RAS to LPS): z 3..6 hold labels 1 and 2
        assert indices["axial"] in (3, 4, 5, 6)
        title = fig._suptitle.get_text()
        assert "case_7" in title and "mean Dice 0.81" in title and "dashed: reference" in title
        (legend,) = fig.legends
        assert legend_entries(legend) == ["liver", "spleen", "kidney"]
        colours = [tuple(patch.get_facecolor()[:3]) for patch in legend.get_patches()]
        assert len(set(colours)) == 3
        # the grey image is windowed by percentiles, not by the single 1e6 voxel
        grey = fig.axes[0].images[0]
        vmin, vmax = grey.get_clim()
        assert 30 < vmin < 100 < vmax < 200
        # the outlines drawn on the axial panel are in the legend's colours, none in another
        drawn = {tuple(np.round(to_rgb(c), 3)) for coll in fig.axes[0].collections for c in np.atleast_2d(coll.get_edgecolor())}
        assert drawn <= {tuple(np.round(c, 3)) for c in colours} and len(drawn) >= 2
        # the legend sits right of every panel
        fig.canvas.draw()
        right = max(ax.get_window_extent().x1 for ax in fig.axes)
        assert legend.get_window_extent().x0 >= right - 1
    finally:
        plotting.pyplot().close(fig)


def test_overlay_without_image_or_reference():
    _, pred, _ = scene()
    fig, indices = plotting.overlay_figure("c", NAMES, pred=pred)
    try:
        assert legend_entries(fig.legends[0]) == ["liver", "spleen", "kidney"]
        assert "dashed" not in fig._suptitle.get_text()  # nothing dashed to explain
    finally:
        plotting.pyplot().close(fig)
    with pytest.raises(ValueError):
        plotting.overlay_figure("c", NAMES)


def test_evaluate_worst_case_overlays_use_label_names(tmp_path, figures):
    from medseg.evaluation import evaluate, plot_overlays

    image, pred, ref = scene()
    for folder, volume in (("pred", pred), ("ref", ref), ("img", image)):
        (tmp_path / folder).mkdir()
        write_volume(volume, tmp_path / folder / "c1.nii.gz")
    report = evaluate(tmp_path / "pred", tmp_path / "ref", label_names={k: v for k, v in NAMES.items()})
    paths = plot_overlays(report, tmp_path / "plots", images=tmp_path / "img", n=1)
    assert [p.name for p in paths] == ["worst_1_c1.png"]
    ((fig, path),) = figures
    assert path == paths[0]
    assert legend_entries(fig.legends[0]) == ["liver", "spleen", "kidney"]
    assert "c1" in fig._suptitle.get_text() and "slice" in fig.axes[0].get_title()
    assert fig.axes[0].images[0].get_array().shape == (30, 40)  # the scan is drawn under the labels


def history(epochs=6):
    lr = [0.01 * (1 - e / epochs) ** 0.9 for e in range(epochs)]
    val = [[e, {"ball": 0.1 * e, "box": 0.05 * e}] for e in range(1, epochs, 2)]
    return {"train_loss": [1.0 / (e + 1) for e in range(epochs)], "lr": lr, "val_dice": val,
            "val_mean": [[e, (d["ball"] + d["box"]) / 2] for e, d in val], "ema": [[e, 0.05 * e] for e, _ in val]}


def test_learning_curves_have_three_panels_with_legends_aside(tmp_path, figures):
    from medseg.training.plots import plot_curves

    h = history()
    plot_curves(h, tmp_path / "curves.png")
    ((fig, _),) = figures
    loss_ax, dice_ax, lr_ax = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["training loss", "validation Dice", "learning rate"]
    assert list(loss_ax.lines[0].get_ydata()) == h["train_loss"]
    assert list(lr_ax.lines[0].get_ydata()) == h["lr"] and list(lr_ax.lines[0].get_xdata()) == [1, 2, 3, 4, 5, 6]
    labels = [line.get_label() for line in dice_ax.lines]
    assert labels == ["ball", "box", "mean", "mean, smoothed"]
    assert list(dice_ax.lines[0].get_xdata()) == [2, 4, 6]  # 1-based epochs
    assert len({line.get_color() for line in dice_ax.lines}) == 4
    fig.canvas.draw()
    for ax in fig.axes:
        legend = ax.get_legend()
        assert legend is not None and legend.get_window_extent().x0 >= ax.get_window_extent().x1 - 1  # beside, not over


def test_learning_curves_without_validation_or_lr(tmp_path, figures):
    from medseg.training.plots import plot_curves

    plot_curves({"train_loss": [1.0, 0.5], "val_mean": [], "ema": []}, tmp_path / "c.png")
    ((fig, _),) = figures
    assert len(fig.axes) == 3
    assert [t.get_text() for t in fig.axes[1].texts] == ["no validation"]
    assert [t.get_text() for t in fig.axes[2].texts] == ["not recorded"]
