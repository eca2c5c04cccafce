"""The engine's write queue (lsmvec.db.write.WriteQueue): group commit over the log appender.

Leader / followers, one writev and one fdatasync per group (counted), LSNs and seals, applies in
LSN order, per-entry wake-ups (no notify_all herd), the MAX_GROUP_BYTES cap, a bad record
failing alone, close -- and what a failed apply does: the queue refuses every later write with
ApplyFailedError, and the index does too until it is reopened, which replays the record.
"""
from __future__ import annotations

import errno
import os
import threading
import time

import numpy as np
import pytest

from lsmvec import Client
from lsmvec.db import write as write_module
from lsmvec.db.memtable import Memtable
from lsmvec.db.write import WriteQueue, sealer, wal_aad
from lsmvec.disk.crypto import IndexCipher
from lsmvec.wal import LogWriter, RecoveryMode, fsio, replay
from lsmvec.wal.errors import (ApplyFailedError, ClosedError, CorruptionError,
                               InvalidArgumentError, InvalidTypeError, LogPoisonedError,
                               StorageError, StorageFullError)
from test_wal_writer import FullDisk, GatedSync, SyncCounter, records, run_workers


class SlowSync(SyncCounter):
    """A slow disk: each sync takes `seconds` (so groups form behind it), and is counted."""

    def __init__(self, real, seconds: float):
        super().__init__(real)
        self.seconds = seconds

    def __call__(self, fd: int) -> None:
        time.sleep(self.seconds)  # the device's latency, not a wait for another thread
        super().__call__(fd)


@pytest.fixture
def fdatasync(monkeypatch) -> SyncCounter:
    counter = SyncCounter(os.fdatasync)
    monkeypatch.setattr(os, "fdatasync", counter)
    return counter


def wait_until(predicate, timeout: float = 10.0) -> None:
    """Poll `predicate` until it holds, up to a deadline (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


def queue_on(directory, **kwargs) -> WriteQueue:
    seal = kwargs.pop("seal", None)
    return WriteQueue(LogWriter(directory, 1, **kwargs), seal=seal, name="test")


def close(queue: WriteQueue, clean: bool = True) -> None:
    queue.close()
    queue.log.close(clean=clean)


# -- group commit ---------------------------------------------------------------------------------

def test_concurrent_writes_share_fdatasyncs_and_apply_in_lsn_order(tmp_path, monkeypatch):
    counter = SlowSync(os.fdatasync, 0.002)
    monkeypatch.setattr(os, "fdatasync", counter)
    queue = queue_on(tmp_path)
    applied: list[int] = []
    returned: dict[int, tuple[int, bytes]] = {}

    def worker(t: int) -> None:
        for i in range(50):
            payload = b"%d:%d" % (t, i)
            lsn = queue.write(1 + t % 2, payload, applied.append)
            returned[lsn] = (1 + t % 2, payload)

    assert run_workers(worker, 16) == []
    assert len(returned) == 800 and sorted(returned) == list(range(1, 801))
    assert applied == list(range(1, 801))  # every apply ran, strictly in LSN order
    assert counter.calls < 800 / 3
    assert queue.log.groups == counter.calls and queue.log.records == 800  # one sync per group
    close(queue)
    assert records(tmp_path) == [(lsn, *returned[lsn]) for lsn in range(1, 801)]


def test_write_many_writes_its_records_as_one_group_with_one_fdatasync(tmp_path, fdatasync):
    queue = queue_on(tmp_path)
    applied: list[int] = []
    queue.write(1, b"first")
    before = fdatasync.calls
    payloads = [b"r%d" % i * (i + 1) for i in range(50)]
    lsns = queue.write_many([(1 + i % 2, p, applied.append) for i, p in enumerate(payloads)])
    assert lsns == list(range(2, 52)) and applied == lsns
    assert fdatasync.calls == before + 1 and queue.log.groups == 2
    assert queue.write_many([]) == []
    close(queue)
    assert records(tmp_path) == [(1, 1, b"first")] + [
        (lsn, 1 + i % 2, p) for i, (lsn, p) in enumerate(zip(lsns, payloads))]


def test_write_many_and_single_writes_from_many_threads_keep_lsn_order(tmp_path, monkeypatch):
    counter = SlowSync(os.fdatasync, 0.001)
    monkeypatch.setattr(os, "fdatasync", counter)
    queue = WriteQueue(LogWriter(tmp_path, 1, roll_bytes=4096))  # rolls inside groups, too
    applied: list[int] = []
    returned: dict[int, bytes] = {}

    def worker(t: int) -> None:
        for i in range(20):
            if t % 2:
                payloads = [b"%d:%d:%d" % (t, i, j) for j in range(1 + i % 5)]
                lsns = queue.write_many([(1, p, applied.append) for p in payloads])
                assert lsns == sorted(lsns)
                returned.update(zip(lsns, payloads))
            else:
                payload = b"%d:%d" % (t, i)
                returned[queue.write(1, payload, applied.append)] = payload

    assert run_workers(worker, 8) == []
    n = len(returned)
    assert sorted(returned) == list(range(1, n + 1)) and applied == list(range(1, n + 1))
    assert queue.log.groups == counter.calls
    close(queue)
    assert records(tmp_path) == [(lsn, 1, returned[lsn]) for lsn in range(1, n + 1)]


def test_a_group_is_capped_at_max_group_bytes(tmp_path, monkeypatch, fdatasync):
    monkeypatch.setattr(write_module, "MAX_GROUP_BYTES", 250)
    queue = queue_on(tmp_path)
    applied: list[int] = []
    lsns = queue.write_many([(1, bytes(100), applied.append) for _ in range(6)])
    assert lsns == [1, 2, 3, 4, 5, 6] and applied == lsns
    assert queue.log.groups == fdatasync.calls == 3  # 100 + 21 + 100 fits, a third does not
    close(queue)


class CountingLock:
    """Stands in for an entry's wake lock: counts acquires and releases."""

    def __init__(self):
        self._lock = threading.Lock()
        self.acquires = self.releases = 0

    def acquire(self, *args) -> bool:
        self.acquires += 1
        return self._lock.acquire(*args)

    def release(self) -> None:
        self.releases += 1
        self._lock.release()


