"""Sharded, resumable, exactly-once batch inference: the ledger in OUT, --shard I/N and torchrun ranks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cli_helpers import run
from medseg.inference.ledger import LEDGER_DIR, Ledger, job_key, parse_shard, shard_of
from medseg.errors import ConfigError


def _cases(folder: Path, n: int, corrupt: tuple[int, ...] = ()) -> Path:
    """n small blob scans c00..; the `corrupt` ones are gzip files cut short (unreadable)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.normal(0, 0.5, (24, 24, 12)).astype(np.float32)
        image[8:14, 8:14, 4:8] += 2.5
        path = folder / f"c{i:02d}.nii.gz"
        nib.save(nib.Nifti1Image(image, np.diag([3.0, 3.0, 3.0, 1.0])), path)
        if i in corrupt:
            path.write_bytes(path.read_bytes()[:200])
    return folder


def _events(out: Path) -> list[dict]:
    """Every ledger record of every writer, in file order."""
    records = []
    for path in sorted((out / LEDGER_DIR).glob("*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records


def _done_count(out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in _events(out):
        if r["event"] == "done":
            counts[r["case"]] = counts.get(r["case"], 0) + 1
    return counts


def _mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}


def test_shards_are_round_robin_and_parsed_from_the_option_or_torchrun():
    assert [shard_of(i, 3) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert parse_shard("2/4", env={}).index == 2 and parse_shard("2/4", env={}).count == 4
    rank = parse_shard(None, env={"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (rank.index, rank.count, rank.torchrun, rank.local_rank) == (3, 4, True, 1)
    assert parse_shard(None, env={}).count == 1
    for bad in ("4/4", "1", "a/2", "-1/2"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad, env={})
    with pytest.raises(ConfigError, match="torchrun"):
        parse_shard("0/2", env={"WORLD_SIZE": "2", "RANK": "0"})


def test_the_ledger_merges_writers_skips_torn_lines_and_other_jobs_and_sees_dead_claims(tmp_path):
    first = Ledger(tmp_path, "job-a")
    first.claim("a")
    (tmp_path / "a.nii.gz").write_bytes(b"mask a")
    first.done("a", 1.5, [tmp_path / "a.nii.gz"])
    first.failed("b", "b.nii.gz: unreadable\nsecond line", 0.1)
    first.close()
    # a writer killed mid-line, and one of another job (other model): neither counts
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    host = socket.gethostname()
    (tmp_path / LEDGER_DIR / "x-1.jsonl").write_text(
        json.dumps({"event": "start", "job": "job-a", "t": 1}) + "\n"
        + json.dumps({"event": "claimed", "case": "c", "t": time.time(), "host": host, "pid": dead_pid}) + "\n"
        + json.dumps({"event": "claimed", "case": "d", "t": time.time(), "host": host, "pid": os.getppid()}) + "\n"
        + json.dumps({"event": "claimed", "case": "e", "t": time.time(), "host": "other-node", "pid": 1}) + "\n"
        + '{"event": "done", "case": "c", "t": 9e9, "outp')
    (tmp_path / LEDGER_DIR / "y-2.jsonl").write_text(
        json.dumps({"event": "start", "job": "job-b", "t": 1}) + "\n" + json.dumps({"event": "done", "case": "b", "t": 9e9}) + "\n")
    ledger = Ledger(tmp_path, "job-a", lease_s=60)
    cases = ledger.refresh()
    assert {k: v.state for k, v in cases.items()} == {"a": "done", "b": "failed", "c": "claimed", "d": "claimed", "e": "claimed"}
    assert cases["b"].error == "b.nii.gz: unreadable second line" and cases["b"].failures == 1
    assert ledger.intact(cases["a"])
    assert not ledger.claim_alive(cases["c"])  # its process is gone: taken over
    assert ledger.claim_alive(cases["d"])  # a live process on this host
    assert ledger.claim_alive(cases["e"]) and not ledger.claim_alive(cases["e"], now=time.time() + 61)  # lease
    (tmp_path / "a.nii.gz").write_bytes(b"changed")
    assert not ledger.intact(cases["a"])
    assert ledger.counts(["a", "b", "c", "z"]) == {"pending": 1, "claimed": 1, "done": 1, "failed": 1}
    ledger.close()


def test_the_job_key_changes_with_the_model_and_the_options(tmp_path):
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "model_best.pt").write_bytes(b"1")
    key = job_key([bundle], {"tta": False})
    assert job_key([bundle], {"tta": False}) == key and job_key([bundle], {"tta": True}) != key
    os.utime(bundle / "model_best.pt", ns=(1, 1))  # retrained weights
    assert job_key([bundle], {"tta": False}) != key


def test_a_corrupt_case_fails_alone_and_reruns_skip_done_retry_failed_up_to_the_limit(tiny_bundle, tmp_path, capsys):
    cases = _cases(tmp_path / "cases", 5, corrupt=(2,))
    out = tmp_path / "out"
    args = ["infer", cases, "--model", tiny_bundle, "-o", out, "--device", "cpu", "--precision", "fp32"]
    assert run(*args) == 1
    text = capsys.readouterr().out
    assert "4 ok, 1 failed" in text and "failed: c02" in text and "job: 5 cases: 4 done" in text
    assert sorted(_mtimes(out)) == [f"c{i:02d}.nii.gz" for i in (0, 1, 3, 4)]
    first = _mtimes(out)
    failed = [r for r in _events(out) if r["event"] == "failed"]
    assert len(failed) == 1 and failed[0]["case"] == "c02" and "c02.nii.gz" in failed[0]["error"]

    (out / "c03.nii.gz").write_bytes(b"overwritten by someone")  # a done output that changed is redone
    assert run(*args, "--retries", "1") == 1
    text = capsys.readouterr().out
    assert "1 ok, 1 failed, 3 already done" in text
    assert {k: v for k, v in _mtimes(out).items() if k != "c03.nii.gz"} == {k: v for k, v in first.items() if k != "c03.nii.gz"}
    assert nib.load(out / "c03.nii.gz").shape == (24, 24, 12)
    assert sum(r["event"] == "failed" for r in _events(out)) == 2  # retried once
    assert run(*args, "--retries", "1") == 1  # two failures: not retried again
    text = capsys.readouterr().out
    assert "failed 2 times; not retried" in text and sum(r["event"] == "failed" for r in _events(out)) == 2
    assert _done_count(out) == {f"c{i:02d}": 1 + (i == 3) for i in (0, 1, 3, 4)}


def test_shard_options_split_the_job_between_plain_processes(tiny_bundle, tmp_path, capsys):
    cases = _cases(tmp_path / "cases", 5)
    out = tmp_path / "out"
    args = ["infer", cases, "--model", tiny_bundle, "-o", out, "--device", "cpu", "--precision", "fp32"]
    assert run(*args, "--shard", "1/2") == 0
    assert sorted(_mtimes(out)) == ["c01.nii.gz", "c03.nii.gz"]
    assert "3 not finished" in capsys.readouterr().out
    assert run(*args, "--shard", "0/2") == 0
    assert "job: 5 cases: 5 done (3 in this run, 2 before)" in capsys.readouterr().out
    assert _done_count(out) == {f"c{i:02d}": 1 for i in range(5)}


_SLOW = """
import sys, time
import medseg.batch as batch
real = batch.segment_case
def slow(*args, **kwargs):
    time.sleep(0.4)
    return real(*args, **kwargs)
batch.segment_case = slow
from medseg.cli.main import main
main(sys.argv[1:])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(script: list[str], args: list, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), *script, *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.slow
def test_kill_9_of_one_rank_then_the_same_command_finishes_without_redoing_a_case(tiny_bundle, tmp_path):
    """2 torchrun ranks over 20 cases, rank 1 killed with SIGKILL midway, then the same command: each
    output written exactly once over both runs, each case by its one rank, done ones untouched."""
    cases = _cases(tmp_path / "cases", 20)
    out = tmp_path / "out"
    (tmp_path / "slow.py").write_text(_SLOW)  # 0.4 s more per case, so the kill lands midway
    args = ["infer", cases, "--model", tiny_bundle, "-o", out, "--device", "cpu"]
    proc = _torchrun([str(tmp_path / "slow.py")], args)
    deadline = time.monotonic() + 240
    while not (out / LEDGER_DIR).is_dir() or sum(_done_count(out).values()) < 6:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the first run ended or stalled before 6 cases: {proc.communicate()[1][-3000:]}")
        time.sleep(0.2)
    rank1 = [r["pid"] for r in _events(out) if r["event"] == "start" and r["rank"] == 1]
    os.kill(rank1[0], signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    before = _mtimes(out)
    done_before = set(_done_count(out))
    assert 6 <= len(done_before) < 20
    again = _torchrun([str(tmp_path / "slow.py")], args)
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr[-3000:]
    assert _done_count(out) == {f"c{i:02d}": 1 for i in range(20)}  # no case done twice
    ranks = {r["case"]: r["rank"] for r in _events(out) if r["event"] == "done"}
    assert ranks == {f"c{i:02d}": i % 2 for i in range(20)}  # each case on its one rank
    assert stdout.count("precision:") == 1 and stdout.count("job: 20 cases: 20 done") == 1  # rank 0 reports
    after = _mtimes(out)
    assert all(after[f"{c}.nii.gz"] == before[f"{c}.nii.gz"] for c in done_before)  # untouched
    assert len(after) == 20 and f"{len(done_before)} before" in stdout
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]  # the killed ranks' temporaries are gone


def test_a_dead_processs_claim_is_redone_and_its_temporary_file_removed(tiny_bundle, tmp_path):
    cases = _cases(tmp_path / "cases", 2)
    out = tmp_path / "out"
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    args = ["infer", cases, "--model", tiny_bundle, "-o", out, "--device", "cpu", "--precision", "fp32"]
    assert run(*args, "--shard", "1/2") == 0  # c01 done: the job's key is now in the ledger
    key = next(r["job"] for r in _events(out) if r["event"] == "start")
    (out / LEDGER_DIR / "dead.jsonl").write_text(
        json.dumps({"event": "start", "job": key, "t": time.time()}) + "\n"
        + json.dumps({"event": "claimed", "case": "c00", "t": time.time(), "host": socket.gethostname(), "pid": dead_pid}) + "\n")
    (out / f".c00.tmp-{dead_pid}.nii.gz").write_bytes(b"half a mask")  # what a kill -9 inside the write leaves
    assert run(*args) == 0
    assert not (out / f".c00.tmp-{dead_pid}.nii.gz").exists()
    assert _done_count(out) == {"c00": 1, "c01": 1}
