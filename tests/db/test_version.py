"""version.install: one atomic switch of store and memory (flush, merge, open, log roll, close).

- While a flush or merge has written its transaction but not yet committed it, a reader under
  the read lock sees the old store beside the old memory; right after install, the new store
  beside the new memory (segments, dead rows, frozen memtables, manifest), never a mix.
- A reader thread checking that agreement under the read lock during churn, flushes and merges
  never sees the store and the memory disagree.
- A failure before the commit (the store.commit failpoint, flush/merge.before_commit, an error
  inside the transaction) changes neither the store nor the memory, and the next try succeeds.
- The manifest round-trips with its old key set; an old-format manifest (no log_head / closed
  keys) still reads, and an index holding one opens.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from lsmvec import Client, generate_key
from lsmvec.db import jobs
from lsmvec.db.version import (MANIFEST_KEY, Manifest, SegmentInfo, VersionEdit, install,
                               read_manifest)
from lsmvec.disk.store import Store, StoreTxn
from lsmvec.errors import CorruptionError, StorageError
from lsmvec.wal import failpoints

DIM = 4


def rows(ids, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": i, "vector": rng.standard_normal(DIM).astype(np.float32).tolist(),
             "metadata": {"n": n}} for n, i in enumerate(ids)]


@pytest.fixture
def opened(tmp_path: Path):
    client = Client(tmp_path / "data")
    index = client.create_index("v", generate_key(), dimension=DIM, background_compaction=False)
    try:
        yield index, index._core
    finally:
        failpoints.disarm()
        client.close()


def freeze(core) -> None:
    with core.rw.write():
        core.freeze()


def snapshot(core) -> dict:
    """Store and memory as a reader under the read lock sees them."""
    with core.read_lock():
        stored = read_manifest(core.store)
        return {"store": stored, "memory": core.manifest,
                "segments": [s.id for s in core.segments],
                "dead": {s.id: int(np.count_nonzero(s.persisted)) for s in core.segments},
                "frozen": len(core.frozen), "items": core.store.count()}


def assert_agree(snap: dict) -> None:
    store, memory = snap["store"], snap["memory"]
    assert store == memory, (store, memory)
    assert snap["segments"] == [s.id for s in store.segments]
    assert snap["dead"] == {s.id: s.dead for s in store.segments}


class PausedWrite:
    """Stands in for core.rw: the first write() from `thread_name` (install taking the write
    lock for its commit, its transaction already written) waits until released."""

    def __init__(self, real, thread_name: str):
        self.real, self.thread_name = real, thread_name
        self.reached, self.go = threading.Event(), threading.Event()
        self.armed = True

    def read(self):
        return self.real.read()

    def write(self):
        if self.armed and threading.current_thread().name == self.thread_name:
            self.armed = False
            self.reached.set()
            assert self.go.wait(30)
        return self.real.write()


def run_paused(core, job, name: str):
    """Run job() in a thread paused between its transaction and its commit; returns the
    snapshot taken there, the snapshot after, and the job's outcome."""
    paused = PausedWrite(core.rw, name)
    core.rw = paused
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(job()), name=name)
    try:
        thread.start()
        assert paused.reached.wait(30), "the job never reached its commit"
        during = snapshot(core)
        paused.go.set()
        thread.join(30)
    finally:
        paused.go.set()
        core.rw = paused.real
    assert not thread.is_alive()
    return during, snapshot(core), outcome