def test_followers_are_woken_one_by_one_never_by_a_broadcast(tmp_path, monkeypatch):
    entries: list = []

    class Entry(write_module._Entry):
        __slots__ = ()

        def __init__(self, *args):
            super().__init__(*args)
            self.wake = CountingLock()
            self.wake.acquire()
            entries.append(self)

    monkeypatch.setattr(write_module, "_Entry", Entry)
    gated = GatedSync(os.fdatasync)
    monkeypatch.setattr(os, "fdatasync", gated)
    queue = queue_on(tmp_path)
    broadcasts: list[int] = []
    real_notify_all = queue._cond.notify_all
    monkeypatch.setattr(queue._cond, "notify_all",
                        lambda: (broadcasts.append(len(queue._queue)), real_notify_all()))
    outcome: dict[bytes, object] = {}

    def write(payload: bytes) -> None:
        outcome[payload] = queue.write(1, payload)

    threads = [threading.Thread(target=write, args=(b"leader",))]
    threads[0].start()
    assert gated.entered.wait(10)
    for i in range(7):
        threads.append(threading.Thread(target=write, args=(b"f%d" % i,)))
        threads[-1].start()
    wait_until(lambda: len(queue._queue) == 8)  # seven followers wait behind the leader
    gated.gate.set()
    for th in threads:
        th.join(10)
    assert outcome[b"leader"] == 1 and sorted(v for k, v in outcome.items() if k != b"leader") \
        == list(range(2, 9))
    assert gated.calls == 2  # the seven followers made one group
    followers = entries[1:]
    # Each follower was released exactly once: the first woken leads the second group, the
    # others are woken by that leader when the group is done.
    assert all(e.wake.releases == 1 for e in followers), [e.wake.releases for e in followers]
    assert broadcasts == [0]  # notify_all only when the queue ran empty (for close)


# -- seals and LSNs -------------------------------------------------------------------------------

