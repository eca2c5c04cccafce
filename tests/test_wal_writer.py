"""The log writer: LSNs, files, group commit, durability modes, failure rules, truncation."""
from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lsmvec.wal import RecoveryMode, WalWriter, fsio, list_logs, log_name, replay
from lsmvec.wal.errors import (ClosedError, InvalidArgumentError, InvalidTypeError, LogPoisonedError,
                        StorageError, StorageFullError)
from lsmvec.wal.format import HEADER_SIZE


def records(directory: Path, **kwargs) -> list[tuple[int, int, bytes]]:
    return [(r.lsn, r.kind, r.payload) for r in replay(directory, **kwargs)]


class SyncCounter:
    """Stands in for os.fdatasync / os.fsync: counts calls, optionally sleeps or fails."""

    def __init__(self, real, *, sleep: float = 0.0, fail_at: int | None = None):
        self.real, self.sleep, self.fail_at = real, sleep, fail_at
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        with self._lock:
            self.calls += 1
            failing = self.calls == self.fail_at
        if failing:
            raise OSError(errno.EIO, "Input/output error")
        if self.sleep:
            time.sleep(self.sleep)
        self.real(fd)


def run_workers(worker, n: int) -> list[BaseException]:
    """Run worker(t) for t in range(n) in n threads; the errors they raised."""
    errors: list[BaseException] = []

    def guarded(t: int) -> None:
        try:
            worker(t)
        except BaseException as exc:  # returned to the test, which asserts there are none
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return errors


@pytest.fixture
def fdatasync(monkeypatch) -> SyncCounter:
    counter = SyncCounter(os.fdatasync)
    monkeypatch.setattr(os, "fdatasync", counter)
    return counter


@pytest.fixture
def fsync(monkeypatch) -> SyncCounter:
    counter = SyncCounter(os.fsync)
    monkeypatch.setattr(os, "fsync", counter)
    return counter


# -- arguments, LSNs, files -----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [{"durability": "always"}, {"durability": None},
                                    {"roll_bytes": 0}, {"roll_bytes": 1.5}])
def test_bad_options_are_refused(tmp_path, kwargs):
    with pytest.raises(InvalidArgumentError):
        WalWriter(tmp_path, 1, **kwargs)


@pytest.mark.parametrize("next_lsn", [0, -1, "1", None])
def test_a_bad_next_lsn_is_refused(tmp_path, next_lsn):
    with pytest.raises(InvalidArgumentError):
        WalWriter(tmp_path, next_lsn)


def test_bad_kinds_and_payloads_are_refused_before_anything_is_written(tmp_path):
    writer = WalWriter(tmp_path, 1, durability="os")
    for kind in (0, 255, 256, -1, "1", 1.0, True):
        with pytest.raises(InvalidArgumentError):
            writer.append(kind, b"x")
    for payload in ("text", 3, None, [b"a", "b"], np.zeros((4, 4))[:, ::2]):
        with pytest.raises(InvalidTypeError):
            writer.append(1, payload)
    assert writer.next_lsn == 1 and (tmp_path / log_name(1)).stat().st_size == 0
    writer.close(clean=False)


def test_lsns_are_consecutive_from_next_lsn_and_name_the_file(tmp_path):
    writer = WalWriter(tmp_path / "a" / "b", 500, durability="os")  # missing parents created
    assert [writer.append(1, b"%d" % i) for i in range(5)] == [500, 501, 502, 503, 504]
    assert writer.next_lsn == 505 and writer.last_lsn == 504
    assert writer.active_path == tmp_path / "a" / "b" / log_name(500)
    assert writer.records == 5 and writer.groups == 5
    writer.close()
    assert [r[0] for r in records(tmp_path / "a" / "b", from_lsn=500)] == [500, 501, 502, 503, 504]


def test_payload_parts_are_written_back_to_back(tmp_path):
    vectors = np.random.default_rng(0).random((3, 384), dtype=np.float32)
    writer = WalWriter(tmp_path, 1, durability="os")
    writer.append(1, [b"header", vectors, memoryview(b"mv"), bytearray(b"ba"), b""])
    writer.append(2, (vectors[1],))
    writer.append(3, bytearray(b"plain"))
    writer.close()
    assert records(tmp_path) == [(1, 1, b"header" + vectors.tobytes() + b"mvba"),
                                 (2, 2, vectors[1].tobytes()), (3, 3, b"plain")]


