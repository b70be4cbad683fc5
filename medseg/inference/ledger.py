"""The run ledger of a batch inference job: each case pending, claimed, done or failed, in OUT.

Why append-only JSONL, one file per writing process (`OUT/medseg-ledger/<host>-<pid>-<n>.jsonl`):
the job's ranks may sit on several machines writing into one shared folder (NFS, Lustre), where
SQLite's WAL mode does not work (it needs shared memory on one host) and file locks are unreliable,
and where even O_APPEND is not atomic between clients. A file with a single writer needs none of
that: each record is one `os.write` of one line to a file opened with O_APPEND, and a process
killed mid-write leaves at most a torn last line, which readers skip (no newline, no record).
Readers merge every file; files of another job (other model, options or formats: another
`job_key`) are ignored, so a changed model never skips a case.

A case's state is its latest record by wall-clock time: `pending` (planned by its rank), `claimed`
(by rank, host, pid), `done` (seconds, sha256 per output file, relative to OUT) or `failed` (a
one-line error). A claim is dead when its process is gone (same host: pid not running) or its
lease expired (another host: `lease_s` after the claim), and a dead claim's case is taken over.
Each case belongs to exactly one rank of a run (`shard_of`), so claims race only between
overlapping jobs; a duplicate then costs time, never a half-written output (outputs are atomic).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from medseg.data.manifest import sha256_of

LEDGER_DIR = "medseg-ledger"
STATES = ("pending", "claimed", "done", "failed")


def shard_of(index: int, count: int) -> int:
    """The rank (of `count`) that owns the case at position `index` of the job's case order:
    round robin, so every rank gets an equal share of a sorted folder."""
    return index % count


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # running, under another user
        return True
    return True


@dataclass
class CaseRecord:
    """The merged state of one case: its latest record, the writer of it, and its failure count."""

    case: str
    state: str
    t: float
    writer: str  # the ledger file that wrote the latest record
    rank: int = 0
    host: str = ""
    pid: int = 0
    seconds: float | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # file name relative to OUT -> sha256
    error: str = ""
    failures: int = 0


class Ledger:
    """This process's view of the job's ledger in `folder` (the -o folder), and its own file.

    job_key: identifies the job (model, options, formats); rank: this process's shard.
    """

    def __init__(self, folder: str | os.PathLike, job_key: str, *, rank: int = 0, world: int = 1, lease_s: float = 3600.0):
        self.folder = Path(folder)
        self.dir = self.folder / LEDGER_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.job_key, self.rank, self.world, self.lease_s = job_key, rank, world, lease_s
        self.host, self.pid = socket.gethostname(), os.getpid()
        base = f"{self.host}-{self.pid}-{time.time_ns()}"
        self.name = f"{base}.jsonl"
        self._fd = os.open(self.dir / self.name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._offsets: dict[str, int] = {}
        self._keys: dict[str, str | None] = {}  # file -> its job key (None: no start record yet)
        self._partial: dict[str, bytes] = {}
        self.cases: dict[str, CaseRecord] = {}
        self._append({"event": "start", "job": job_key, "rank": rank, "world": world})

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- writing ----------------------------------------------------------------------------------

    def _append(self, record: dict, *, sync: bool = False) -> None:
        record = {**record, "t": time.time(), "host": self.host, "pid": self.pid}
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        os.write(self._fd, line)  # one write of one line, O_APPEND: never interleaved within this file
        if sync:
            os.fsync(self._fd)

    def pending(self, cases: list[str]) -> None:
        for case in cases:
            self._append({"event": "pending", "case": case, "rank": self.rank})

    def claim(self, case: str) -> None:
        self._append({"event": "claimed", "case": case, "rank": self.rank})

    def done(self, case: str, seconds: float, files: list[Path]) -> None:
        """Record `case` done with the sha256 of each written file (paths inside OUT)."""
        outputs = {os.path.relpath(p, self.folder): sha256_of(p) for p in files}
        self._append({"event": "done", "case": case, "rank": self.rank, "seconds": round(seconds, 3), "outputs": outputs},
                     sync=True)

    def failed(self, case: str, error: str, seconds: float) -> None:
        line = " ".join(str(error).split())[:500]  # one line
        self._append({"event": "failed", "case": case, "rank": self.rank, "error": line, "seconds": round(seconds, 3)},
                     sync=True)

    # -- reading ----------------------------------------------------------------------------------

    def refresh(self) -> dict[str, CaseRecord]:
        """Read what every writer appended since the last call; return the merged case states."""
        for path in sorted(self.dir.glob("*.jsonl")):
            name = path.name
            try:
                with open(path, "rb") as f:
                    f.seek(self._offsets.get(name, 0))
                    data = f.read()
            except OSError:
                continue
            if not data:
                continue
            self._offsets[name] = self._offsets.get(name, 0) + len(data)
            data = self._partial.pop(name, b"") + data
            lines = data.split(b"\n")
            if lines[-1]:  # a torn (or still being written) last line: kept until its newline comes
                self._partial[name] = lines[-1]
            for raw in lines[:-1]:
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue
                self._take(name, record)
        return self.cases

    def _take(self, writer: str, record: dict) -> None:
        if record.get("event") == "start":
            self._keys[writer] = record.get("job")
            return
        if self._keys.get(writer) != self.job_key or record.get("event") not in STATES or "case" not in record:
            return
        case, t = str(record["case"]), float(record.get("t", 0.0))
        old = self.cases.get(case)
        failures = (old.failures if old else 0) + (record["event"] == "failed")
        if old is not None and old.t > t:  # an older record read late (another file): only its failure counts
            old.failures = failures
            return
        self.cases[case] = CaseRecord(
            case=case, state=record["event"], t=t, writer=writer, rank=int(record.get("rank", 0)),
            host=str(record.get("host", "")), pid=int(record.get("pid", 0)), seconds=record.get("seconds"),
            outputs=dict(record.get("outputs") or {}), error=str(record.get("error", "")), failures=failures)

    # -- decisions --------------------------------------------------------------------------------

    def claim_alive(self, record: CaseRecord, now: float | None = None) -> bool:
        """Whether a claim (or a pending plan) is held by a process that is still working on it."""
        if record.writer == self.name:
            return True
        if record.host == self.host:
            return record.pid != self.pid and pid_alive(record.pid)
        return (now if now is not None else time.time()) < record.t + self.lease_s

    def intact(self, record: CaseRecord) -> bool:
        """A done case whose every recorded output still exists with the recorded sha256."""
        if record.state != "done" or not record.outputs:
            return False
        for name, sha in record.outputs.items():
            path = self.folder / name
            if not path.is_file() or sha256_of(path) != sha:
                return False
        return True

    def counts(self, case_ids: list[str]) -> dict[str, int]:
        """{state: number of the job's cases in it}; a case with no record is pending."""
        out = dict.fromkeys(STATES, 0)
        for case in case_ids:
            record = self.cases.get(case)
            out[record.state if record else "pending"] += 1
        return out


# -- the job: shards, its key, its summary ------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """This process's part of the job: cases whose `shard_of(position, count) == index`.
    torchrun: set by torchrun's RANK / WORLD_SIZE (ranks then meet at a barrier before the summary)."""

    index: int = 0
    count: int = 1
    torchrun: bool = False
    local_rank: int = 0


def parse_shard(text: str | None, env: dict | None = None) -> Shard:
    """--shard I/N (0 <= I < N), else torchrun's RANK / WORLD_SIZE / LOCAL_RANK, else the whole job."""
    from medseg.errors import ConfigError

    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if text is not None:
        parts = str(text).split("/")
        ok = len(parts) == 2 and all(p.strip().isdigit() for p in parts) and int(parts[0]) < int(parts[1])
        if not ok:
            raise ConfigError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. --shard 0/4 "
                              "(for a SLURM array: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
        if world > 1:
            raise ConfigError(f"--shard {text} under torchrun (WORLD_SIZE={world}): torchrun already shards the cases "
                              "over its ranks; drop --shard, or run plain processes")
        return Shard(int(parts[0]), int(parts[1]))
    if world > 1:
        return Shard(int(env.get("RANK", "0")), world, True, int(env.get("LOCAL_RANK", "0")))
    return Shard()


def job_key(model_paths: list, options: dict) -> str:
    """sha256 naming the job: the models (their folders' files by name, size and mtime) and every
    option that changes an output, so a ledger of another model or option set is never resumed."""
    items = []
    for ref in model_paths:
        path = Path(ref)
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file()) if path.is_dir() else []
        items.append([str(path.resolve()) if path.exists() else str(ref), files])
    blob = json.dumps({"models": items, "options": {k: str(v) for k, v in sorted(options.items())}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def job_summary(ledger: Ledger, case_ids: list[str], *, since: float, slowest: int = 5) -> list[str]:
    """The job-wide lines from the ledger: counts, the slowest cases, every failure."""
    records = [ledger.cases.get(c) for c in case_ids]
    counts = ledger.counts(case_ids)
    now_done = [r for r in records if r is not None and r.state == "done" and r.t >= since]
    lines = [f"job: {len(case_ids)} cases: {counts['done']} done ({len(now_done)} in this run, "
             f"{counts['done'] - len(now_done)} before), {counts['failed']} failed, "
             f"{counts['pending'] + counts['claimed']} not finished"]
    timed = sorted((r for r in now_done if r.seconds is not None), key=lambda r: -r.seconds)[:slowest]
    if timed:
        lines.append("slowest: " + ", ".join(f"{r.case} {r.seconds:.1f} s (rank {r.rank})" for r in timed))
    lines += [f"failed: {r.case} (rank {r.rank}, {r.failures} attempt(s)): {r.error}" for r in records
              if r is not None and r.state == "failed"]
    return lines


def wait_for_ranks(ledger, ids: list[str], say: Callable[[str], None], every_s: float = 10.0) -> None:
    """Meet the other torchrun ranks at a gloo barrier (no timeout that a long shard would hit);
    meanwhile rank 0 logs the job's progress from the ledger when it changes."""
    import threading
    from datetime import timedelta

    import torch.distributed as dist

    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("gloo", timeout=timedelta(days=7))
    stop = threading.Event()

    def watch() -> None:
        last = None
        while not stop.wait(every_s):
            ledger.refresh()
            counts = ledger.counts(ids)
            if counts != last:
                say(f"job progress: {counts['done']}/{len(ids)} done, {counts['failed']} failed")
                last = counts

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        dist.barrier()
    finally:
        stop.set()
        watcher.join()
        if owns:
            dist.destroy_process_group()


def take_local_gpu(local_rank: int) -> None:
    """torchrun rank on a GPU machine: its own GPU (`cuda` then means cuda:LOCAL_RANK)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