def test_seal_sees_each_records_lsn_and_kind(tmp_path):
    sealed_with: list[tuple[int, int]] = []

    def seal(lsn: int, kind: int, parts: list) -> bytes:
        sealed_with.append((lsn, kind))
        return b"%d|%d|" % (lsn, kind) + b"".join(parts)[::-1]

    queue = queue_on(tmp_path, durability="os", seal=seal)
    lsns = queue.write_many([(k, [b"ab", b"cd"], None) for k in (4, 5, 6)])
    close(queue)
    assert sealed_with == [(1, 4), (2, 5), (3, 6)] == list(zip(lsns, (4, 5, 6)))
    assert records(tmp_path) == [(1, 4, b"1|4|dcba"), (2, 5, b"2|5|dcba"), (3, 6, b"3|6|dcba")]


def test_the_engine_seal_binds_index_lsn_and_kind(tmp_path):
    cipher = IndexCipher(bytes(range(32)), b"u" * 16)
    queue = queue_on(tmp_path, durability="os", seal=sealer(cipher))
    queue.write(2, [b"pay", b"load"])
    close(queue)
    (record,) = list(replay(tmp_path))
    assert record.payload != b"payload"
    assert cipher.wal.open(record.payload, wal_aad(cipher.uuid, 1, 2)) == b"payload"
    with pytest.raises(CorruptionError):
        cipher.wal.open(record.payload, wal_aad(cipher.uuid, 2, 2))  # moved to another LSN


def test_a_bad_record_fails_alone_and_leaves_no_lsn_gap(tmp_path):
    def seal(lsn: int, kind: int, parts: list) -> bytes:
        payload = b"".join(parts)
        if payload == b"bad":
            raise ValueError("cannot seal")
        return "not bytes" if payload == b"odd" else payload

    queue = queue_on(tmp_path, durability="os", seal=seal)
    applied: list[int] = []
    out = queue.write_many([(1, b"a", applied.append), (1, b"bad", applied.append),
                            (1, b"odd", applied.append), (1, b"b", applied.append)])
    assert out[0] == 1 and out[3] == 2 and applied == [1, 2]
    assert isinstance(out[1], ValueError) and isinstance(out[2], InvalidTypeError)
    with pytest.raises(ValueError, match="cannot seal"):
        queue.write(1, b"bad")
    assert queue.write(1, b"c") == 3
    with pytest.raises(InvalidArgumentError):  # a bad kind refuses the whole call up front
        queue.write_many([(1, b"ok", None), (0, b"kind 0", None)])
    assert queue.log.next_lsn == 4
    close(queue)
    assert records(tmp_path, mode=RecoveryMode.ABSOLUTE) == [(1, 1, b"a"), (2, 1, b"b"),
                                                             (3, 1, b"c")]


def test_a_full_disk_fails_the_group_and_its_lsns_are_sealed_again(tmp_path, monkeypatch):
    fs = FullDisk()
    monkeypatch.setattr(fsio, "FS", fs)
    sealed_with: list[int] = []

    def seal(lsn: int, kind: int, parts: list) -> bytes:
        sealed_with.append(lsn)
        return b"".join(parts)

    queue = queue_on(tmp_path, seal=seal)
    applied: list[int] = []
    assert queue.write(1, b"first", applied.append) == 1
    fs.fail_next_write = True
    out = queue.write_many([(1, b"x" * 1000, applied.append), (1, b"y" * 1000, applied.append)])
    assert all(isinstance(e, StorageFullError) and e.errno == errno.ENOSPC for e in out)
    assert out[0] is not out[1]  # each caller raises its own error object
    assert queue.write(2, b"second", applied.append) == 2  # the LSN is reused...
    assert sealed_with == [1, 2, 3, 2] and applied == [1, 2]  # ...and sealed for it again
    close(queue, clean=False)
    assert records(tmp_path, mode=RecoveryMode.ABSOLUTE) == [(1, 1, b"first"), (2, 2, b"second")]


# -- failures and closing -------------------------------------------------------------------------

def run_writes(queue: WriteQueue, payloads: list[bytes]) -> tuple[list[threading.Thread], dict]:
    outcome: dict[bytes, object] = {}

    def write(payload: bytes) -> None:
        try:
            outcome[payload] = queue.write(1, payload)
        except Exception as exc:  # recorded and asserted on by the test
            outcome[payload] = exc

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for th in threads:
        th.start()
    return threads, outcome