def test_a_writer_always_starts_a_new_file_and_never_touches_older_ones(tmp_path):
    first = WalWriter(tmp_path, 1, durability="os")
    first.append(1, b"one")
    first.close()
    digest = hashlib.sha256((tmp_path / log_name(1)).read_bytes()).digest()
    it = replay(tmp_path)
    list(it)
    second = WalWriter(tmp_path, it.report.next_lsn, durability="os")
    assert second.active_path == tmp_path / log_name(3)
    second.append(1, b"two")
    second.close()
    assert hashlib.sha256((tmp_path / log_name(1)).read_bytes()).digest() == digest
    assert records(tmp_path) == [(1, 1, b"one"), (3, 1, b"two")]


def test_a_next_lsn_behind_the_log_is_refused(tmp_path):
    writer = WalWriter(tmp_path, 10, durability="os")
    writer.append(1, b"x")
    writer.close()
    for behind in (5, 10):
        with pytest.raises(InvalidArgumentError):
            WalWriter(tmp_path, behind)
    assert records(tmp_path, from_lsn=10) == [(10, 1, b"x")]


def test_an_empty_file_left_by_a_crash_is_reused(tmp_path):
    (tmp_path / log_name(7)).write_bytes(b"")
    writer = WalWriter(tmp_path, 7, durability="os")
    writer.append(1, b"x")
    writer.close()
    assert [p.name for _l, p in list_logs(tmp_path)] == [log_name(7)]


def test_stats_describe_the_files_on_disk(tmp_path):
    writer = WalWriter(tmp_path, 1, durability="os", roll_bytes=300)
    for i in range(20):
        writer.append(1, bytes(100))
    files = [p for _l, p in list_logs(tmp_path)]
    assert writer.file_count == len(files) > 3
    assert writer.bytes_on_disk == sum(p.stat().st_size for p in files) == 20 * (HEADER_SIZE + 100)
    writer.close()


# -- group commit and durability ------------------------------------------------------------------

def test_concurrent_appends_share_fsyncs_and_apply_in_lsn_order(tmp_path, monkeypatch):
    counter = SyncCounter(os.fdatasync, sleep=0.002)
    monkeypatch.setattr(os, "fdatasync", counter)
    writer = WalWriter(tmp_path, 1)
    applied: list[int] = []
    returned: dict[int, tuple[int, bytes]] = {}

    def worker(t: int) -> None:
        for i in range(50):
            payload = b"%d:%d" % (t, i)
            lsn = writer.append(1 + t % 2, payload, applied.append)
            returned[lsn] = (1 + t % 2, payload)

    assert run_workers(worker, 16) == []
    assert len(returned) == 800 and sorted(returned) == list(range(1, 801))
    assert applied == list(range(1, 801))  # every apply ran, strictly in LSN order
    assert counter.calls < 800 / 3
    assert writer.groups == counter.calls and writer.records == 800
    writer.close()
    assert records(tmp_path) == [(lsn, *returned[lsn]) for lsn in range(1, 801)]


def test_append_many_writes_its_records_back_to_back_with_one_sync(tmp_path, fdatasync):
    writer = WalWriter(tmp_path, 1)
    applied: list[int] = []
    writer.append(1, b"first")
    before = fdatasync.calls
    payloads = [b"r%d" % i * (i + 1) for i in range(50)]
    lsns = writer.append_many([(1 + i % 2, p, applied.append) for i, p in enumerate(payloads)])
    assert lsns == list(range(2, 52)) and applied == lsns
    assert fdatasync.calls == before + 1 and writer.groups == 2
    assert writer.append_many([]) == []
    writer.close()
    assert records(tmp_path) == [(1, 1, b"first")] + [
        (lsn, 1 + i % 2, p) for i, (lsn, p) in enumerate(zip(lsns, payloads))]