def test_a_flush_switches_store_and_memory_together(opened):
    index, core = opened
    index.upsert(rows([f"a{i}" for i in range(30)]))
    freeze(core)
    assert jobs.flush_oldest(core)
    index.upsert(rows([f"a{i}" for i in range(10)], seed=1))  # supersedes rows of segment 1
    index.delete(["a20"])
    freeze(core)
    before = snapshot(core)
    assert_agree(before)
    during, after, outcome = run_paused(core, lambda: jobs.flush_oldest(core), "flush-under-test")
    assert outcome == [True]
    # paused after the transaction was written, before its commit: all old, and agreeing
    assert_agree(during)
    assert during["store"] == before["store"] and during["frozen"] == 1
    assert during["items"] == before["items"]
    # after: all new, and agreeing
    assert_agree(after)
    assert after["store"].version == before["store"].version + 1
    assert after["frozen"] == 0 and len(after["segments"]) == 2
    assert after["dead"][before["segments"][0]] == 11  # 10 overwritten + 1 deleted
    assert after["store"].checkpoint_lsn > before["store"].checkpoint_lsn
    assert index._core.count() == 29
    assert index.verify()["ok"]


def test_a_merge_switches_store_and_memory_together(opened):
    index, core = opened
    for part in range(3):
        index.upsert(rows([f"m{part}-{i}" for i in range(20)], seed=part))
        freeze(core)
        assert jobs.flush_oldest(core)
    index.delete(["m0-1", "m1-2"])
    freeze(core)
    assert jobs.flush_oldest(core)
    before = snapshot(core)
    assert_agree(before)
    assert len(before["segments"]) == 3
    during, after, outcome = run_paused(core, lambda: jobs.merge_segments(core, None),
                                        "merge-under-test")
    assert outcome == [True]
    assert_agree(during)
    assert during["store"] == before["store"] and during["segments"] == before["segments"]
    assert_agree(after)
    assert len(after["segments"]) == 1 and after["segments"][0] not in before["segments"]
    assert after["dead"] == {after["segments"][0]: 0}
    assert after["items"] == 58 == index._core.count()
    assert index.verify()["ok"]


def test_a_reader_never_sees_the_store_beside_other_memory(opened):
    index, core = opened
    stop = threading.Event()
    seen: list = []
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                assert_agree(snapshot(core))
                seen.append(1)
            except AssertionError as exc:
                problems.append(str(exc)[:300])
                stop.set()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for round_ in range(8):
            index.upsert(rows([f"r{i}" for i in range(round_ * 5, round_ * 5 + 25)], seed=round_))
            index.delete([f"r{round_ * 3}"])
            index.flush()
            if round_ % 3 == 2:
                index.compact()
    finally:
        stop.set()
        thread.join()
    assert not problems, problems
    assert len(seen) > 10


@pytest.mark.parametrize("site", ["store.commit", "flush.before_commit"])
def test_a_flush_failing_before_its_commit_changes_nothing(opened, site):
    index, core = opened
    index.upsert(rows([f"f{i}" for i in range(12)]))
    freeze(core)
    before = snapshot(core)
    failpoints.arm(site, "eio")
    with pytest.raises(StorageError):
        jobs.flush_oldest(core)
    failpoints.disarm()
    assert snapshot(core) == before
    assert jobs.flush_oldest(core)
    assert snapshot(core)["frozen"] == 0 and index._core.count() == 12


@pytest.mark.parametrize("site", ["store.commit", "merge.before_commit"])
def test_a_merge_failing_before_its_commit_changes_nothing(opened, site):
    index, core = opened
    for part in range(2):
        index.upsert(rows([f"g{part}-{i}" for i in range(10)], seed=part))
        index.flush()
    before = snapshot(core)
    failpoints.arm(site, "eio")
    with pytest.raises(StorageError):
        jobs.merge_segments(core, None)
    failpoints.disarm()
    assert snapshot(core) == before
    assert jobs.merge_segments(core, None)
    assert len(snapshot(core)["segments"]) == 1 and index._core.count() == 20


