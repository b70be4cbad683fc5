"""Label maps drawn over images (the `plots` extra, matplotlib), for every picture medseg makes:
training overlays, `medseg evaluate`'s worst cases and the review page (`medseg.report`).

One colour per label (the same label always gets the same colour, with a legend of the label
names beside the image, never over it), the image windowed by intensity percentiles, the case
and the slice named in the titles. The prediction is filled (translucent) with its outline; the
reference, when there is one, is a dashed outline in the same colour.

Views of a `Volume` are drawn in radiological convention after reorienting to LPS (voxel axes
along patient left, posterior, superior): axial with the patient's right on the left and anterior
up, coronal and sagittal with superior up. A slice index is the index along the view's LPS axis
(for an axially acquired scan, its slice number in the file).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from medseg.extras import require
from medseg.volume import Volume

VIEWS = {"axial": 2, "coronal": 1, "sagittal": 0}  # view -> the LPS axis it cuts across
ORIGIN = {"axial": "upper", "coronal": "lower", "sagittal": "lower"}  # anterior up; superior up


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label_colours(labels: Iterable[int]) -> dict[int, tuple[float, float, float]]:
    """A distinct RGB colour per foreground label, by rank among the sorted labels (tab10 up to 10
    labels, tab20 up to 20, evenly spaced hues beyond)."""
    from matplotlib import colormaps
    from matplotlib.colors import hsv_to_rgb

    fg = sorted(int(v) for v in labels if int(v) != 0)
    if len(fg) <= 10:
        table = [colormaps["tab10"](i)[:3] for i in range(len(fg))]
    elif len(fg) <= 20:
        table = [colormaps["tab20"](i)[:3] for i in range(len(fg))]
    else:
        table = [tuple(hsv_to_rgb((i / len(fg), 0.85, 0.95))) for i in range(len(fg))]
    return {v: tuple(float(c) for c in rgb) for v, rgb in zip(fg, table)}


def intensity_window(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """(vmin, vmax): the `low` and `high` percentiles of the finite voxels (vmax > vmin always)."""
    values = np.asarray(image, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    vmin, vmax = (float(v) for v in np.percentile(values, [low, high]))
    if vmax <= vmin:
        vmin, vmax = float(values.min()), float(values.max())
    return (vmin, vmax) if vmax > vmin else (vmin, vmin + 1.0)


def draw_labels(ax, image: np.ndarray | None, window: tuple[float, float], names: dict[int, str], colours: dict,
                pred: np.ndarray | None = None, ref: np.ndarray | None = None, aspect: float = 1.0, origin: str = "upper") -> None:
    """One 2D panel: `image` (rows, cols) in grey over `window`, then per label the prediction
    filled with its outline and the reference as a dashed outline. Arrays are already (rows, cols)."""
    from matplotlib.colors import to_rgba

    shape = next(a.shape for a in (image, pred, ref) if a is not None)
    if image is not None:
        ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], origin=origin, aspect=aspect, interpolation="nearest")
    else:
        ax.imshow(np.zeros(shape), cmap="gray", vmin=0, vmax=1, origin=origin, aspect=aspect)
    for value in sorted(names):
        if value == 0 or value not in colours:
            continue
        colour = colours[value]
        if pred is not None and (pred == value).any():
            fill = np.zeros((*shape, 4))
            fill[pred == value] = to_rgba(colour, 0.35)
            ax.imshow(fill, origin=origin, aspect=aspect, interpolation="nearest")
            ax.contour((pred == value).astype(float), levels=[0.5], colors=[colour], linewidths=1.0, origin=origin)
        if ref is not None and (ref == value).any():
            ax.contour((ref == value).astype(float), levels=[0.5], colors=[colour], linewidths=1.2, linestyles="dashed", origin=origin)
    ax.set_xticks([])
    ax.set_yticks([])


def label_legend(fig, names: dict[int, str], colours: dict, with_reference: bool = False):
    """A figure legend right of the panels: one patch per foreground label, named as in `names`
    (in label order); the line styles are explained in the figure's title, not here."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=colours[v], edgecolor=colours[v], label=names[v]) for v in sorted(names) if v != 0 and v in colours]
    if not handles:
        return None
    return fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8, frameon=False,
                      title="labels", title_fontsize=8)