def test_append_many_reports_each_records_error_on_its_own(tmp_path):
    def seal(lsn: int, kind: int, payload: bytes) -> bytes:
        if payload == b"bad":
            raise ValueError("cannot seal")
        return payload

    def failing_apply(lsn: int) -> None:
        raise RuntimeError(f"apply {lsn}")

    writer = WalWriter(tmp_path, 1, durability="os", seal=seal)
    out = writer.append_many([(1, b"a", None), (1, b"bad", None), (1, b"b", failing_apply),
                              (1, b"c", None)])
    assert out[0] == 1 and out[3] == 3
    assert isinstance(out[1], ValueError) and isinstance(out[2], RuntimeError)
    assert "apply 2" in str(out[2])  # an apply error: the record is logged, only its caller knows
    with pytest.raises(InvalidArgumentError):  # a bad record refuses the whole call up front
        writer.append_many([(1, b"ok", None), (0, b"kind 0", None)])
    writer.close()
    assert records(tmp_path, mode=RecoveryMode.ABSOLUTE) == [(1, 1, b"a"), (2, 1, b"b"),
                                                             (3, 1, b"c")]


def test_append_many_and_single_appends_from_many_threads_keep_lsn_order(tmp_path, monkeypatch):
    counter = SyncCounter(os.fdatasync, sleep=0.001)
    monkeypatch.setattr(os, "fdatasync", counter)
    writer = WalWriter(tmp_path, 1, roll_bytes=4096)  # rolls inside groups, too
    applied: list[int] = []
    returned: dict[int, bytes] = {}

    def worker(t: int) -> None:
        for i in range(20):
            if t % 2:
                payloads = [b"%d:%d:%d" % (t, i, j) for j in range(1 + i % 5)]
                lsns = writer.append_many([(1, p, applied.append) for p in payloads])
                assert lsns == sorted(lsns)
                returned.update(zip(lsns, payloads))
            else:
                payload = b"%d:%d" % (t, i)
                returned[writer.append(1, payload, applied.append)] = payload

    assert run_workers(worker, 8) == []
    n = len(returned)
    assert sorted(returned) == list(range(1, n + 1)) and applied == list(range(1, n + 1))
    writer.close()
    assert records(tmp_path) == [(lsn, 1, returned[lsn]) for lsn in range(1, n + 1)]


def test_fsync_durability_syncs_once_per_append(tmp_path, fdatasync):
    writer = WalWriter(tmp_path, 1, roll_bytes=1000)
    for i in range(40):
        before = fdatasync.calls
        writer.append(1, bytes(100))
        assert fdatasync.calls == before + 1  # rolls and directories use os.fsync, not this
    assert len(list_logs(tmp_path)) > 2
    writer.close(clean=False)


def test_os_durability_never_syncs_an_append(tmp_path, fdatasync, fsync):
    writer = WalWriter(tmp_path, 1, durability="os")
    syncs_at_open = fsync.calls  # the directory entry of the new file
    for i in range(40):
        writer.append(1, bytes(100))
    assert fdatasync.calls == 0 and fsync.calls == syncs_at_open
    writer.close()  # a clean close makes everything durable
    assert fdatasync.calls == 1


def test_a_roll_fsyncs_the_full_file_and_the_directory(tmp_path, fsync):
    writer = WalWriter(tmp_path, 1, durability="os", roll_bytes=250)
    start = fsync.calls
    writer.append(1, bytes(200))  # file reaches 221 bytes: no roll
    assert fsync.calls == start and len(list_logs(tmp_path)) == 1
    writer.append(1, bytes(200))  # 442 bytes: roll = file fsync + directory fsync
    assert fsync.calls == start + 2 and len(list_logs(tmp_path)) == 2
    assert writer.active_path == tmp_path / log_name(3)
    writer.close()


def test_sync_forces_an_fsync(tmp_path, fsync):
    writer = WalWriter(tmp_path, 1, durability="os")
    writer.append(1, b"x")
    before = fsync.calls
    writer.sync()
    assert fsync.calls == before + 1
    writer.close()


# -- failures -------------------------------------------------------------------------------------