def test_an_error_inside_the_transaction_changes_nothing(opened, monkeypatch):
    """The transaction has put every item and dead set when the manifest put fails."""
    index, core = opened
    index.upsert(rows([f"t{i}" for i in range(15)]))
    index.flush()
    index.upsert(rows([f"t{i}" for i in range(5)], seed=3))
    freeze(core)
    before = snapshot(core)
    locations = [core.store.location(f"t{i}") for i in range(15)]
    real = StoreTxn.put_meta

    def failing(self, name, obj):
        if name == MANIFEST_KEY:
            raise StorageError(5, "injected failure inside the transaction")
        return real(self, name, obj)

    monkeypatch.setattr(StoreTxn, "put_meta", failing)
    with pytest.raises(StorageError, match="injected"):
        jobs.flush_oldest(core)
    monkeypatch.setattr(StoreTxn, "put_meta", real)
    assert snapshot(core) == before
    assert [core.store.location(f"t{i}") for i in range(15)] == locations
    assert jobs.flush_oldest(core)
    assert index._core.count() == 15 and index.verify()["ok"]


def test_manifest_only_edits(opened):
    index, core = opened
    before = core.manifest
    # an edit that changes nothing, when asked to skip then, commits nothing
    assert install(core, VersionEdit(log_head=before.log_head, skip_unchanged=True)) is before
    assert read_manifest(core.store) == before
    # a busy commit lock: wait=False gives up
    with core.commit_lock:
        assert install(core, VersionEdit(closed_lsn=7), wait=False) is None
    assert read_manifest(core.store) == before
    # log_head never moves back; the checkpoint and closed mark are set as given
    after = install(core, VersionEdit(log_head=(before.log_head or 0) - 1 if before.log_head else 0))
    assert after.log_head == before.log_head and after.version == before.version + 1
    after = install(core, VersionEdit(closed_lsn=0, checkpoint_lsn=before.checkpoint_lsn))
    assert read_manifest(core.store) == core.manifest == after


def test_the_manifest_round_trips_with_its_old_keys():
    manifest = Manifest([SegmentInfo(3, 10, "brute", [["vectors.bin", 100, "ab" * 32]], None, 2),
                         SegmentInfo(5, 7, "tree_ah", [["a", 1, "cd" * 32]], 4, 0)],
                        checkpoint_lsn=41, next_segment_id=6, version=9, log_head=38, closed_lsn=0)
    body = manifest.pack()
    assert list(body) == ["segments", "checkpoint", "next_segment", "version", "log_head", "closed"]
    assert body["segments"][0] == [3, 10, "brute", [["vectors.bin", 100, "ab" * 32]], None, 2]
    assert Manifest.unpack(body) == manifest
    old = {k: v for k, v in body.items() if k not in ("log_head", "closed")}
    assert Manifest.unpack(old) == Manifest(manifest.segments, 41, 6, 9, None, 0)


def test_an_old_format_manifest_reads_and_its_index_opens(tmp_path):
    key = generate_key()
    root = tmp_path / "data"
    with Client(root) as client:
        index = client.create_index("old", key, dimension=DIM, background_compaction=False)
        index.upsert(rows([f"o{i}" for i in range(8)]))
        index.flush()
        index.upsert(rows(["o100"], seed=9))
        cipher = index._core.cipher
    store = Store(root / "old", cipher)
    try:
        current = read_manifest(store)
        old_body = {k: v for k, v in current.pack().items() if k not in ("log_head", "closed")}

        def put(txn: StoreTxn) -> None:
            txn.put_meta(MANIFEST_KEY, old_body)
        store.commit(put)
        legacy = read_manifest(store)
        assert legacy.log_head is None and legacy.closed_lsn == 0
        assert legacy.segments == current.segments
        assert legacy.checkpoint_lsn == current.checkpoint_lsn

        def broken(txn: StoreTxn) -> None:
            txn.put_meta(MANIFEST_KEY, {"segments": "nope"})
        store.commit(broken)
        with pytest.raises(CorruptionError, match="malformed manifest"):
            read_manifest(store)
        store.commit(put)
    finally:
        store.close()
    with Client(root) as client:
        index = client.load_index("old", key)
        assert index._core.count() == 9
        assert index._core.manifest.log_head is not None  # the open recorded its log file
        assert index.verify()["ok"]
