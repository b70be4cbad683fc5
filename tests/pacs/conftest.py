"""A real Orthanc (Debian's /usr/sbin/Orthanc with its DICOMweb plugin) on 127.0.0.1, free ports,
a generated configuration and a temporary storage folder; a tiny trained bundle; series helpers."""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
import requests
from module_loader import load_module
from pacs_helpers import free_port

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
REPO = Path(__file__).resolve().parents[2]
_inference = load_module(REPO / "tests" / "inference" / "conftest.py", "_pacs_inference_fixtures")


class Orthanc:
    """One Orthanc server: `start`, `stop` (its storage survives a restart), REST and DICOMweb URLs."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.http_port, self.dicom_port = free_port(), free_port()
        self.user, self.password = "medseg", secrets.token_hex(8)
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "medseg-test", "DicomAet": "ORTHANC",
            "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "storage"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True, "RegisteredUsers": {self.user: self.password},
            "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StableAge": 1,  # a series is "stable" (complete) 1 s after its last instance; the default is 60
            "SaveJobs": False, "HttpCompressionEnabled": False,
        }))
        self.process = None

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        return f"{self.rest}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return self.user, self.password

    def env(self) -> dict[str, str]:
        """The environment a medseg subprocess reads the credentials from."""
        return {**os.environ, "MEDSEG_PACS_USERNAME": self.user, "MEDSEG_PACS_PASSWORD": self.password, "OMP_NUM_THREADS": "1"}

    def start(self, timeout: float = 30) -> None:
        log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen([str(ORTHANC), str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.folder / 'orthanc.log'}")
            try:
                if requests.get(f"{self.rest}/system", auth=self.auth, timeout=1).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise RuntimeError("Orthanc did not answer within 30 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def upload(self, datasets) -> None:
        """Store instances through the REST API, as Part 10 files."""
        for ds in datasets:
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            answer = requests.post(f"{self.rest}/instances", data=buffer.getvalue(), auth=self.auth, timeout=30)
            answer.raise_for_status()

    def series(self, modality: str | None = None) -> list[dict]:
        """MainDicomTags (and ParentStudy) of every series, of `modality` if given."""
        found = [requests.get(f"{self.rest}/series/{i}", auth=self.auth, timeout=10).json()
                 for i in requests.get(f"{self.rest}/series", auth=self.auth, timeout=10).json()]
        return [s for s in found if modality is None or s["MainDicomTags"].get("Modality") == modality]

    def derived_for(self, series_uid: str, modality: str = "SEG") -> list[pydicom.Dataset]:
        """Every SEG (or RTSTRUCT) in Orthanc that references `series_uid`, read in full."""
        from medseg.pacs.outputs import referenced_series

        found = []
        for series in self.series(modality):
            for instance in series["Instances"]:
                raw = requests.get(f"{self.rest}/instances/{instance}/file", auth=self.auth, timeout=30).content
                ds = pydicom.dcmread(io.BytesIO(raw))
                if series_uid in referenced_series(ds):
                    found.append(ds)
        return found


@pytest.fixture(scope="session")
def orthanc_binary():
    if not ORTHANC.is_file() or not DICOMWEB_PLUGIN.is_file():
        pytest.fail(f"{ORTHANC} and {DICOMWEB_PLUGIN} are needed: apt-get install orthanc orthanc-dicomweb (.ci/run does)")
    return ORTHANC


@pytest.fixture(scope="module")
def orthanc(orthanc_binary, tmp_path_factory):
    """A running Orthanc for one test module; stopped (and its storage removed) afterwards."""
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.folder / "storage", ignore_errors=True)


@pytest.fixture(scope="session")
def pacs_bundle(tmp_path_factory):
    """The tiny blob segmenter of tests/inference (deterministic; finds bright regions in MR and CT)."""
    return _inference.train_tiny_bundle(tmp_path_factory.mktemp("pacs_bundle") / "blobs")
