"""A DICOM C-STORE receiver (pynetdicom) for scanners and PACS that push instead of serving DICOMweb.

Received instances are grouped by SeriesInstanceUID in memory; a series that no instance has
joined for `settle` seconds is segmented, and its SEG / RTSTRUCT are sent on: STOW-RS to a
DICOMweb URL, or C-STORE to an AE given as AET@HOST:PORT. A failing series is logged by UID and
retried (`attempts`, doubling delays); the others go on. Every storage SOP class is accepted, in
any transfer syntax (JPEG 2000 and the like are decoded by medseg's readers), and C-ECHO answered.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, Sequence

from medseg.errors import ConfigError, MedsegError
from medseg.extras import require
from medseg.pacs.outputs import FORMATS, MODALITY, Algorithm, algorithm_of, build_outputs, warm_up

log = logging.getLogger(__name__)


class Sender(Protocol):
    def store(self, datasets: Sequence[Any]) -> Any: ...


class CStoreSender:
    """C-STORE to a remote AE (`AET@HOST:PORT`), calling as `calling_ae`."""

    def __init__(self, address: str, calling_ae: str = "MEDSEG"):
        match = re.fullmatch(r"([^@]{1,16})@([^:]+):(\d+)", address)
        if not match:
            raise ConfigError(f"--send-to {address!r}: expected a DICOMweb URL (http://HOST:8042/dicom-web) or AET@HOST:PORT")
        self.ae_title, self.host, self.port = match.group(1), match.group(2), int(match.group(3))
        self.calling_ae = calling_ae

    def store(self, datasets: Sequence[Any]) -> None:
        pynetdicom = require("pynetdicom", "pacs")
        ae = pynetdicom.AE(ae_title=self.calling_ae)
        for ds in datasets:
            ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        if not assoc.is_established:
            raise MedsegError(f"C-STORE to {self.ae_title}@{self.host}:{self.port}: association refused or unreachable")
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                if not status or int(status.Status) not in (0x0000, 0xB000, 0xB007, 0xB006):
                    code = f"0x{int(status.Status):04X}" if status else "no answer"
                    raise MedsegError(f"C-STORE of {ds.SOPInstanceUID} to {self.ae_title}: status {code}")
        finally:
            assoc.release()


def sender_for(send_to: str, calling_ae: str = "MEDSEG", **client_keywords: Any) -> Sender:
    """A `Client` (STOW-RS) for an http(s) URL, else a `CStoreSender` for AET@HOST:PORT."""
    if send_to.startswith(("http://", "https://")):
        from medseg.pacs.dicomweb import Client

        return Client(send_to, **client_keywords)
    return CStoreSender(send_to, calling_ae)


@dataclass
class _Pending:
    study_uid: str
    instances: dict[str, Any] = field(default_factory=dict)
    last: float = 0.0
    attempts: int = 0
    next_try: float = 0.0


class Listener:
    """A C-STORE SCP that segments every series it receives once it has settled.

    predictor: a loaded model; sender: where the outputs go (`sender_for`).
    port / ae_title / host: where to listen. settle: seconds without a new instance before a
    series counts as complete. attempts: tries per series (delays 2, 4, 8 ... s).
    """

    def __init__(self, predictor: Any, sender: Sender, *, port: int = 11112, ae_title: str = "MEDSEG",
                 host: str = "0.0.0.0", settle: float = 5.0, formats: Iterable[str] = FORMATS,
                 attempts: int = 3, algorithm: Algorithm | None = None):
        self.pynetdicom = require("pynetdicom", "pacs")
        self.predictor, self.sender = predictor, sender
        self.port, self.ae_title, self.host, self.settle = port, ae_title, host, settle
        self.formats, self.attempts = list(formats), attempts
        self.algorithm = algorithm or algorithm_of(predictor)
        self.pending: dict[str, _Pending] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.sent: list[dict[str, str]] = []  # per series sent: {format: SOPInstanceUID}, for callers and tests
        self.server = None
        self.worker: threading.Thread | None = None

    def _on_store(self, event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        series, study = str(ds.get("SeriesInstanceUID", "")), str(ds.get("StudyInstanceUID", ""))
        if not series or str(ds.get("Modality", "")) in MODALITY.values():
            return 0x0000  # accepted, but nothing to segment (no series, or a SEG/RTSTRUCT)
        with self.lock:
            entry = self.pending.setdefault(series, _Pending(study))
            entry.instances[str(ds.SOPInstanceUID)] = ds
            entry.last = time.monotonic()
        return 0x0000

    def start(self) -> None:
        """Listen (in the background) and start the worker that segments settled series."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        warm_up(self.formats, self.predictor)
        ae = AE(ae_title=self.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        try:
            self.server = ae.start_server((self.host, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self.host}:{self.port} ({exc.strerror}); pick a free --port") from None
        self.worker = threading.Thread(target=self._work, name="medseg-listen-worker", daemon=True)
        self.worker.start()
        log.info("listening as %s on %s:%d (settle %.1f s)", self.ae_title, self.host, self.port, self.settle)

    def _settled(self) -> list[tuple[str, _Pending]]:
        now = time.monotonic()
        with self.lock:
            ready = [(uid, p) for uid, p in self.pending.items() if now - p.last >= self.settle and now >= p.next_try]
            for uid, _ in ready:
                del self.pending[uid]
        return ready

    def _work(self) -> None:
        while not self.stopping.is_set():
            for series_uid, entry in self._settled():
                self.process(series_uid, entry)
            self.stopping.wait(0.2)

    def process(self, series_uid: str, entry: _Pending) -> None:
        """Segment one received series and send its outputs; on failure put it back for a retry."""
        log.info("segmenting received series %s (study %s, %d instances)", series_uid, entry.study_uid, len(entry.instances))
        try:
            segmentation = self.predictor.segment(list(entry.instances.values()))
            if not segmentation.labels.array.any():
                log.warning("series %s: the model found no label; nothing to send", series_uid)
                return
            formats = [f for f in self.formats if f != "rtstruct" or not _multiframe(entry.instances.values())]
            outputs = build_outputs(segmentation, self.algorithm, formats)
            for fmt in formats:
                self.sender.store([outputs[fmt]])
            self.sent.append({fmt: str(ds.SOPInstanceUID) for fmt, ds in outputs.items()})
            log.info("series %s: sent %s", series_uid, ", ".join(MODALITY[f] for f in formats))
        except Exception as exc:  # one series' failure must not stop the receiver
            entry.attempts += 1
            message = str(exc).splitlines()[0] if isinstance(exc, MedsegError) and str(exc) else type(exc).__name__
            if entry.attempts >= self.attempts:
                log.error("series %s (study %s) failed %d times; dropped: %s", series_uid, entry.study_uid, entry.attempts, message)
                return
            entry.next_try = time.monotonic() + 2.0 ** entry.attempts
            log.warning("series %s failed (attempt %d): %s; retrying", series_uid, entry.attempts, message)
            with self.lock:  # instances that arrived meanwhile join the retried series
                merged = self.pending.setdefault(series_uid, entry)
                if merged is not entry:
                    merged.instances = {**entry.instances, **merged.instances}
                    merged.attempts, merged.next_try = entry.attempts, entry.next_try

    def serve_forever(self) -> None:
        """`start`, then block until SIGTERM/SIGINT (the series being segmented is finished first)."""
        import signal

        self.start()
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                signal.signal(s, lambda *_: self.stopping.set())
        while not self.stopping.wait(0.5):
            pass
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        if self.worker is not None:
            self.worker.join()
        if self.server is not None:
            self.server.shutdown()
            self.server = None


def _multiframe(datasets: Iterable[Any]) -> bool:
    return any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets)


__all__ = ["CStoreSender", "Listener", "Sender", "sender_for"]
