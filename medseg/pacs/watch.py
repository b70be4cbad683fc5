"""The watch service: segment every new matching series of a PACS exactly once.

Discovery, one of:
- Orthanc's change feed (`/changes`, StableSeries events: a series no instance has joined for
  Orthanc's StableAge seconds), used when the DICOMweb URL is an Orthanc's (its REST root answers
  /system); the feed position is kept in the state store;
- QIDO-RS polling of series by StudyDate (from `since`, default yesterday); a series is taken
  once its instance count is the same on two polls in a row (it has stopped growing).

Each matching series (modality, SeriesDescription regex) is recorded in the SQLite state store
(`medseg.pacs.state`), then processed: before retrieving, the PACS is asked for SEG / RTSTRUCT
objects of this algorithm (name and version) referencing the series; the formats found are not
made again, so a restart, a kill -9 mid-series or a second watcher never duplicates a SEG. A
failing series is logged by UID and retried with exponential backoff; the others go on. SIGTERM
or SIGINT lets the current series finish, then `run` returns.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from dataclasses import dataclass
from typing import Any, Iterable

from medseg.errors import ConfigError, MedsegError
from medseg.pacs.dicomweb import NON_IMAGE_MODALITIES, Client, PacsUnavailable
from medseg.pacs.outputs import FORMATS, Algorithm, algorithm_of, warm_up
from medseg.pacs.state import StateStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """A series found by discovery (tags used by the filters; never logged)."""

    study_uid: str
    series_uid: str
    modality: str = ""
    description: str = ""


def orthanc_root(client: Client) -> str | None:
    """The Orthanc REST root behind a DICOMweb URL (".../dicom-web" stripped), or None when it is no Orthanc."""
    root = re.sub(r"/dicom-web/?$", "", client.url)
    if root == client.url:
        return None
    try:
        answer = client.session.get(f"{root}/system", timeout=client.settings.timeout)
        info = answer.json() if answer.ok else {}
    except Exception:  # not JSON, not reachable: not an Orthanc we can use
        return None
    return root if isinstance(info, dict) and "DicomAet" in info and "Version" in info else None


class OrthancChanges:
    """StableSeries events of Orthanc's /changes feed, after the position kept in the state store."""

    cursor_name = "orthanc-changes"

    def __init__(self, client: Client, root: str):
        self.client, self.root = client, root

    def _get(self, path: str, **params) -> Any:
        import requests

        try:
            answer = self.client.session.get(f"{self.root}{path}", params=params, timeout=self.client.settings.timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise PacsUnavailable(f"{self.root}: Orthanc cannot be reached ({type(exc).__name__})") from None
        if answer.status_code == 404:
            return None
        if not answer.ok:
            raise PacsUnavailable(f"{self.root}{path}: HTTP {answer.status_code}")
        return answer.json()

    def poll(self, state: StateStore) -> Iterable[tuple[Candidate, str]]:
        """(candidate, new cursor) pairs; the caller records the series, then the cursor."""
        since = int(state.cursor(self.cursor_name, "0"))
        while True:
            page = self._get("/changes", since=since, limit=100)
            changes = page.get("Changes", [])
            if not changes and int(page.get("Last", since)) < since:  # the server's database was reset
                yield None, "0"
                return
            for change in changes:
                since = int(change["Seq"])
                if change.get("ChangeType") != "StableSeries":
                    yield None, str(since)
                    continue
                series = self._get(f"/series/{change['ID']}")
                study = self._get(f"/studies/{series['ParentStudy']}") if series else None
                if not series or not study:  # deleted since
                    yield None, str(since)
                    continue
                tags = series.get("MainDicomTags", {})
                yield Candidate(study["MainDicomTags"]["StudyInstanceUID"], tags["SeriesInstanceUID"], tags.get("Modality", ""),
                                tags.get("SeriesDescription", "")), str(since)
            if page.get("Done", True) or not changes:
                return
            since = max(since, int(page.get("Last", since)))


class QidoPoller:
    """QIDO-RS series with StudyDate >= `since` (YYYYMMDD); a series is offered once its instance
    count has not changed between two polls."""

    cursor_name = None

    def __init__(self, client: Client, since: str | None = None, page: int = 500):
        import datetime

        self.client, self.page = client, page
        self.since = since or (datetime.date.today() - datetime.timedelta(days=1)).strftime("%Y%m%d")
        self.counts: dict[str, int] = {}

    def poll(self, state: StateStore) -> Iterable[tuple[Candidate, None]]:
        offset, seen = 0, {}
        while True:
            series = self.client.search_series(None, filters={"StudyDate": f"{self.since}-"}, fields=["Modality"],
                                               limit=self.page, offset=offset)
            for s in series:
                uid = str(s.SeriesInstanceUID)
                seen[uid] = int(s.get("NumberOfSeriesRelatedInstances", 0) or 0)
                if state.get(uid) is None and seen[uid] > 0 and self.counts.get(uid) == seen[uid]:
                    yield Candidate(str(s.StudyInstanceUID), uid, str(s.get("Modality", "")), str(s.get("SeriesDescription", ""))), None
            if len(series) < self.page:
                break
            offset += len(series)
        self.counts = seen


class Watcher:
    """Poll a PACS and segment each new matching series once (see the module notes).

    client: the `Client`; predictor: a loaded model; state_dir: where state.sqlite lives.
    modality: e.g. "MR" (None: any image modality); series_description: a regex searched in it.
    source: "auto" (Orthanc's /changes when the URL is an Orthanc's, else QIDO), "orthanc" or "qido";
    since: QIDO's first StudyDate (YYYYMMDD). backoff: (first delay, longest delay) in seconds;
    max_attempts: tries before a series is left as failed.
    """

    def __init__(self, client: Client, predictor: Any, state_dir, *, formats: Iterable[str] = FORMATS,
                 modality: str | None = None, series_description: str | None = None, poll_interval: float = 2.0,
                 source: str = "auto", since: str | None = None, backoff: tuple[float, float] = (5.0, 600.0),
                 max_attempts: int = 8, algorithm: Algorithm | None = None):
        self.client, self.predictor = client, predictor
        self.state = StateStore(state_dir)
        self.formats = list(formats)
        self.modality = modality.upper() if modality else None
        try:
            self.description = re.compile(series_description) if series_description else None
        except re.error as exc:
            raise ConfigError(f"--series-description {series_description!r} is not a valid regular expression ({exc}); "
                              "e.g. 'T1|MPRAGE'") from None
        self.poll_interval, self.backoff, self.max_attempts = poll_interval, backoff, max_attempts
        self.algorithm = algorithm or algorithm_of(predictor)
        root = orthanc_root(client) if source in ("auto", "orthanc") else None
        if source == "orthanc" and root is None:
            raise ConfigError(f"{client.url}: --source orthanc, but no Orthanc REST API answers beside it; use --source qido")
        self.source = OrthancChanges(client, root) if root else QidoPoller(client, since)
        self.stopping = threading.Event()
        self.processed: dict[str, int] = {"done": 0, "skipped": 0, "empty": 0, "failed": 0}
        self._outage = False

    def matches(self, candidate: Candidate) -> bool:
        modality = candidate.modality.upper()
        if modality in NON_IMAGE_MODALITIES or (self.modality and modality != self.modality):
            return False
        return self.description is None or bool(self.description.search(candidate.description))

    def discover(self) -> int:
        """Poll the source once; record the new matching series. Returns how many were added."""
        added = 0
        for candidate, cursor in self.source.poll(self.state):
            if candidate is not None and self.matches(candidate) and self.state.add(candidate.study_uid, candidate.series_uid):
                log.info("new series %s (study %s)", candidate.series_uid, candidate.study_uid)
                added += 1
            if cursor is not None and self.source.cursor_name:
                self.state.set_cursor(self.source.cursor_name, cursor)
        return added

    def process(self, series_uid: str, study_uid: str) -> None:
        """Segment one recorded series; failures are recorded with a retry time, never raised."""
        self.state.start(series_uid)
        log.info("segmenting series %s (study %s)", series_uid, study_uid)
        try:
            result = self.client.segment_series(study_uid, series_uid, self.predictor, self.formats,
                                                algorithm=self.algorithm, skip_existing=True)
        except Exception as exc:  # one series' failure must not stop the service
            attempts = (self.state.get(series_uid).attempts or 0) + 1
            delay = None if attempts >= self.max_attempts else min(self.backoff[0] * 2 ** (attempts - 1), self.backoff[1])
            message = str(exc).splitlines()[0] if isinstance(exc, MedsegError) and str(exc) else type(exc).__name__
            self.state.fail(series_uid, message, delay)
            self.processed["failed"] += 1
            if delay is None:
                log.error("series %s (study %s) failed %d times; giving up: %s", series_uid, study_uid, attempts, message)
            else:
                log.warning("series %s (study %s) failed (attempt %d): %s; retrying in %.0f s", series_uid, study_uid,
                            attempts, message, delay)
            if not isinstance(exc, MedsegError):
                log.debug("series %s failure", series_uid, exc_info=True)
            return
        status = "empty" if result.empty else "done"
        self.state.finish(series_uid, status)
        key = "skipped" if result.existing and not result.stored else status
        self.processed[key] += 1
        log.info("series %s: %s (%s)", series_uid, key if key != "done" else "stored " + ", ".join(result.stored),
                 ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()))

    def run_once(self) -> None:
        """One discovery and every due series (what --once does, and one turn of the service)."""
        try:
            self.discover()
            if self._outage:
                log.info("%s answers again", self.client.url)
                self._outage = False
        except PacsUnavailable as exc:
            if not self._outage:
                log.warning("%s; will keep polling", exc)
            self._outage = True
        for row in self.state.due():
            if self.stopping.is_set():
                return
            self.process(row.series_uid, row.study_uid)

    def run(self, once: bool = False) -> dict[str, int]:
        """Serve until SIGTERM/SIGINT (or, with `once`, until what is due now is processed).
        Returns counts of this run: done, skipped (already in the PACS), empty, failed."""
        recovered = self.state.recover()
        if recovered:
            log.info("%d series interrupted by an earlier stop are pending again", recovered)
        restore = self._install_signals()
        warm_up(self.formats, self.predictor)
        log.info("watching %s (%s) as %s, %s", self.client.url, type(self.source).__name__, self.algorithm.name, self.algorithm.version)
        try:
            while not self.stopping.is_set():
                self.run_once()
                if once:
                    break
                self.stopping.wait(self.poll_interval)
        finally:
            restore()
            self.state.close()
        return dict(self.processed)

    def stop(self) -> None:
        self.stopping.set()

    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def handler(signum, frame):
            log.info("signal %d: finishing the current series, then stopping", signum)
            self.stopping.set()

        for s in previous:
            signal.signal(s, handler)
        return lambda: [signal.signal(s, h) for s, h in previous.items()]


__all__ = ["Candidate", "OrthancChanges", "QidoPoller", "Watcher", "orthanc_root"]