def busiest_index(mask: np.ndarray, axis: int) -> int:
    """The index along `axis` where `mask` (bool, 3D) has the most voxels; the middle if empty."""
    counts = mask.sum(axis=tuple(a for a in range(3) if a != axis))
    return int(np.argmax(counts)) if counts.any() else mask.shape[axis] // 2


def view_slice(array: np.ndarray, view: str, index: int) -> np.ndarray:
    """(rows, cols) panel of an LPS-ordered (X, Y, Z) array, to draw with origin `ORIGIN[view]`."""
    if view == "axial":
        return array[:, :, index].T  # rows: posterior downwards; cols: patient left to the right
    if view == "coronal":
        return array[:, index, :].T  # rows: superior up; cols: patient left to the right
    return array[index, :, :].T  # sagittal: rows superior up; cols: posterior to the right


def _aspect(spacing: np.ndarray, view: str) -> float:
    rows, cols = {"axial": (1, 0), "coronal": (2, 0), "sagittal": (2, 1)}[view]
    return float(spacing[rows] / spacing[cols])


def overlay_figure(case_id: str, names: dict[int, str], image: Volume | None = None, pred: Volume | None = None,
                   ref: Volume | None = None, views: Iterable[str] = ("axial",), note: str = ""):
    """A figure with one panel per view through the busiest slice (of the reference, else the
    prediction), legend of `names` to the right, the case and slice indices in the titles.

    image, pred, ref: Volumes on one grid (image may have channels: the first is drawn); at least
    one of them. Returns (figure, {view: slice index}).
    """
    plt = pyplot()
    given = [v for v in (image, pred, ref) if v is not None]
    if not given:
        raise ValueError("overlay_figure needs an image, a prediction or a reference")
    lps = [v.reoriented("LPS") if v is not None else None for v in (image, pred, ref)]
    img, prd, rfr = (None if v is None else np.asarray(v.array) for v in lps)
    if img is not None and img.ndim == 4:
        img = img[0]
    grid = next(v for v in lps if v is not None)
    spacing = np.asarray(grid.spacing, float)
    window = intensity_window(img) if img is not None else (0.0, 1.0)
    colours = label_colours(names)
    fg = [v for v in names if v != 0]
    focus = next((np.isin(a, fg) for a in (rfr, prd) if a is not None and np.isin(a, fg).any()), None)  # not 255 (ignore)
    views = list(views)
    fig, axes = plt.subplots(1, len(views), figsize=(3.6 * len(views), 3.8), squeeze=False)
    indices = {}
    for ax, view in zip(axes[0], views):
        axis = VIEWS[view]
        index = busiest_index(focus, axis) if focus is not None else grid.spatial_shape[axis] // 2
        indices[view] = index
        panel = {name: view_slice(a, view, index) for name, a in (("image", img), ("pred", prd), ("ref", rfr)) if a is not None}
        draw_labels(ax, panel.get("image"), window, names, colours, pred=panel.get("pred"), ref=panel.get("ref"),
                    aspect=_aspect(spacing, view), origin=ORIGIN[view])
        ax.set_title(f"{view} slice {index} / {grid.spatial_shape[axis]}", fontsize=8)
    style = "filled: prediction, dashed: reference" if pred is not None and ref is not None else ""
    title = " - ".join(t for t in (case_id, note, style) if t)
    fig.suptitle(title, fontsize=9)
    label_legend(fig, names, colours)
    fig.tight_layout()
    return fig, indices


def save_figure(fig, path, dpi: int = 80) -> None:
    """Write `fig` as PNG through a temporary name (legend outside the axes kept), then close it."""
    from medseg.io.atomic import atomic_output

    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
    pyplot().close(fig)
