"""A DICOMweb client for medseg (over `dicomweb-client`): QIDO-RS search, WADO-RS retrieval of a
series into memory, STOW-RS of the SEG / RTSTRUCT, and `Client.segment` (the whole round trip).

    client = medseg.pacs.Client("http://localhost:8042/dicom-web")      # auth: see medseg.pacs.config
    results = client.segment(study_uid, medseg.load_model("work/models/unet3d"))

A series is held in memory as pydicom Datasets; past `memory_limit_mb` of pixel data the
instances are spilled to a temporary folder (pixel data then read from there on demand), removed
when the series is done. Instances are asked for in their stored transfer syntax (JPEG 2000 and
the like are decoded here, not by the server). Messages name UIDs and URLs, never patient data.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from medseg.errors import InputError, MedsegError
from medseg.extras import require
from medseg.pacs.config import PacsSettings, load_settings
from medseg.pacs.outputs import FORMATS, MODALITY, Algorithm, algorithm_of, algorithms_in, build_outputs, format_of, referenced_series

log = logging.getLogger(__name__)

# series of these modalities are never segmented (derived objects, documents, plans)
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "DOC", "REG", "FID", "PLAN"}
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)


class PacsError(MedsegError):
    """The PACS answered with an error, or a request could not be made."""


class PacsUnavailable(PacsError):
    """The PACS could not be reached (connection refused, DNS, timeout): worth retrying later."""


@dataclass
class RetrievedSeries:
    """A series fetched over WADO-RS: `datasets` with pixel data, in memory unless `folder` (spilled)."""

    datasets: list[Any]
    nbytes: int = 0
    folder: Path | None = None
    seconds: float = 0.0

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> "RetrievedSeries":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class SeriesResult:
    """What `Client.segment` did for one series: stored {format: SOPInstanceUID}, formats already
    present from this algorithm (`existing`), `empty` when the model found nothing, seconds per stage."""

    study_uid: str
    series_uid: str
    stored: dict[str, str] = field(default_factory=dict)
    existing: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # format -> why
    empty: bool = False
    instances: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def dicom_modality(name: str) -> str | None:
    """The DICOM Modality of a plan's channel modality ("MRI", "T1", "FLAIR" -> "MR"), None when unknown."""
    name = str(name).upper()
    if name in {"CT", "MR", "PT", "US", "NM", "CR", "DX", "MG", "XA", "OCT"}:
        return name
    if name in {"MRI", "T1", "T1W", "T1C", "T1GD", "T2", "T2W", "FLAIR", "ADC", "DWI", "PD"} or name.startswith(("T1", "T2", "MR")):
        return "MR"
    return {"PET": "PT", "CTA": "CT"}.get(name)


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _dataset(json_dict: dict) -> Any:
    from pydicom.dataset import Dataset

    return Dataset.from_json(json_dict, bulk_data_uri_handler=lambda *args: b"")