def test_every_caller_of_a_group_whose_fdatasync_fails_gets_log_poisoned(tmp_path, monkeypatch):
    gated = GatedSync(os.fdatasync, fail_from=2)
    monkeypatch.setattr(os, "fdatasync", gated)
    queue = queue_on(tmp_path)
    leader, first = run_writes(queue, [b"leader"])
    assert gated.entered.wait(10)
    followers, outcome = run_writes(queue, [b"f%d" % i for i in range(7)])
    wait_until(lambda: len(queue._queue) == 8)  # all seven wait behind the blocked leader
    gated.gate.set()
    for th in leader + followers:
        th.join(10)
    assert first == {b"leader": 1}
    assert len(outcome) == 7 and all(isinstance(e, LogPoisonedError) for e in outcome.values())
    assert gated.calls == 2  # the seven shared one (failed) sync, and it was not retried
    assert queue.poisoned
    with pytest.raises(LogPoisonedError):  # refused before it is queued: no sync tried
        queue.write(1, b"later")
    assert gated.calls == 2
    close(queue)


def test_close_waits_for_queued_writes_and_refuses_later_ones(tmp_path, monkeypatch):
    gated = GatedSync(os.fdatasync)
    monkeypatch.setattr(os, "fdatasync", gated)
    queue = queue_on(tmp_path)
    leader, first = run_writes(queue, [b"leader"])
    assert gated.entered.wait(10)
    queued, outcome = run_writes(queue, [b"q1", b"q2"])
    wait_until(lambda: len(queue._queue) == 3)
    closer = threading.Thread(target=lambda: close(queue))
    closer.start()
    wait_until(lambda: queue._closing)
    with pytest.raises(ClosedError):
        queue.write(1, b"late")
    assert closer.is_alive()  # still waiting: the leader's sync is blocked
    gated.gate.set()
    for th in leader + queued + [closer]:
        th.join(10)
    assert first == {b"leader": 1} and sorted(outcome.values()) == [2, 3]
    it = replay(tmp_path)
    assert sorted(r.payload for r in it) == [b"leader", b"q1", b"q2"]
    assert it.report.clean_close and it.report.last_lsn == 4


def test_a_failed_apply_poisons_the_queue_but_not_the_log(tmp_path, fdatasync):
    queue = queue_on(tmp_path, durability="os")
    applied: list[int] = []

    def failing_apply(lsn: int) -> None:
        raise RuntimeError(f"apply {lsn}")

    out = queue.write_many([(1, b"a", applied.append), (1, b"b", failing_apply),
                            (1, b"c", applied.append)])
    assert out[0] == 1 and applied == [1]  # before the failure: applied and acknowledged
    assert all(isinstance(e, ApplyFailedError) for e in out[1:])  # the failing one and the rest
    assert isinstance(out[1], LogPoisonedError) and isinstance(out[1], StorageError)
    assert "failed apply" in str(out[1]) and "reopen" in str(out[1])
    assert isinstance(out[1].__cause__, RuntimeError) and "apply 2" in str(out[1].__cause__)
    assert queue.poisoned and not queue.log.poisoned
    for call in (lambda: queue.write(1, b"d", applied.append), queue.check, queue.check_applied,
                 lambda: queue.write_many([(1, b"e", None)])):
        with pytest.raises(ApplyFailedError):
            call()
    assert queue.log.next_lsn == 4 and applied == [1]  # nothing more was written or applied
    close(queue)  # the log itself is healthy: it ends with a CLOSE record
    it = replay(tmp_path)
    assert [r.payload for r in it] == [b"a", b"b", b"c"] and it.report.clean_close


def test_writes_queued_behind_a_failing_apply_are_refused_unwritten(tmp_path):
    entered, release = threading.Event(), threading.Event()

    def blocking_failing_apply(lsn: int) -> None:
        entered.set()
        assert release.wait(10)
        raise RuntimeError("memtable refused")

    queue = queue_on(tmp_path, durability="os")
    led: list[BaseException] = []

    def lead() -> None:
        try:
            queue.write(1, b"leader", blocking_failing_apply)
        except ApplyFailedError as exc:
            led.append(exc)

    leader = threading.Thread(target=lead)
    leader.start()
    assert entered.wait(10)
    followers, outcome = run_writes(queue, [b"f1", b"f2"])
    wait_until(lambda: len(queue._queue) == 3)
    release.set()
    for th in [leader, *followers]:
        th.join(10)
    assert len(led) == 1
    assert all(isinstance(e, ApplyFailedError) for e in outcome.values()) and len(outcome) == 2
    assert queue.log.next_lsn == 2  # only the leader's record reached the log
    close(queue)
    assert [r.payload for r in replay(tmp_path)] == [b"leader"]


