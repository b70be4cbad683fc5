"""The watch service's memory: one SQLite file (STATE_DIR/state.sqlite) that survives restarts.

Table `series`: one row per series seen, keyed by SeriesInstanceUID:
    status   pending -> running -> done | empty (the model found nothing) | failed (gave up);
             a failure goes back to pending with `next_try` pushed out (exponential backoff)
    attempts, next_try (epoch s), error (one line, no patient data), updated (epoch s)
Table `cursor`: named positions of the change feeds (e.g. Orthanc's /changes sequence number).

A row left `running` by a killed process is pending again on the next start (`recover`); the
idempotency check of the watcher then decides whether its outputs are already in the PACS.
Every change is its own transaction, so a kill -9 loses at most the series being processed.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from medseg.errors import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid  TEXT NOT NULL,
    status     TEXT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_try   REAL NOT NULL DEFAULT 0,
    error      TEXT,
    updated    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cursor (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
FINAL = ("done", "empty", "failed")


@dataclass(frozen=True)
class SeriesRow:
    series_uid: str
    study_uid: str
    status: str
    attempts: int
    next_try: float
    error: str | None


class StateStore:
    """The SQLite state of one watch service (`folder`/state.sqlite, created if missing)."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.path = folder / "state.sqlite"
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # autocommit; explicit transactions
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"{folder}: cannot open the watch state there ({type(exc).__name__}: {exc}); "
                              "give a writable --state folder") from None

    def close(self) -> None:
        self.db.close()

    def recover(self) -> int:
        """Series left `running` by a process that died: pending again. Returns how many."""
        return self.db.execute("UPDATE series SET status='pending', updated=? WHERE status='running'", (time.time(),)).rowcount

    def add(self, study_uid: str, series_uid: str) -> bool:
        """Record a newly seen series as pending; False when it is already known (in any status)."""
        cursor = self.db.execute(
            "INSERT OR IGNORE INTO series (series_uid, study_uid, status, updated) VALUES (?, ?, 'pending', ?)",
            (series_uid, study_uid, time.time()))
        return cursor.rowcount == 1

    def get(self, series_uid: str) -> SeriesRow | None:
        row = self.db.execute("SELECT series_uid, study_uid, status, attempts, next_try, error FROM series WHERE series_uid=?",
                              (series_uid,)).fetchone()
        return SeriesRow(*row) if row else None

    def due(self, now: float | None = None) -> list[SeriesRow]:
        """Pending series whose next try has come, oldest first."""
        now = time.time() if now is None else now
        rows = self.db.execute(
            "SELECT series_uid, study_uid, status, attempts, next_try, error FROM series "
            "WHERE status='pending' AND next_try<=? ORDER BY next_try, updated", (now,)).fetchall()
        return [SeriesRow(*r) for r in rows]

    def waiting(self) -> int:
        """Pending series (due now or later)."""
        return self.db.execute("SELECT COUNT(*) FROM series WHERE status='pending'").fetchone()[0]

    def start(self, series_uid: str) -> None:
        self._set(series_uid, "running")

    def finish(self, series_uid: str, status: str = "done") -> None:
        if status not in FINAL:
            raise ValueError(status)
        self.db.execute("UPDATE series SET status=?, error=NULL, updated=? WHERE series_uid=?", (status, time.time(), series_uid))

    def fail(self, series_uid: str, error: str, retry_in: float | None) -> int:
        """Count a failed attempt: pending again in `retry_in` seconds, or `failed` for good (None). Returns attempts."""
        now = time.time()
        status = "failed" if retry_in is None else "pending"
        self.db.execute(
            "UPDATE series SET status=?, attempts=attempts+1, next_try=?, error=?, updated=? WHERE series_uid=?",
            (status, now + (retry_in or 0), error[:500], now, series_uid))
        return self.get(series_uid).attempts

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT status, COUNT(*) FROM series GROUP BY status").fetchall())

    def cursor(self, name: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM cursor WHERE name=?", (name,)).fetchone()
        return row[0] if row else default

    def set_cursor(self, name: str, value: str) -> None:
        self.db.execute("INSERT INTO cursor (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                        (name, str(value)))

    def _set(self, series_uid: str, status: str) -> None:
        self.db.execute("UPDATE series SET status=?, updated=? WHERE series_uid=?", (status, time.time(), series_uid))


__all__ = ["FINAL", "SeriesRow", "StateStore"]