class Client:
    """A DICOMweb endpoint (QIDO-RS, WADO-RS, STOW-RS under one base URL).

    url: e.g. http://HOST:8042/dicom-web (Orthanc). settings: a `PacsSettings` instead of url and
    the keywords, which are `medseg.pacs.config.load_settings`'s (config file, username, password,
    token, ca_bundle, verify, timeout; else the environment).
    memory_limit_mb: pixel data held in memory per series before spilling to a temporary folder.
    """

    def __init__(self, url: str | None = None, *, settings: PacsSettings | None = None, memory_limit_mb: float = 1024,
                 **keywords: Any):
        require("dicomweb_client", "pacs")
        from dicomweb_client.api import DICOMwebClient

        self.settings = settings or load_settings(url, **keywords)
        self.session = self.settings.session()
        self.memory_limit = int(memory_limit_mb * 2**20)
        self.web = DICOMwebClient(self.settings.url, session=self.session, timeout=self.settings.timeout)
        # dicomweb-client retries every failed request (a refused connection too) 5 times over 30 s;
        # three tries within 1.5 s keep a busy server's 503 from failing a series, and the watch
        # service has its own backoff per series
        self.web.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=250)

    @property
    def url(self) -> str:
        return self.settings.url

    # -- errors ------------------------------------------------------------------------------
    def _call(self, what: str, fn, *args, **kwargs):
        """Run a dicomweb-client call; requests' errors become one-line PacsError / PacsUnavailable."""
        import requests

        try:
            return fn(*args, **kwargs)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            hint = {401: "check the credentials (config file, MEDSEG_PACS_USERNAME/PASSWORD or MEDSEG_PACS_TOKEN)",
                    403: "the account may not do this; check its permissions on the PACS",
                    404: "check the UIDs and that the URL is the DICOMweb root (e.g. http://HOST:8042/dicom-web)"}
            raise PacsError(f"{self.url}: {what} failed with HTTP {status}; {hint.get(status, 'see the PACS log')}") from None
        except requests.exceptions.SSLError as exc:
            raise PacsError(f"{self.url}: {what}: TLS certificate check failed ({type(exc).__name__}); give the server's "
                            "CA with --ca-bundle (or ca_bundle: in the config file)") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise PacsUnavailable(f"{self.url}: {what}: the PACS cannot be reached ({type(exc).__name__}); check that it runs "
                                  "and the URL") from None

    # -- QIDO-RS -----------------------------------------------------------------------------
    def search_studies(self, filters: dict[str, Any] | None = None, limit: int | None = None) -> list[Any]:
        """QIDO-RS studies matching `filters` (keyword -> value, e.g. {"StudyDate": "20240101-"}), as Datasets."""
        found = self._call("QIDO-RS study search", self.web.search_for_studies, search_filters=filters or {}, limit=limit)
        return [_dataset(d) for d in found]

    def search_series(self, study_uid: str | None = None, filters: dict[str, Any] | None = None,
                      fields: Sequence[str] = (), limit: int | None = None, offset: int | None = None) -> list[Any]:
        """QIDO-RS series (of one study, or of every study), as Datasets with StudyInstanceUID,
        SeriesInstanceUID, Modality, SeriesDescription and NumberOfSeriesRelatedInstances."""
        wanted = ["StudyInstanceUID", "SeriesDescription", "NumberOfSeriesRelatedInstances", *fields]
        found = self._call("QIDO-RS series search", self.web.search_for_series, study_instance_uid=study_uid,
                           search_filters=filters or {}, fields=wanted, limit=limit, offset=offset)
        series = [_dataset(d) for d in found]
        for ds in series:  # some servers leave the study UID out of a study-scoped answer
            if study_uid and not ds.get("StudyInstanceUID"):
                ds.StudyInstanceUID = study_uid
        return series

    def series_metadata(self, study_uid: str, series_uid: str) -> list[Any]:
        """WADO-RS metadata of every instance of a series (headers only, bulk data left out)."""
        found = self._call(f"WADO-RS metadata of series {series_uid}", self.web.retrieve_series_metadata, study_uid, series_uid)
        return [_dataset(d) for d in found]

    # -- WADO-RS -----------------------------------------------------------------------------
    def retrieve_series(self, study_uid: str, series_uid: str) -> RetrievedSeries:
        """Every instance of a series with pixel data (streamed one by one; see `memory_limit_mb`)."""
        start = time.perf_counter()
        retrieved = RetrievedSeries([])
        try:
            self._call(f"WADO-RS retrieval of series {series_uid}", self._fetch_into, retrieved, study_uid, series_uid)
        except BaseException:
            retrieved.close()
            raise
        retrieved.seconds = time.perf_counter() - start
        return retrieved

    def _fetch_into(self, retrieved: RetrievedSeries, study_uid: str, series_uid: str) -> None:
        import requests

        try:
            instances = self.web.iter_series(study_uid, series_uid, media_types=ANY_TRANSFER_SYNTAX)
            first = next(instances, None)
        except requests.HTTPError as exc:  # a server that will not send the stored syntax ("*"): its default
            if exc.response is None or exc.response.status_code not in (400, 406):
                raise
            instances = self.web.iter_series(study_uid, series_uid)
            first = next(instances, None)
        if first is None:
            return
        for ds in _chain(first, instances):
            retrieved.nbytes += len(ds.get("PixelData") or b"")
            if retrieved.folder is None and retrieved.nbytes > self.memory_limit:
                retrieved.folder = Path(tempfile.mkdtemp(prefix="medseg-pacs-"))
                log.info("series %s: over %d MB, spilling to a temporary folder", series_uid, self.memory_limit >> 20)
                retrieved.datasets = [self._spill(d, retrieved.folder, i) for i, d in enumerate(retrieved.datasets)]
            if retrieved.folder is not None:
                ds = self._spill(ds, retrieved.folder, len(retrieved.datasets))
            retrieved.datasets.append(ds)

    def _spill(self, ds: Any, folder: Path, index: int) -> Any:
        import pydicom

        path = folder / f"{index:06d}.dcm"
        ds.save_as(path, enforce_file_format=False)
        return pydicom.dcmread(path, defer_size="64 KB")

    # -- STOW-RS -----------------------------------------------------------------------------
    def store(self, datasets: Sequence[Any], study_uid: str | None = None) -> list[str]:
        """STOW-RS the Datasets; returns their SOPInstanceUIDs. PacsError when any is refused."""
        answer = self._call("STOW-RS", self.web.store_instances, list(datasets), study_instance_uid=study_uid)
        failed = list(answer.get("FailedSOPSequence", []) or []) if answer is not None else []
        if failed:
            reasons = sorted({f"0x{int(item.get('FailureReason', 0)):04X}" for item in failed})
            raise PacsError(f"{self.url}: STOW-RS refused {len(failed)} of {len(datasets)} instance(s) (failure reason "
                            f"{', '.join(reasons)}); see the PACS log")
        return [str(ds.SOPInstanceUID) for ds in datasets]

    # -- medseg's own outputs ----------------------------------------------------------------
    def existing_outputs(self, study_uid: str, series_uid: str, algorithm: Algorithm) -> dict[str, str]:
        """{format: SOPInstanceUID} of the SEG / RTSTRUCT objects in the study that this algorithm
        (name and version) made from `series_uid`."""
        found: dict[str, str] = {}
        for series in self.search_series(study_uid):
            if str(series.get("Modality", "")) not in MODALITY.values():
                continue
            for ds in self.series_metadata(study_uid, str(series.SeriesInstanceUID)):
                fmt = format_of(ds)
                if fmt and series_uid in referenced_series(ds) and (algorithm.name, algorithm.version) in algorithms_in(ds):
                    found.setdefault(fmt, str(ds.SOPInstanceUID))
        return found

    def image_series(self, study_uid: str, modality: str | None = None) -> list[Any]:
        """The study's image series (derived objects such as SEG, RTSTRUCT, SR left out), of `modality` if given."""
        series = [s for s in self.search_series(study_uid) if str(s.get("Modality", "")).upper() not in NON_IMAGE_MODALITIES]
        return [s for s in series if modality is None or str(s.get("Modality", "")).upper() == modality.upper()]

    def segment(self, study_uid: str, predictor: Any, series_uid: str | None = None,
                formats: Iterable[str] = FORMATS, *, skip_existing: bool = False,
                algorithm: Algorithm | None = None) -> list[SeriesResult]:
        """Segment one series of a study (or every series of the model's modality) and STOW the results.

        predictor: a `medseg.load_model(...)` Predictor. formats: "dicom-seg" and/or "rtstruct".
        skip_existing: leave out the formats that this algorithm already stored for the series.
        Returns one `SeriesResult` per series.
        """
        formats = list(formats)
        unknown = [f for f in formats if f not in FORMATS]
        if unknown or not formats:
            raise InputError(f"format {', '.join(unknown) or '(none)'} is not one a PACS can take; use dicom-seg and/or rtstruct")
        algorithm = algorithm or algorithm_of(predictor)
        if series_uid:
            uids = [series_uid]
        else:
            modality = dicom_modality(predictor.bundle.plan.modalities[0]) if predictor.bundle.plan.modalities else None
            candidates = self.image_series(study_uid, modality)
            if not candidates and modality is None:
                raise InputError(f"study {study_uid}: no image series to segment; check the UID")
            if not candidates:
                present = sorted({str(s.get("Modality", "?")) for s in self.image_series(study_uid)})
                raise InputError(f"study {study_uid}: no {modality} series to segment (found modalities: {', '.join(present) or 'none'}); "
                                 "pick one with --series SERIES_UID")
            uids = [str(s.SeriesInstanceUID) for s in candidates]
        return [self.segment_series(study_uid, uid, predictor, formats, algorithm=algorithm, skip_existing=skip_existing)
                for uid in uids]

    def segment_series(self, study_uid: str, series_uid: str, predictor: Any, formats: Sequence[str] = FORMATS, *,
                       algorithm: Algorithm | None = None, skip_existing: bool = False) -> SeriesResult:
        """Retrieve, segment, build and store the outputs of one series (see `segment`)."""
        from medseg.io.dicom import refuse_multiframe

        algorithm = algorithm or algorithm_of(predictor)
        result = SeriesResult(study_uid, series_uid)
        todo = list(formats)
        if skip_existing:
            start = time.perf_counter()
            existing = self.existing_outputs(study_uid, series_uid, algorithm)
            result.existing = [f for f in todo if f in existing]
            todo = [f for f in todo if f not in existing]
            result.timings["check"] = time.perf_counter() - start
            if not todo:
                log.info("series %s: %s from %s already stored; skipped", series_uid, ", ".join(result.existing), algorithm.name)
                return result
        with self.retrieve_series(study_uid, series_uid) as retrieved:
            result.instances = len(retrieved.datasets)
            result.timings["retrieve"] = retrieved.seconds
            if not retrieved.datasets:
                raise PacsError(f"{self.url}: series {series_uid} of study {study_uid} has no instances; check the UIDs")
            start = time.perf_counter()
            segmentation = predictor.segment(retrieved.datasets)
            result.timings["segment"] = time.perf_counter() - start
            if not segmentation.labels.array.any():
                log.warning("series %s: the model found no label; nothing to store", series_uid)
                result.empty = True
                return result
            if "rtstruct" in todo:
                try:
                    refuse_multiframe(retrieved.datasets)
                except InputError as exc:
                    result.skipped["rtstruct"] = str(exc)
                    todo.remove("rtstruct")
                    log.warning("series %s: no RTSTRUCT (%s)", series_uid, exc)
            start = time.perf_counter()
            outputs = build_outputs(segmentation, algorithm, todo)
            result.timings["build"] = time.perf_counter() - start
        start = time.perf_counter()
        for fmt in todo:  # one STOW each, SEG first: a crash between them leaves the SEG, and a rerun adds the rest
            self.store([outputs[fmt]], study_uid)
            result.stored[fmt] = str(outputs[fmt].SOPInstanceUID)
            log.info("series %s: stored %s %s", series_uid, MODALITY[fmt], result.stored[fmt])
        result.timings["store"] = time.perf_counter() - start
        return result


__all__ = ["Client", "NON_IMAGE_MODALITIES", "PacsError", "PacsUnavailable", "RetrievedSeries", "SeriesResult"]
