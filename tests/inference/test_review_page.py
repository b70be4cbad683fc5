"""`medseg infer --report`: the review page of a real run, its numbers against the written mask, and
the MLflow UI's page of the run that logged it, both loaded in headless Chromium."""

from __future__ import annotations

import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from browser_helpers import LOOPBACK_ONLY, assert_not_blank, run_chromium
from cli_helpers import run
from medseg.io import read_volume

sys.path.insert(0, str(Path(__file__).parents[1] / "cli"))
from mlflow_test_helpers import free_port, stop_group, wait_for_http  # noqa: E402


class Tags(HTMLParser):
    def __init__(self, text):
        super().__init__()
        self.tags = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def infer_with_report(real_data, tiny_bundle, out, *extra):
    series = real_data / "dicom" / "tcia_mr_oblique" / "11_HCropVolume"
    code = run("infer", series, "-o", out, "--format", "nifti,dicom-seg", "--report", "--model", tiny_bundle,
               "--device", "cpu", "--precision", "fp32", *extra)
    assert code == 0
    return series


def test_infer_report_shows_the_written_mask(real_data, tiny_bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    series = infer_with_report(real_data, tiny_bundle, tmp_path / "out")
    page = tmp_path / "out" / "report.html"
    assert f"review page: {page}" in capsys.readouterr().out
    text = page.read_text()
    (mask_file,) = (tmp_path / "out").glob("*.nii.gz")
    mask = read_volume(mask_file)
    ml = float((np.asarray(mask.array) == 1).sum() * np.prod(mask.spacing) / 1000)
    assert ml > 0, "the blob model found nothing: the volume check would be vacuous"
    case = mask_file.name[: -len(".nii.gz")]
    assert f'id="case-{case}"' in text and "<th>blob (ml)</th>" in text and f"<td>{ml:.2f}</td>" in text
    tags = Tags(text).tags
    assert sum(1 for t, a in tags if t == "img" and a.get("src", "").startswith("data:image/png;base64,")) == 1
    assert "http://" not in text and "https://" not in text
    header = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
    for tag in ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "AccessionNumber"):  # no patient data
        value = str(header.get(tag, "") or "")
        if len(value) > 2:
            assert value not in text, tag


@pytest.mark.slow
def test_mlflow_ui_shows_the_infer_run_with_its_review_page(real_data, tiny_bundle, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from medseg import tracking

    port = free_port()
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "art"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in tracking.HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    try:
        wait_for_http(f"{uri}/health", server, timeout_s=300)  # ~10 s on a quiet machine, 125 s at load 18
        infer_with_report(real_data, tiny_bundle, tmp_path / "out")
        client = MlflowClient(uri)
        (run_info,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
                       if r.data.tags.get("medseg.command") == "infer"]
        assert "report.html" in {a.path for a in client.list_artifacts(run_info.info.run_id)}
        # the run's artifacts tab once the UI's scripts fetched the run: its name, id and the review page
        # (separate --screenshot runs of the UI hung past 180 s under load; one run gives DOM and picture)
        page = f"{uri}/#/experiments/{run_info.info.experiment_id}/runs/{run_info.info.run_id}/artifacts"
        shot = tmp_path / "chromium" / "ui.png"  # one Chromium run: the DOM and the screenshot of the same state
        done = run_chromium(page, tmp_path / "chromium", "--dump-dom", f"--screenshot={shot}", "--window-size=1200,900",
                            "--virtual-time-budget=20000", network=LOOPBACK_ONLY)
        rendered = done.stdout
        assert f">{run_info.info.run_name}<" in rendered and run_info.info.run_id in rendered and "report.html" in rendered
        assert_not_blank(np.asarray(Image.open(shot).convert("RGB")), min_colours=20)
    finally:
        stop_group(server)
