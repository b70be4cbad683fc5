"""`medseg pacs watch` against a real Orthanc, as the service runs: a new series is segmented within
10 s; a restart does not segment it again; an Orthanc restart mid-run is survived; SIGTERM
finishes the current series; kill -9 mid-series (between the SEG and the RTSTRUCT)
leaves exactly one SEG and one RTSTRUCT after the restart; failures retry with backoff."""

from __future__ import annotations

import logging
import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

import medseg
import medseg.pacs
from pacs_helpers import part10, read_series, renamed_series
from medseg.errors import InputError

pytestmark = pytest.mark.slow

MEDSEG = Path(os.environ.get("VIRTUAL_ENV", Path(__file__).resolve().parents[2] / ".venv")) / "bin" / "medseg"
CROP = "tcia_mr_oblique/11_HCropVolume"


class Watch:
    """A `medseg pacs watch` subprocess whose stderr lines are collected for `wait_for`."""

    def __init__(self, orthanc, bundle, state: Path, *extra: str):
        command = [str(MEDSEG), "pacs", "watch", "--url", orthanc.url, "--model", str(bundle), "--state", str(state),
                   "--poll", "0.3", "--device", "cpu", "--modality", "MR", "--series-description", "^watch", *extra]
        self.process = subprocess.Popen(command, env=orthanc.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            self.queue.put(line.rstrip())

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.queue.get(timeout=0.05)
            except queue.Empty:
                if self.process.poll() is not None and self.queue.empty():
                    break
                continue
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r}; watch printed:\n" + "\n".join(self.lines[-30:]))

    def finish(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout)
        time.sleep(0.1)  # let the reader thread take the last lines
        return code


def series_copy(real_data, seed: str):
    datasets = renamed_series(part10(read_series(real_data / "dicom" / CROP)), seed)
    for ds in datasets:
        ds.SeriesDescription = f"watch {seed}"
    return datasets, str(datasets[0].SeriesInstanceUID)


