"""One writer process and three read_only reader processes on one folder (issue 20's proof).

The load, the worker roles and the judge live in lsmvec/tools/readers_load.py (its docstring:
batches are single calls that name themselves, the writer journals start and ack times, the
readers log every read with its times). Here the parent runs the processes, kills them, and
checks what they saw:

- every read (get of the whole id pool, list_ids, a query) equals (a query: is contained in)
  the oracle's state after SOME batch k -- no partial batch, no resurrected delete, no torn
  item --, batch k was started before the read ended, and k never goes back per reader;
- staleness (read start minus the ack of the first batch it does not show) stays within
  max_staleness plus slack; p50 / p99 / max are reported;
- kill -9 of the writer: readers go on answering, a new writer opens and finds every
  acknowledged batch; kill -9 of readers: the writer goes on, new readers open;
- data.mdb with three readers stays near its size without readers (reader slots do not pin
  pages: views are refreshed, dead readers' slots freed at each install);
- readers leave every byte of the folder as it was (store/lock.mdb, LMDB's reader table, aside).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from lsmvec.tools import readers_load as rl
from lsmvec.tools._report import folder_bytes

MAX_STALENESS = 0.5
SLACK = 2.5
"""Seconds past max_staleness a read may lag: a refresh that builds a new view (opening new
segments) runs on 2 cores shared by 4 processes and other jobs."""
DEADLINE = 60.0


def _env(key: bytes) -> dict[str, str]:
    return dict(os.environ, **{rl.KEY_ENV: key.hex()})


class Run:
    """The processes of one folder and their files."""

    def __init__(self, root: Path, key: bytes, seed: int = 0):
        self.root, self.key, self.seed = root, key, seed
        self.folder = root / "data"
        self.journal = root / "journal"
        self.stop = root / "stop"
        self.reader_files: list[Path] = []
        self.procs: list[subprocess.Popen] = []
        self.peak_bytes = 0
        rl.create(self.folder, key)

    def _spawn(self, role: str, out: Path, *extra: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "lsmvec.tools.readers_load", role, str(self.folder),
               str(out), "--seed", str(self.seed), "--stop-file", str(self.stop), *extra]
        err = open(out.with_suffix(".err"), "ab")
        proc = subprocess.Popen(cmd, env=_env(self.key), stdout=subprocess.DEVNULL, stderr=err)
        err.close()
        proc.err_path = out.with_suffix(".err")  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def writer(self, batches: int) -> subprocess.Popen:
        return self._spawn("writer", self.journal, "--batches", str(batches))

    def reader(self, *extra: str) -> subprocess.Popen:
        out = self.root / f"reads{len(self.reader_files)}"
        self.reader_files.append(out)
        return self._spawn("reader", out, "--max-staleness", str(MAX_STALENESS), *extra)

    def wait_for(self, what: str, cond: Callable[[], bool], alive: list[subprocess.Popen],
                 may_finish: tuple[subprocess.Popen, ...] = ()) -> None:
        """Poll `cond` until true; fail at the deadline or when a process in `alive` died (one
        in `may_finish` may also have ended cleanly: a writer done with its batches)."""
        end = time.monotonic() + DEADLINE
        while not cond():
            for proc in alive:
                code = proc.poll()
                assert code is None or (code == 0 and proc in may_finish), \
                    f"{what}: a worker died: {_stderr(proc)}"
            assert time.monotonic() < end, f"timed out waiting for {what}"
            self.peak_bytes = max(self.peak_bytes, folder_bytes(self.folder))
            time.sleep(0.02)

    def acked(self) -> int:
        return rl.read_journal(self.journal).acked

    def reads_after(self, path: Path, t: float) -> int:
        lines = path.read_bytes().split(b"\n")[:-1] if path.exists() else []
        return sum(1 for line in lines if b'"t0"' in line and _t0(line) > t)

    def finish(self, procs: list[subprocess.Popen]) -> None:
        for proc in procs:
            try:
                proc.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
            assert proc.returncode == 0, _stderr(proc)

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _t0(line: bytes) -> float:
    return float(json.loads(line)["t0"])


def _stderr(proc: subprocess.Popen) -> str:
    return Path(proc.err_path).read_text(errors="replace")[-3000:]  # type: ignore[attr-defined]


def _kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _final_state(folder: Path, key: bytes) -> dict:
    from lsmvec import Client
    with Client(folder) as client:
        return rl.read_state(client.load_index(rl.INDEX, key))


@pytest.fixture
def run(tmp_path: Path) -> Any:
    from lsmvec import generate_key
    r = Run(tmp_path, generate_key())
    yield r
    r.kill_all()


@pytest.mark.slow
def test_readers_see_committed_states_through_kills(run: Run, tmp_path: Path,
                                                   record_property: Any) -> None:
    batches = 240
    seed = int(np.random.default_rng().integers(1 << 30))
    record_property("kill_seed", seed)
    print(f"kill seed {seed}")
    rng = np.random.default_rng(seed)
    writer = run.writer(batches)
    readers = [run.reader() for _ in range(3)]
    # kill -9 of the writer: the readers go on answering, a new writer finds every ack
    kill_at = int(rng.integers(40, 100))
    run.wait_for("the first writer's acks", lambda: run.acked() >= kill_at, [writer, *readers])
    _kill9(writer)
    killed = time.monotonic()
    run.wait_for("reads after the writer's kill", lambda: all(
        run.reads_after(p, killed) >= 3 for p in run.reader_files), readers)
    before = run.acked()
    writer = run.writer(batches)
    run.wait_for("the second writer's open", lambda: len(rl.read_journal(run.journal).opens) == 2,
                 [writer, *readers])
    # kill -9 of two readers at random moments: the writer goes on, new readers open
    killed_pids = []
    for at in sorted(rng.integers(before + 15, before + 110, 2)):
        run.wait_for(f"ack {at}", lambda: run.acked() >= at, [writer, *readers],
                     may_finish=(writer,))
        victim = readers.pop(int(rng.integers(len(readers))))
        _kill9(victim)
        killed_pids.append(victim.pid)
        gone, acked = time.monotonic(), run.acked()
        readers.append(run.reader())
        run.wait_for("a new reader's reads", lambda: run.reads_after(
            run.reader_files[-1], gone) >= 3, [writer, *readers], may_finish=(writer,))
        assert run.acked() > acked or writer.poll() is not None, "the writer stalled"
    run.finish([writer])
    # the writer's installs after the kills freed the dead readers' LMDB slots
    slots = _reader_slots(run.folder / rl.INDEX / "store")
    assert not set(slots) & set(killed_pids), (slots, killed_pids)
    run.stop.touch()
    run.finish(readers)

    for path in run.reader_files:  # a failed background refresh is logged, never silent
        assert b"refresh failed" not in path.with_suffix(".err").read_bytes(), path
    journal = rl.read_journal(run.journal)
    assert journal.acked == batches
    assert _final_state(run.folder, run.key) == rl.state_after(run.seed, batches)
    verdict = rl.judge(rl.Oracle(run.seed, batches + 1), journal, run.reader_files)
    assert verdict.violations == [], verdict.violations[:10]
    stale = verdict.percentiles()
    record_property("staleness", stale)
    record_property("reads", verdict.reads)
    print(f"reads {verdict.reads} staleness {stale} peak folder bytes {run.peak_bytes}")
    assert min(verdict.reads.values()) >= 20, verdict.reads
    assert verdict.max_seen == batches, "no reader saw the last batch"
    assert stale["max"] <= MAX_STALENESS + SLACK, stale
    # the disk: data.mdb against the same batches written with no reader
    mdb = (run.folder / rl.INDEX / "store" / "data.mdb").stat().st_size
    (tmp_path / "alone").mkdir()
    alone = Run(tmp_path / "alone", run.key)
    solo = alone.writer(batches)
    alone.finish([solo])
    alone_mdb = (alone.folder / rl.INDEX / "store" / "data.mdb").stat().st_size
    print(f"data.mdb with readers {mdb}, without {alone_mdb}")
    record_property("data_mdb", {"readers": mdb, "alone": alone_mdb})
    # 1.5-2.1x measured alone (a refresh every 0.125 s); 3.2x once inside a loaded full run,
    # where readers refresh late and pin more pages: at these sizes (0.25 MB alone) a few
    # pinned transactions are most of the file, hence a slack of 512 KiB on top of the ratio
    assert mdb <= 3 * alone_mdb + (512 << 10), (mdb, alone_mdb)


def _reader_slots(store: Path) -> list[int]:
    """The pids holding LMDB reader slots of `store` (its lock.mdb's reader table)."""
    import lmdb
    env = lmdb.open(str(store), readonly=True, max_dbs=4, subdir=True)
    try:
        lines = env.readers().splitlines()[1:]  # "pid thread txnid" rows after a header
    finally:
        env.close()
    return [int(line.split()[0]) for line in lines if line.split() and line.split()[0].isdigit()]


def _hashes(folder: Path) -> dict[str, str]:
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_file() and path.parts[-2:] != ("store", "lock.mdb"):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            out[rel] = "dir"
    return out


@pytest.mark.slow
@pytest.mark.parametrize("writer_end", ["closed", "killed"])
def test_readers_change_no_byte(run: Run, writer_end: str) -> None:
    """With the writer gone (closed, or killed mid-batch: a log tail past the checkpoint,
    perhaps a torn record), three readers open, read and refresh many times, and close: every
    file but LMDB's reader table is byte for byte as it was, none added or removed."""
    batches = 30 if writer_end == "closed" else 10 ** 6
    writer = run.writer(batches)
    if writer_end == "closed":
        run.finish([writer])
    else:
        run.wait_for("acks", lambda: run.acked() >= 30, [writer])
        _kill9(writer)
    before = _hashes(run.folder)
    readers = [run.reader("--max-reads", "24", "--max-staleness", "0.02") for _ in range(3)]
    run.finish(readers)
    assert _hashes(run.folder) == before
    journal = rl.read_journal(run.journal)
    verdict = rl.judge(rl.Oracle(run.seed, journal.acked + 2), journal, run.reader_files)
    assert verdict.violations == []
    assert sum(verdict.reads.values()) == 72  # every read judged
    assert verdict.max_seen >= journal.acked  # the whole log tail replayed
