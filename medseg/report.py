"""The review page of an inference run (`medseg infer --report`): one self-contained HTML file.

Per case: axial, coronal and sagittal views through the busiest slices (one colour per label,
legend, `medseg.plotting`), the volume of each label in ml and warnings; a summary table on top.
Images are embedded as base64 PNG, the style sheet is inline: the page makes no request, so it
can be mailed or archived. It names cases by their case id only (no patient name, ID or date).

Warnings (each one line):
- empty mask: no voxel of any label;
- a label touching the image border (the structure may be cut off by the field of view), with
  the sides it touches in patient terms (right/left, anterior/posterior, inferior/superior);
- very small components: pieces of a label other than its largest that are smaller than
  `SMALL_FRACTION` of the largest (often stray false positives), with the count and the smallest.
"""

from __future__ import annotations

import base64
import html
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.volume import Volume

SMALL_FRACTION = 0.1  # a component under 10% of its label's largest is reported as very small
# faces of an LPS-ordered volume: (axis, low side, high side) in patient terms
SIDES = ((0, "right", "left"), (1, "anterior", "posterior"), (2, "inferior", "superior"))


@dataclass
class CaseReview:
    """What the page shows of one case: views (PNG bytes), ml per label name, warnings."""

    case_id: str
    volumes_ml: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    png: bytes = b""
    shape: tuple[int, int, int] = (0, 0, 0)
    spacing_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)


def label_volumes_ml(labels: Volume, names: dict[int, str]) -> dict[str, float]:
    """{name: volume in ml} of every foreground label of `names` (0.0 when absent)."""
    voxel_ml = float(np.prod(labels.spacing)) / 1000.0
    array = np.asarray(labels.array)
    values, counts = np.unique(array, return_counts=True)
    found = dict(zip(values.tolist(), counts.tolist()))
    return {name: found.get(value, 0) * voxel_ml for value, name in sorted(names.items()) if value != 0}


def case_warnings(labels: Volume, names: dict[int, str]) -> list[str]:
    """The warnings of one label map (see the module docstring), in label order."""
    from scipy import ndimage

    lps = labels.reoriented("LPS")
    array = np.asarray(lps.array)
    fg = [v for v in sorted(names) if v != 0]
    if not np.isin(array, fg).any():
        return ["empty mask: no voxel of any label"]
    voxel_ml = float(np.prod(lps.spacing)) / 1000.0
    out = []
    for value in fg:
        mask = array == value
        if not mask.any():
            continue
        sides = [side for axis, low, high in SIDES for side, index in ((low, 0), (high, -1))
                 if np.take(mask, index, axis=axis).any()]
        if sides:
            out.append(f"'{names[value]}' touches the image border ({', '.join(sides)}): it may be cut off by the field of view")
        components, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
        if n > 1:
            sizes = np.bincount(components.ravel())[1:]
            small = sizes[sizes < SMALL_FRACTION * sizes.max()]
            if small.size:
                out.append(f"'{names[value]}' has {small.size} very small component(s) besides its largest "
                           f"({sizes.max() * voxel_ml:.2f} ml), the smallest {small.min() * voxel_ml:.3f} ml")
    return out


