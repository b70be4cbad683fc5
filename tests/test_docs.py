"""Every ```python block of docs/api.md (and of the README, should it get any) runs, in order, in one
namespace, from the repository root: the documented API cannot drift from the code.

The docs' placeholders come from the environment: MEDSEG_BUNDLE (the tiny trained blob bundle of
tests/inference), MEDSEG_OUT (a temporary folder), MEDSEG_DICOM (a small synthetic series on disk).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from module_loader import load_module

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    return FENCE.findall(path.read_text())


def test_the_docs_hold_examples_to_run():
    assert len(python_blocks(REPO / "docs" / "api.md")) >= 5
    assert python_blocks(REPO / "README.md") == [] or all(b.strip() for b in python_blocks(REPO / "README.md"))


@pytest.fixture(scope="module")
def docs_bundle(tmp_path_factory):
    inference = load_module(REPO / "tests" / "inference" / "conftest.py", "_docs_inference_fixtures")
    return inference.train_tiny_bundle(tmp_path_factory.mktemp("docs_bundle") / "blobs")


@pytest.mark.slow
@pytest.mark.parametrize("doc", ["docs/api.md", "README.md"])
def test_python_examples_run(doc, docs_bundle, tmp_path, monkeypatch):
    blocks = python_blocks(REPO / doc)
    if not blocks:
        assert doc == "README.md"  # docs/api.md must have examples (test above); the README may have none
        return
    api_tests = load_module(REPO / "tests" / "test_api.py", "_docs_api_tests")
    bundle = docs_bundle
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    image, _ = api_tests.blob_image(shape=(32, 32, 16), centre=(16, 14, 8))
    for k, ds in enumerate(api_tests.synthetic_series(image)):
        ds.save_as(dicom / f"{k:03d}.dcm", enforce_file_format=True)
    monkeypatch.setenv("MEDSEG_BUNDLE", str(bundle))
    monkeypatch.setenv("MEDSEG_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("MEDSEG_DICOM", str(dicom))
    with socket.socket() as s:  # a tracking server where nothing listens: training logs nowhere, at once
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{s.getsockname()[1]}")
    monkeypatch.chdir(REPO)
    namespace: dict = {"__name__": "__docs__"}
    for number, block in enumerate(blocks, start=1):
        try:
            exec(compile(block, f"{doc} python block {number}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"{doc}: python block {number} failed: {type(exc).__name__}: {exc}\n{block}") from exc
    assert not (REPO / "out").exists(), "an example wrote into the repository instead of MEDSEG_OUT"