def wait_for_outputs(orthanc, series_uid: str, timeout: float, watch: Watch | None = None) -> float:
    """Seconds until Orthanc holds a SEG and an RTSTRUCT referencing `series_uid`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if orthanc.derived_for(series_uid, "SEG") and orthanc.derived_for(series_uid, "RTSTRUCT"):
            return time.monotonic() - start
        time.sleep(0.2)
    printed = "\n".join(watch.lines[-20:]) if watch else ""
    raise AssertionError(f"no SEG and RTSTRUCT for series {series_uid} within {timeout} s; watch printed:\n{printed}")


def counts(orthanc, series_uid: str) -> tuple[int, int]:
    return len(orthanc.derived_for(series_uid, "SEG")), len(orthanc.derived_for(series_uid, "RTSTRUCT"))


def test_watch_segments_new_series_once_survives_orthanc_restart_and_stops_on_sigterm(orthanc, pacs_bundle, real_data, tmp_path):
    state = tmp_path / "state"
    watch = Watch(orthanc, pacs_bundle, state)
    watch.wait_for("watching .*OrthancChanges")  # Orthanc recognised: its /changes feed is used

    first, first_uid = series_copy(real_data, "first")
    orthanc.upload(first)
    assert wait_for_outputs(orthanc, first_uid, timeout=10, watch=watch) <= 10  # within 10 s of the upload (Orthanc's StableAge 1 s)

    orthanc.stop()  # the PACS goes away mid-run ...
    watch.wait_for("cannot be reached.*will keep polling")
    orthanc.start()  # ... and comes back with its storage
    watch.wait_for("answers again")
    second, second_uid = series_copy(real_data, "second")
    orthanc.upload(second)
    assert wait_for_outputs(orthanc, second_uid, timeout=10, watch=watch) <= 10

    third, third_uid = series_copy(real_data, "third")
    orthanc.upload(third)
    watch.wait_for(f"segmenting series {third_uid}")
    watch.process.send_signal(signal.SIGTERM)  # mid-series: it is finished, then the service exits
    assert watch.finish() == 0
    assert counts(orthanc, third_uid) == (1, 1)
    assert any("finishing the current series" in line for line in watch.lines)

    again = Watch(orthanc, pacs_bundle, state, "--once")  # a restart: nothing is made again
    assert again.finish() == 0
    assert "done 0, skipped 0, empty 0, failed 0" in again.lines[-1]
    for uid in (first_uid, second_uid, third_uid):
        assert counts(orthanc, uid) == (1, 1)
    printed = "\n".join(watch.lines + again.lines)
    assert orthanc.password not in printed
    patient = str(first[0].get("PatientName", "")) or None
    assert patient is None or patient not in printed


def test_kill_9_mid_series_leaves_exactly_one_seg_after_restart(orthanc, pacs_bundle, real_data, tmp_path):
    """Killed between storing the SEG and the RTSTRUCT (the state still says running): the restart
    finds the SEG in the PACS, adds only the RTSTRUCT."""
    state = tmp_path / "state"
    killed, killed_uid = series_copy(real_data, "killed")
    watch = Watch(orthanc, pacs_bundle, state)
    watch.wait_for("watching")
    orthanc.upload(killed)
    watch.wait_for(f"series {killed_uid}: stored SEG")
    watch.process.kill()
    watch.finish()
    seg, rtstruct = counts(orthanc, killed_uid)
    assert seg == 1  # (the RTSTRUCT's STOW, 0.1 s or more, has almost always not reached Orthanc: rtstruct == 0)

    restart = Watch(orthanc, pacs_bundle, state, "--once")
    assert restart.finish() == 0
    restart.wait_for("1 series interrupted by an earlier stop are pending again", timeout=1)
    restart.wait_for(f"series {killed_uid}: stored RTSTRUCT" if rtstruct == 0 else "already stored; skipped", timeout=1)
    assert counts(orthanc, killed_uid) == (1, 1)


class Flaky:
    """A predictor that fails on chosen series (as a broken series would), else segments."""

    def __init__(self, predictor, failing: set[str]):
        self.predictor, self.failing = predictor, failing

    def __getattr__(self, name):
        return getattr(self.predictor, name)

    def segment(self, datasets):
        if str(datasets[0].SeriesInstanceUID) in self.failing:
            raise InputError("planted failure for this series")
        return self.predictor.segment(datasets)


class Clock:
    """A settable time.time() for the state store, so that backoff is tested without waiting."""

    def __init__(self):
        self.now = 1_000_000.0

    def time(self):
        return self.now


def test_a_failing_series_is_retried_with_backoff_and_does_not_block_others(orthanc, pacs_bundle, real_data, tmp_path,
                                                                            caplog, monkeypatch):
    from medseg.pacs import state as state_module
    from medseg.pacs.watch import Watcher

    bad, bad_uid = series_copy(real_data, "bad")
    good, good_uid = series_copy(real_data, "good")
    for ds in bad + good:
        ds.SeriesDescription = ds.SeriesDescription.replace("watch", "flaky")
    orthanc.upload(bad + good)
    predictor = Flaky(medseg.load_model(pacs_bundle, device="cpu"), {bad_uid})
    client = medseg.pacs.Client(orthanc.url, username=orthanc.user, password=orthanc.password)
    watcher = Watcher(client, predictor, tmp_path / "state", modality="MR", series_description="^flaky",
                      backoff=(5.0, 600.0), max_attempts=5)
    clock = Clock()
    monkeypatch.setattr(state_module, "time", clock)
    caplog.set_level(logging.INFO, logger="medseg.pacs")
    state = watcher.state
    deadline = time.monotonic() + 60  # Orthanc marks a series stable StableAge (1 s) after its last instance; slower when loaded
    while time.monotonic() < deadline and not (state.get(good_uid) and state.get(bad_uid)):
        time.sleep(0.5)
        watcher.run_once()  # the bad series is tried once: its retry is not due on the frozen clock
    assert state.get(good_uid).status == "done" and counts(orthanc, good_uid) == (1, 1)  # not blocked by the bad one
    row = state.get(bad_uid)
    assert (row.status, row.attempts, row.error, row.next_try) == ("pending", 1, "planted failure for this series", clock.now + 5)
    watcher.run_once()  # not due yet: not tried again
    assert state.get(bad_uid).attempts == 1
    clock.now += 5
    watcher.run_once()
    assert (state.get(bad_uid).attempts, state.get(bad_uid).next_try) == (2, clock.now + 10)  # the delay doubles
    predictor.failing.clear()  # the series is repaired
    clock.now += 10
    watcher.run_once()
    assert state.get(bad_uid).status == "done" and counts(orthanc, bad_uid) == (1, 1)
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 2 and all(bad_uid in m for m in failures)
    assert "retrying in 5 s" in failures[0] and "retrying in 10 s" in failures[1]
    names = {str(ds.get(k, "")) for ds in bad[:1] for k in ("PatientName", "PatientID", "PatientBirthDate")} - {""}
    assert not any(n in r.getMessage() for r in caplog.records for n in names)
    watcher.state.close()


def test_qido_polling_takes_a_series_once_its_instance_count_is_steady(orthanc, pacs_bundle, real_data, tmp_path):
    """Without Orthanc's feed (any DICOMweb server): QIDO-RS by StudyDate, a series taken on the
    second poll that finds it with the same instance count, segmented once."""
    from medseg.pacs.watch import QidoPoller, Watcher

    datasets, uid = series_copy(real_data, "qido")
    for ds in datasets:
        ds.SeriesDescription = "qido polled"
    half = len(datasets) // 2
    orthanc.upload(datasets[:half])
    client = medseg.pacs.Client(orthanc.url, username=orthanc.user, password=orthanc.password)
    watcher = Watcher(client, medseg.load_model(pacs_bundle, device="cpu"), tmp_path / "state", source="qido",
                      since="19000101", series_description="^qido")
    assert isinstance(watcher.source, QidoPoller)
    watcher.run_once()
    assert watcher.state.get(uid) is None  # first sight
    orthanc.upload(datasets[half:])  # still growing
    watcher.run_once()
    assert watcher.state.get(uid) is None
    watcher.run_once()  # the same count twice: complete
    assert watcher.state.get(uid).status == "done" and counts(orthanc, uid) == (1, 1)
    watcher.run_once()
    assert counts(orthanc, uid) == (1, 1)
    watcher.state.close()
