"""The review page (medseg.report): volumes in ml, warnings, a self-contained HTML page that
headless Chromium renders with the network off and that requests nothing."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
import pytest

from browser_helpers import assert_not_blank, dom, has_colour, screenshot
from medseg.report import case_warnings, label_volumes_ml, render_html, review_case, write_report
from medseg.volume import Volume

NAMES = {0: "background", 1: "liver", 2: "spleen"}
AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])  # RAS; a voxel is 1.6 mm^3


def labels(shape=(40, 30, 12)):
    array = np.zeros(shape, np.uint8)
    array[10:20, 5:15, 3:7] = 1  # 400 voxels: 0.64 ml
    array[22:30, 10:20, 4:8] = 2  # 320 voxels
    return array


def test_volumes_are_voxel_counts_times_voxel_volume():
    volumes = label_volumes_ml(Volume(labels(), AFFINE), {**NAMES, 3: "kidney"})
    assert volumes == pytest.approx({"liver": 400 * 1.6e-3, "spleen": 320 * 1.6e-3, "kidney": 0.0})


def test_warnings_empty_border_and_small_components():
    assert case_warnings(Volume(np.zeros((8, 8, 8), np.uint8), AFFINE), NAMES) == ["empty mask: no voxel of any label"]
    assert case_warnings(Volume(labels(), AFFINE), NAMES) == []
    array = labels()
    array[2, 2, 2] = 1  # a 1-voxel stray piece of liver: under 10% of the 400-voxel component
    array[22:30, 10:20, 8:12] = 2  # spleen now reaches the last slice (z = 11): superior in RAS
    array[39, 0, 5] = 2  # and a stray voxel on an edge of the image
    warnings = case_warnings(Volume(array, AFFINE), NAMES)
    assert len(warnings) == 3
    assert warnings[0] == "'liver' has 1 very small component(s) besides its largest (0.64 ml), the smallest 0.002 ml"
    # in RAS voxels x = 39 is the patient's rightmost side, y = 0 the posterior one, z = 11 superior
    assert warnings[1].startswith("'spleen' touches the image border (right, posterior, superior)")
    assert warnings[2].startswith("'spleen' has 1 very small component(s)")
    two_pieces = labels()
    two_pieces[30:39, 20:29, 3:7] = 1  # a second liver piece as large as the first: not "very small"
    assert case_warnings(Volume(two_pieces, AFFINE), NAMES) == []


class Elements(HTMLParser):
    """Tags with their attributes, and the text, of a page."""

    def __init__(self, text):
        super().__init__()
        self.tags, self.text = [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag, **attrs):
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]


def page(tmp_path):
    rng = np.random.default_rng(0)
    image = Volume(rng.normal(100, 20, (40, 30, 12)), AFFINE)
    reviews = [review_case("case_a", Volume(labels(), AFFINE), NAMES, image=image),
               review_case("case_b", Volume(np.zeros((40, 30, 12), np.uint8), AFFINE), NAMES, image=image)]
    return write_report(tmp_path / "report.html", reviews, [("case_c", "case_c.nii.gz: not a NIfTI file")],
                        run_info={"model": "unet3d"}), reviews


def test_page_is_self_contained_with_summary_and_one_section_per_case(tmp_path):
    path, reviews = page(tmp_path)
    text = path.read_text()
    html = Elements(text)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)  # nothing fetched from anywhere
    assert not html.find("script") and not html.find("link") and not html.find("iframe")
    assert [a["id"] for a in html.find("section", **{"class": "case"})] == ["case-case_a", "case-case_b"]
    images = html.find("img", **{"class": "views"})
    assert len(images) == 2 and all(a["src"].startswith("data:image/png;base64,") for a in images)
    assert [a["href"] for a in html.find("a")] == ["#case-case_a", "#case-case_b"]
    summary = text[text.index('<table id="summary">'): text.index("</table>")]
    assert summary.count("<tr") == 4  # header, two cases, the failed one
    assert "<th>liver (ml)</th><th>spleen (ml)</th>" in summary and "<td>0.64</td><td>0.51</td>" in summary
    assert "FAILED" in summary and "not a NIfTI file" in summary
    assert "empty mask: no voxel of any label" in "".join(html.text)
    assert reviews[1].warnings == ["empty mask: no voxel of any label"]


def test_case_ids_and_messages_are_escaped():
    review = review_case("<b>x</b>", Volume(labels(), AFFINE), NAMES)
    text = render_html([review], [("y&z", "<script>alert(1)</script>")])
    assert "<b>x</b>" not in text and "&lt;b&gt;x&lt;/b&gt;" in text and "<script>" not in text


@pytest.mark.slow
def test_page_renders_in_headless_chromium_offline_and_requests_nothing(tmp_path):
    path, _ = page(tmp_path)
    pixels, requested = screenshot(path.as_uri(), tmp_path / "chromium")
    assert requested == []  # the net log: the page asked for nothing over the network
    assert_not_blank(pixels)
    # the embedded overlays were drawn: the legend's label colours (tab10 blue, orange) are on screen
    assert has_colour(pixels, (31, 119, 180)) and has_colour(pixels, (255, 127, 14))
    rendered = Elements(dom(path.as_uri(), tmp_path / "chromium-dom"))
    assert len(rendered.find("section", **{"class": "case"})) == 2
    assert len(rendered.find("table", id="summary")) == 1 and len(rendered.find("table", **{"class": "volumes"})) == 2


@pytest.mark.slow
def test_a_page_that_fetches_something_is_caught(tmp_path):
    """The net-log check above can fail: a page with one remote image is reported."""
    path, _ = page(tmp_path)
    bad = tmp_path / "bad.html"
    bad.write_text(path.read_text().replace("</body>", '<img src="https://example.org/x.png"></body>'))
    _, requested = screenshot(bad.as_uri(), tmp_path / "chromium")
    assert requested == ["https://example.org/x.png"]