# -- through the index ----------------------------------------------------------------------------

DIM = 8


def rows(lo: int, hi: int, scale: float = 1.0) -> list[tuple[str, np.ndarray]]:
    return [(f"id{i}", np.full(DIM, (i + 1) * scale, np.float32)) for i in range(lo, hi)]


def state(index) -> dict[str, list[float]]:
    ids = [f"id{i}" for i in range(40)]
    return {h["id"]: h["vector"] for h in index.get(ids, include=["vector"])}


def expected(*row_sets: list[tuple[str, np.ndarray]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for row_set in row_sets:
        out.update({i: v.tolist() for i, v in row_set})
    return out


def test_the_index_writes_a_group_of_calls_with_one_fdatasync(tmp_path, key, fdatasync):
    with Client(tmp_path) as client:
        index = client.create_index("a", key, dimension=DIM, background_compaction=False)
        before = fdatasync.calls
        outcomes = index.write_many([("upsert", (rows(0, 5),), {}), ("delete", (["id1"],), {}),
                                     ("upsert", (rows(5, 9),), {})])
        assert outcomes == [None, None, None] and fdatasync.calls == before + 1
        assert set(state(index)) == {f"id{i}" for i in range(9)} - {"id1"}


def test_a_failed_apply_refuses_writes_until_reopen_and_the_record_replays(tmp_path, key,
                                                                          monkeypatch):
    with Client(tmp_path) as client:
        index = client.create_index("a", key, dimension=DIM, background_compaction=False)
        index.upsert(rows(0, 10))
        index.delete(["id3"])
        acknowledged = expected(rows(0, 10))
        del acknowledged["id3"]

        real_upsert = Memtable.upsert
        calls: list[int] = []

        def upsert_failing_once(self, lsn, *args, **kwargs):
            calls.append(lsn)
            if len(calls) == 1:  # the record is durable by now: the queue applies after the sync
                raise MemoryError("memtable cannot grow")
            return real_upsert(self, lsn, *args, **kwargs)

        monkeypatch.setattr(Memtable, "upsert", upsert_failing_once)
        durable = rows(10, 15) + rows(0, 2, scale=-1.0)  # new ids and overwrites
        with pytest.raises(ApplyFailedError) as info:
            index.upsert(durable)
        assert isinstance(info.value, StorageError) and "reopen" in str(info.value)
        assert isinstance(info.value.__cause__, MemoryError)
        # Every later write, and flush / compact / train, refuses with the same error.
        for call in (lambda: index.upsert(rows(20, 22)), lambda: index.delete(["id0"]),
                     index.flush, index.compact, index.train):
            with pytest.raises(ApplyFailedError):
                call()
        assert isinstance(index.write_many([("upsert", (rows(22, 23),), {})])[0],
                          ApplyFailedError)  # write_many returns each call's error
        assert calls == [calls[0]]  # nothing else reached the memtable
        # Reads go on over memory as it is: the acknowledged writes.
        assert state(index) == acknowledged
        hits = index.query(np.full(DIM, 2.0, np.float32), top_k=1)
        assert hits[0]["id"] == "id1"
        monkeypatch.setattr(Memtable, "upsert", real_upsert)
    # close() skipped the flush (memory does not match the log) and ended the log cleanly.
    with Client(tmp_path) as client:
        index = client.load_index("a", key)
        # Exactly what was acknowledged, plus the durable record whose apply failed: it was in
        # the log, so replay applies it now. The writes refused afterwards never happened.
        assert state(index) == {**acknowledged, **expected(durable)}
        index.upsert(rows(20, 22))  # writes work again after the reopen
        index.delete(["id10"])
        after = {**acknowledged, **expected(durable), **expected(rows(20, 22))}
        del after["id10"]
        assert state(index) == after
    with Client(tmp_path) as client:
        assert state(client.load_index("a", key)) == after