def test_a_failed_fdatasync_poisons_the_log_for_good(tmp_path, monkeypatch, fsync):
    counter = SyncCounter(os.fdatasync, fail_at=3)
    monkeypatch.setattr(os, "fdatasync", counter)
    writer = WalWriter(tmp_path, 1)
    writer.append(1, b"a")
    writer.append(1, b"b")
    with pytest.raises(LogPoisonedError) as info:
        writer.append(1, b"c")
    assert isinstance(info.value, StorageError) and info.value.errno == errno.EIO
    assert writer.poisoned
    fsyncs = fsync.calls
    for _ in range(3):
        with pytest.raises(LogPoisonedError):
            writer.append(1, b"d")
    with pytest.raises(LogPoisonedError):
        writer.sync()
    writer.close()  # closes without writing or syncing
    assert counter.calls == 3 and fsync.calls == fsyncs  # no sync was ever retried
    got = records(tmp_path)
    assert got[:2] == [(1, 1, b"a"), (2, 1, b"b")] and len(got) <= 3  # "c" is unknown


class FullDisk(fsio.FileSystem):
    """Writes half of the next group, then fails with ENOSPC; optionally fails the cleanup."""

    def __init__(self, *, truncate_fails: bool = False):
        self.fail_next_write = False
        self.truncate_fails = truncate_fails

    def write_all(self, fd, buffers):
        if self.fail_next_write:
            self.fail_next_write = False
            data = b"".join(bytes(b) for b in buffers)
            os.write(fd, data[:len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        super().write_all(fd, buffers)

    def ftruncate(self, fd, size):
        if self.truncate_fails:
            raise OSError(errno.EIO, "Input/output error")
        super().ftruncate(fd, size)


def test_a_full_disk_fails_only_that_append_and_leaves_no_partial_record(tmp_path, monkeypatch):
    fs = FullDisk()
    monkeypatch.setattr(fsio, "FS", fs)
    writer = WalWriter(tmp_path, 1)
    assert writer.append(1, b"first") == 1
    size = writer.active_path.stat().st_size
    fs.fail_next_write = True
    with pytest.raises(StorageFullError) as info:
        writer.append(1, b"x" * 1000)
    assert info.value.errno == errno.ENOSPC
    assert writer.active_path.stat().st_size == size  # the half-written group was cut off
    assert not writer.poisoned and writer.next_lsn == 2
    assert writer.append(2, b"second") == 2  # the failed record's LSN is reused
    writer.close(clean=False)
    it = replay(tmp_path, mode=RecoveryMode.ABSOLUTE)
    assert [(r.lsn, r.kind, r.payload) for r in it] == [(1, 1, b"first"), (2, 2, b"second")]


def test_a_failed_write_that_cannot_be_cut_off_poisons_the_log(tmp_path, monkeypatch):
    fs = FullDisk(truncate_fails=True)
    monkeypatch.setattr(fsio, "FS", fs)
    writer = WalWriter(tmp_path, 1)
    writer.append(1, b"first")
    fs.fail_next_write = True
    with pytest.raises(LogPoisonedError):
        writer.append(1, b"x" * 1000)
    with pytest.raises(LogPoisonedError):
        writer.append(1, b"more")
    writer.close()


def test_an_apply_error_reaches_only_its_caller_and_the_record_stays_logged(tmp_path):
    writer = WalWriter(tmp_path, 1, durability="os")

    def boom(lsn: int) -> None:
        raise RuntimeError(f"apply {lsn} failed")

    writer.append(1, b"a")
    with pytest.raises(RuntimeError, match="apply 2 failed"):
        writer.append(1, b"b", boom)
    assert writer.append(1, b"c") == 3
    writer.close()
    assert [r[2] for r in records(tmp_path)] == [b"a", b"b", b"c"]


# -- seal / open hooks ----------------------------------------------------------------------------

def test_seal_and_open_payload_see_the_record_lsn_and_kind(tmp_path):
    sealed_with: list[tuple[int, int]] = []

    def seal(lsn: int, kind: int, payload: bytes) -> bytes:
        sealed_with.append((lsn, kind))
        return b"%d|%d|" % (lsn, kind) + payload[::-1]

    def open_payload(lsn: int, kind: int, payload: bytes) -> bytes:
        prefix = b"%d|%d|" % (lsn, kind)
        assert payload.startswith(prefix)
        return payload[len(prefix):][::-1]

    writer = WalWriter(tmp_path, 1, durability="os", seal=seal)
    lsns = [writer.append(k, [b"ab", b"cd"]) for k in (4, 5, 6)]
    writer.close()
    assert sealed_with == [(1, 4), (2, 5), (3, 6)] == list(zip(lsns, (4, 5, 6)))
    assert records(tmp_path) == [(1, 4, b"1|4|dcba"), (2, 5, b"2|5|dcba"), (3, 6, b"3|6|dcba")]
    assert records(tmp_path, open_payload=open_payload) == [(1, 4, b"abcd"), (2, 5, b"abcd"),
                                                            (3, 6, b"abcd")]


def test_a_failing_seal_fails_only_its_record_and_leaves_no_lsn_gap(tmp_path):
    def seal(lsn: int, kind: int, payload: bytes) -> bytes:
        if payload == b"bad":
            raise ValueError("cannot seal")
        return payload

    writer = WalWriter(tmp_path, 1, durability="os", seal=seal)
    writer.append(1, b"a")
    with pytest.raises(ValueError, match="cannot seal"):
        writer.append(1, b"bad")
    assert writer.append(1, b"b") == 2
    writer.close()
    assert records(tmp_path, mode=RecoveryMode.ABSOLUTE) == [
        (1, 1, b"a"), (2, 1, b"b")]


# -- truncation and closing -----------------------------------------------------------------------

def test_remove_below_deletes_exactly_the_files_wholly_at_or_below_the_checkpoint(tmp_path, fsync):
    writer = WalWriter(tmp_path, 1, durability="os", roll_bytes=100)
    for i in range(30):
        writer.append(1, bytes(40 + i % 50))
    starts = [lsn for lsn, _p in list_logs(tmp_path)]
    assert len(starts) > 5
    for checkpoint in (0, starts[1] - 2, starts[1] - 1, starts[3], starts[-1] - 1, 10 ** 6):
        present = [lsn for lsn, _p in list_logs(tmp_path)]
        expected = [a for a, b in zip(present, present[1:]) if b <= checkpoint + 1]
        syncs = fsync.calls
        removed = writer.remove_below(checkpoint)
        assert removed == [tmp_path / log_name(lsn) for lsn in expected]
        assert [lsn for lsn, _p in list_logs(tmp_path)] == present[len(expected):]
        assert fsync.calls == syncs + (1 if removed else 0)  # the directory, once
        first_needed = min(checkpoint + 1, 31)
        assert [r[0] for r in records(tmp_path, from_lsn=max(first_needed, 1), repair=False)] == \
            list(range(max(first_needed, 1), 31))
    assert [p for _l, p in list_logs(tmp_path)] == [writer.active_path]  # never the active file
    writer.close()


def test_close_is_idempotent_and_refuses_later_use(tmp_path):
    writer = WalWriter(tmp_path, 1, durability="os")
    writer.append(1, b"x")
    writer.close()
    writer.close()
    assert writer.closed
    with pytest.raises(ClosedError):
        writer.append(1, b"y")
    with pytest.raises(ClosedError):
        writer.sync()
    with pytest.raises(ClosedError):
        writer.remove_below(5)
    it = replay(tmp_path)
    assert [r.payload for r in it] == [b"x"] and it.report.clean_close and it.report.last_lsn == 2


def test_an_unclean_close_writes_no_close_record(tmp_path):
    writer = WalWriter(tmp_path, 1, durability="os")
    writer.append(1, b"x")
    writer.close(clean=False)
    it = replay(tmp_path)
    assert [r.payload for r in it] == [b"x"] and not it.report.clean_close
    assert it.report.next_lsn == 2


class GatedSync:
    """os.fdatasync stand-in whose first call blocks until `gate` is set; `fail_from` makes that
    call number and later ones fail."""

    def __init__(self, real, fail_from: int | None = None):
        self.real, self.fail_from = real, fail_from
        self.entered, self.gate = threading.Event(), threading.Event()
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1  # only ever called by the one leader at a time
        if self.calls == 1:
            self.entered.set()
            self.gate.wait(10)
        if self.fail_from is not None and self.calls >= self.fail_from:
            raise OSError(errno.EIO, "Input/output error")
        self.real(fd)


def run_appends(writer: WalWriter, payloads: list[bytes]) -> tuple[list[threading.Thread], dict]:
    outcome: dict[bytes, object] = {}

    def append(payload: bytes) -> None:
        try:
            outcome[payload] = writer.append(1, payload)
        except Exception as exc:  # recorded and asserted on by the test
            outcome[payload] = exc

    threads = [threading.Thread(target=append, args=(p,)) for p in payloads]
    for th in threads:
        th.start()
    return threads, outcome


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


def test_every_caller_of_a_group_whose_fsync_fails_gets_log_poisoned(tmp_path, monkeypatch):
    gated = GatedSync(os.fdatasync, fail_from=2)
    monkeypatch.setattr(os, "fdatasync", gated)
    writer = WalWriter(tmp_path, 1)
    leader, first = run_appends(writer, [b"leader"])
    assert gated.entered.wait(10)
    followers, outcome = run_appends(writer, [b"f%d" % i for i in range(7)])
    wait_until(lambda: len(writer._queue) == 8)  # all seven wait behind the blocked leader
    gated.gate.set()
    for th in leader + followers:
        th.join()
    assert first == {b"leader": 1}
    assert len(outcome) == 7 and all(isinstance(e, LogPoisonedError) for e in outcome.values())
    assert gated.calls == 2  # the seven shared one (failed) sync, and it was not retried
    writer.close()


def test_close_waits_for_queued_appends_and_refuses_later_ones(tmp_path, monkeypatch):
    gated = GatedSync(os.fdatasync)
    monkeypatch.setattr(os, "fdatasync", gated)
    writer = WalWriter(tmp_path, 1)
    leader, first = run_appends(writer, [b"leader"])
    assert gated.entered.wait(10)
    queued, outcome = run_appends(writer, [b"q1", b"q2"])
    wait_until(lambda: len(writer._queue) == 3)
    closer = threading.Thread(target=writer.close)
    closer.start()
    wait_until(lambda: writer._closing)
    with pytest.raises(ClosedError):
        writer.append(1, b"late")
    assert closer.is_alive()  # still waiting: the leader's sync is blocked
    gated.gate.set()
    for th in leader + queued + [closer]:
        th.join()
    assert first == {b"leader": 1} and sorted(outcome.values()) == [2, 3]
    it = replay(tmp_path)
    assert sorted(r.payload for r in it) == [b"leader", b"q1", b"q2"]
    assert it.report.clean_close and it.report.last_lsn == 4


def test_a_roll_whose_directory_sync_fails_poisons_but_keeps_the_acknowledged_record(
        tmp_path, monkeypatch):
    class BadDirectory(fsio.FileSystem):
        fail = False

        def fsync_dir(self, path):
            if self.fail:
                raise OSError(errno.EIO, "Input/output error")
            super().fsync_dir(path)

    fs = BadDirectory()
    monkeypatch.setattr(fsio, "FS", fs)
    writer = WalWriter(tmp_path, 1, roll_bytes=100)
    fs.fail = True
    assert writer.append(1, bytes(200)) == 1  # durable before the roll was tried
    assert writer.poisoned
    with pytest.raises(LogPoisonedError):
        writer.append(1, b"next")
    writer.close()
    assert records(tmp_path) == [(1, 1, bytes(200))]


def test_a_directory_that_cannot_be_created_is_a_storage_error(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError):
        WalWriter(tmp_path / "file" / "wal", 1)


# -- fsio helpers used by other layers ------------------------------------------------------------

def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "CONFIG"
    fsio.atomic_write(target, b"one")
    fsio.atomic_write(target, memoryview(b"two"))
    assert target.read_bytes() == b"two" and os.listdir(tmp_path) == ["CONFIG"]


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    class NoRename(fsio.FileSystem):
        def rename(self, src, dst):
            raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "CONFIG"
    target.write_bytes(b"old")
    monkeypatch.setattr(fsio, "FS", NoRename())
    with pytest.raises(StorageFullError):
        fsio.atomic_write(target, b"new")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["CONFIG"]


def test_make_dirs_creates_missing_parents_and_syncs_each_parent(tmp_path, fsync):
    fsio.make_dirs(tmp_path / "a" / "b" / "c")
    assert (tmp_path / "a" / "b" / "c").is_dir() and fsync.calls == 3
    fsio.make_dirs(tmp_path / "a" / "b" / "c")  # exists: nothing to do
    assert fsync.calls == 3