def review_case(case_id: str, labels: Volume, names: dict[int, str], image: Volume | None = None, dpi: int = 80) -> CaseReview:
    """The review of one case: labels (X, Y, Z) on the image's grid, names {value: name}."""
    from medseg.plotting import overlay_figure, pyplot

    fig, _ = overlay_figure(case_id, names, image=image if image is not None and image.same_geometry(labels) else None,
                            pred=labels, views=("axial", "coronal", "sagittal"))
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png", bbox_inches="tight")
    pyplot().close(fig)
    return CaseReview(case_id, label_volumes_ml(labels, names), case_warnings(labels, names), buffer.getvalue(),
                      tuple(int(s) for s in labels.spatial_shape), tuple(float(s) for s in labels.spacing))


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.failed td { background: #fde2e2; }
tr.failed td:last-child { text-align: left; }
td.warn { background: #fff3cd; }
section.case { border-top: 2px solid #888; margin-top: 1.5em; padding-top: 0.5em; }
ul.warnings li { color: #8a4b00; }
img.views { max-width: 100%; }
.meta { color: #666; font-size: 0.9em; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def render_html(reviews: list[CaseReview], failures: list[tuple[str, str]] = (), title: str = "medseg review",
                run_info: dict | None = None) -> str:
    """The page as a string: run facts, the summary table, then one section per case."""
    names = list(dict.fromkeys(name for r in reviews for name in r.volumes_ml))
    info = {"written": time.strftime("%Y-%m-%d %H:%M:%S"), **(run_info or {})}
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{_e(title)}</h1>",
             "<p class=\"meta\">" + "; ".join(f"{_e(k)}: {_e(v)}" for k, v in info.items()) + "</p>",
             f"<h2>Summary: {len(reviews)} case(s) segmented, {len(failures)} failed, "
             f"{sum(bool(r.warnings) for r in reviews)} with warnings</h2>",
             "<table id=\"summary\"><thead><tr><th>case</th><th>result</th>"
             + "".join(f"<th>{_e(n)} (ml)</th>" for n in names) + "<th>warnings</th></tr></thead><tbody>"]
    for r in reviews:
        cells = "".join(f"<td>{r.volumes_ml[n]:.2f}</td>" if n in r.volumes_ml else "<td></td>" for n in names)
        warn = f"<td class=\"warn\">{len(r.warnings)}</td>" if r.warnings else "<td>0</td>"
        parts.append(f"<tr><td><a href=\"#case-{_e(r.case_id)}\">{_e(r.case_id)}</a></td><td>ok</td>{cells}{warn}</tr>")
    for case_id, message in failures:
        parts.append(f"<tr class=\"failed\"><td>{_e(case_id)}</td><td>FAILED</td><td colspan=\"{len(names) + 1}\">{_e(message)}</td></tr>")
    parts.append("</tbody></table>")
    for r in reviews:
        encoded = base64.b64encode(r.png).decode("ascii")
        parts += [f"<section class=\"case\" id=\"case-{_e(r.case_id)}\"><h2>{_e(r.case_id)}</h2>",
                  f"<p class=\"meta\">{r.shape[0]} x {r.shape[1]} x {r.shape[2]} voxels of "
                  f"{r.spacing_mm[0]:.2f} x {r.spacing_mm[1]:.2f} x {r.spacing_mm[2]:.2f} mm</p>",
                  f"<img class=\"views\" alt=\"axial, coronal and sagittal views of {_e(r.case_id)}\" src=\"data:image/png;base64,{encoded}\">",
                  "<table class=\"volumes\"><thead><tr><th>label</th><th>volume (ml)</th></tr></thead><tbody>"
                  + "".join(f"<tr><td>{_e(n)}</td><td>{v:.2f}</td></tr>" for n, v in r.volumes_ml.items()) + "</tbody></table>"]
        if r.warnings:
            parts.append("<ul class=\"warnings\">" + "".join(f"<li>{_e(w)}</li>" for w in r.warnings) + "</ul>")
        else:
            parts.append("<p class=\"ok\">no warnings</p>")
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(path: str | os.PathLike, reviews: list[CaseReview], failures: list[tuple[str, str]] = (),
                 title: str = "medseg review", run_info: dict | None = None) -> Path:
    """Write the page to `path` (through a temporary name); returns the path."""
    from medseg.io.atomic import atomic_output

    path = Path(path)
    with atomic_output(path) as tmp:
        Path(tmp).write_text(render_html(reviews, failures, title, run_info), encoding="utf-8")
    return path


def plan_page(outputs: dict[str, Path], output: Path | None, into_folder: bool) -> Path:
    """Where `medseg infer --report` writes the page, checked before any work: report.html in the
    output folder, or <mask name>_report.html beside a single output file. Needs matplotlib."""
    from medseg.extras import require
    from medseg.io.atomic import check_output_dir, full_suffix

    require("matplotlib")  # the `plots` extra draws the views
    if into_folder:
        return (output if output is not None else Path(".")) / "report.html"
    first = outputs.get("nifti", next(iter(outputs.values())))
    path = first.with_name(first.name[: len(first.name) - len(full_suffix(first))] + "_report.html")
    check_output_dir(path)
    return path


def review_batch(result, cases, outputs, path: Path, predictor, series: str | None = None, run_info: dict | None = None) -> Path:
    """The page of a `medseg.batch` run: every case segmented now or before (a rerun's skipped ones),
    its scan read again with the class mask it wrote (`labels_from_outputs`), one at a time; failed
    cases listed with their error. cases, outputs: the batch's [(case id, paths)] and their files."""
    from medseg.api import read_scan
    from medseg.errors import MedsegError

    names = {int(k): str(v) for k, v in predictor.labels.items()}
    wanted = {r.case_id for r in result.done} | set(result.skipped)
    reviews = []
    for (case_id, paths), targets in zip(cases, outputs):
        if case_id not in wanted:
            continue
        try:
            scan = read_scan(paths, series=series, **predictor.read_options)
            labels = labels_from_outputs(targets, scan)
        except MedsegError as exc:  # the masks are written; a case the page cannot show is named on it
            reviews.append(CaseReview(case_id, {}, [f"not reviewed: {exc}"]))
            continue
        if labels is None:
            reviews.append(CaseReview(case_id, {}, ["no class mask among the outputs (only RTSTRUCT or instances): "
                                                    "add nifti or dicom-seg to --format to review it"]))
            continue
        reviews.append(review_case(case_id, labels, names, image=scan.volumes[0]))
    info = {"model": predictor.bundle.model_name, "models in the ensemble": len(predictor.bundles), **(run_info or {})}
    return write_report(path, reviews, result.failures, title="medseg infer: review", run_info=info)


def labels_from_outputs(outputs: dict[str, Path], scan) -> Volume | None:
    """The class label map a case's outputs hold, on `scan`'s grid: the NIfTI mask, else the SEG
    read back onto the series; None when neither was written (RTSTRUCT/instance outputs only)."""
    from medseg.io import read_volume

    if "nifti" in outputs:
        return read_volume(outputs["nifti"])
    if "dicom-seg" in outputs and scan.datasets is not None:
        from medseg.io.dicom import read_dicom_seg

        array, _ = read_dicom_seg(outputs["dicom-seg"], scan.datasets)
        return Volume(np.asarray(array), scan.volumes[0].affine)
    return None
