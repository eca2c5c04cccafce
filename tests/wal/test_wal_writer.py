"""The log appender (wal.LogWriter): framing, LSNs, files, one writev + one sync per group,
durability, failure rules (cut back, poison), truncation, closing, its lock. The queue that
forms groups (group commit), seals and applies: tests/db/test_write_queue.py."""
from __future__ import annotations

import errno
import hashlib
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from lsmvec.wal import LogWriter, RecoveryMode, failpoints, fsio, list_logs, log_name, replay
from lsmvec.wal.errors import (ClosedError, InvalidArgumentError, InvalidTypeError, LogPoisonedError,
                        StorageError, StorageFullError)
from lsmvec.wal.format import HEADER_SIZE, encode_record


def records(directory: Path, **kwargs) -> list[tuple[int, int, bytes]]:
    return [(r.lsn, r.kind, r.payload) for r in replay(directory, **kwargs)]


class SyncCounter:
    """Stands in for os.fdatasync / os.fsync: counts calls, optionally fails one."""

    def __init__(self, real, *, fail_at: int | None = None):
        self.real, self.fail_at = real, fail_at
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        with self._lock:
            self.calls += 1
            failing = self.calls == self.fail_at
        if failing:
            raise OSError(errno.EIO, "Input/output error")
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

@pytest.mark.parametrize("next_lsn, kwargs", [
    (1, {"durability": "always"}), (1, {"durability": None}), (1, {"roll_bytes": 0}),
    (1, {"roll_bytes": 1.5}), (0, {}), (-1, {}), ("1", {}), (None, {})])
def test_bad_options_and_next_lsns_are_refused(tmp_path, next_lsn, kwargs):
    with pytest.raises(InvalidArgumentError):
        LogWriter(tmp_path, next_lsn, **kwargs)


def test_bad_kinds_and_payloads_are_refused_before_anything_is_written(tmp_path):
    writer = LogWriter(tmp_path, 1, durability="os")
    for kind in (0, 255, 256, -1, "1", 1.0, True):
        with pytest.raises(InvalidArgumentError):
            writer.append(kind, b"x")
    for payload in ("text", 3, None, [b"a", "b"], np.zeros((4, 4))[:, ::2]):
        with pytest.raises(InvalidTypeError):
            writer.append(1, payload)
    with pytest.raises(InvalidArgumentError):  # one bad record refuses the whole group
        writer.append_group([(1, b"ok"), (0, b"kind 0")])
    with pytest.raises(InvalidTypeError):
        writer.append_group([(1, b"ok"), (1, "text")])
    assert writer.next_lsn == 1 and (tmp_path / log_name(1)).stat().st_size == 0
    writer.close(clean=False)


def test_lsns_are_consecutive_from_next_lsn_and_name_the_file(tmp_path):
    writer = LogWriter(tmp_path / "a" / "b", 500, durability="os")  # missing parents created
    assert [writer.append(1, b"%d" % i) for i in range(5)] == [500, 501, 502, 503, 504]
    assert writer.next_lsn == 505 and writer.last_lsn == 504
    assert writer.active_path == tmp_path / "a" / "b" / log_name(500)
    assert writer.records == 5 and writer.groups == 5
    writer.close()
    assert [r[0] for r in records(tmp_path / "a" / "b", from_lsn=500)] == [500, 501, 502, 503, 504]


def test_a_writer_always_starts_a_new_file_and_never_touches_older_ones(tmp_path):
    first = LogWriter(tmp_path, 1, durability="os")
    first.append(1, b"one")
    first.close()
    digest = hashlib.sha256((tmp_path / log_name(1)).read_bytes()).digest()
    it = replay(tmp_path)
    list(it)
    second = LogWriter(tmp_path, it.report.next_lsn, durability="os")
    assert second.active_path == tmp_path / log_name(3)
    second.append(1, b"two")
    second.close()
    assert hashlib.sha256((tmp_path / log_name(1)).read_bytes()).digest() == digest
    assert records(tmp_path) == [(1, 1, b"one"), (3, 1, b"two")]


def test_a_next_lsn_behind_the_log_is_refused_and_an_empty_file_is_reused(tmp_path):
    (tmp_path / log_name(10)).write_bytes(b"")  # left by a crash: reused
    writer = LogWriter(tmp_path, 10, durability="os")
    writer.append(1, b"x")
    writer.close()
    assert [p.name for _l, p in list_logs(tmp_path)] == [log_name(10)]
    for behind in (5, 10):
        with pytest.raises(InvalidArgumentError):
            LogWriter(tmp_path, behind)
    assert records(tmp_path, from_lsn=10) == [(10, 1, b"x")]


def test_stats_describe_the_files_on_disk(tmp_path):
    writer = LogWriter(tmp_path, 1, durability="os", roll_bytes=300)
    for i in range(20):
        writer.append(1, bytes(100))
    files = [p for _l, p in list_logs(tmp_path)]
    assert writer.file_count == len(files) > 3
    assert writer.bytes_on_disk == sum(p.stat().st_size for p in files) == 20 * (HEADER_SIZE + 100)
    writer.close()


# -- groups: one writev, one sync, the LSN claim, the framing --------------------------------------

def test_a_group_is_one_write_and_one_fdatasync_with_consecutive_lsns(tmp_path, monkeypatch,
                                                                       fdatasync):
    writes: list[int] = []  # writev rounds (write_all calls)
    real_write_all = fsio.FS.write_all
    monkeypatch.setattr(fsio.FS, "write_all", lambda fd, bufs: (writes.append(len(bufs)),
                                                                real_write_all(fd, bufs)))
    writer = LogWriter(tmp_path, 1)
    assert writer.append(1, b"first") == 1 and writes == [2]  # header + payload
    before_syncs = fdatasync.calls
    payloads = [b"r%d" % i * (i + 1) for i in range(50)]
    first = writer.append_group([(1 + i % 2, p) for i, p in enumerate(payloads)], first_lsn=2)
    assert first == 2 and writer.next_lsn == 52
    assert writes == [2, 100] and fdatasync.calls == before_syncs + 1
    assert writer.groups == 2 and writer.records == 51 and writer.fsyncs >= 2
    assert writer.append_group([]) == 52 and writes == [2, 100]  # nothing written
    writer.close()
    assert records(tmp_path) == [(1, 1, b"first")] + [
        (2 + i, 1 + i % 2, p) for i, p in enumerate(payloads)]


def test_payload_parts_are_framed_back_to_back_byte_identical_to_the_record_format(tmp_path):
    """Existing logs must replay: a group is exactly its records' encode_record bytes."""
    vectors = np.random.default_rng(0).random((3, 384), dtype=np.float32)
    writer = LogWriter(tmp_path, 7, durability="os")
    group = [(1, [b"head", vectors, memoryview(b"mv"), bytearray(b"ba"), b""]),
             (2, (vectors[1],)), (3, bytearray(b"plain")), (254, b"")]
    writer.append_group(group, first_lsn=7)
    writer.close(clean=False)
    payloads = [b"head" + vectors.tobytes() + b"mvba", vectors[1].tobytes(), b"plain", b""]
    kinds = [1, 2, 3, 254]
    assert (tmp_path / log_name(7)).read_bytes() == b"".join(
        encode_record(7 + i, kind, p) for i, (kind, p) in enumerate(zip(kinds, payloads)))
    assert records(tmp_path, from_lsn=7) == [(7 + i, k, p) for i, (k, p) in
                                             enumerate(zip(kinds, payloads))]


@pytest.mark.parametrize("claim", [1, 3, 0, "2", True])
def test_a_group_claiming_another_first_lsn_is_refused_before_anything_is_written(tmp_path, claim):
    writer = LogWriter(tmp_path, 2, durability="os")
    with pytest.raises(InvalidArgumentError):
        writer.append_group([(1, b"sealed for another lsn")], first_lsn=claim)
    assert writer.next_lsn == 2 and writer.active_path.stat().st_size == 0
    assert writer.append_group([(1, b"ok")], first_lsn=2) == 2
    writer.close()


# -- durability -----------------------------------------------------------------------------------

def test_fsync_durability_syncs_once_per_group(tmp_path, fdatasync):
    writer = LogWriter(tmp_path, 1, roll_bytes=1000)
    for i in range(40):
        before = fdatasync.calls
        if i % 2:
            writer.append(1, bytes(100))
        else:
            writer.append_group([(1, bytes(30)), (2, bytes(40)), (3, bytes(50))])
        assert fdatasync.calls == before + 1  # rolls and directories use os.fsync, not this
    assert len(list_logs(tmp_path)) > 2
    writer.close(clean=False)


def test_os_durability_never_syncs_an_append(tmp_path, fdatasync, fsync):
    writer = LogWriter(tmp_path, 1, durability="os")
    syncs_at_open = fsync.calls  # the directory entry of the new file
    for i in range(40):
        writer.append(1, bytes(100))
    assert fdatasync.calls == 0 and fsync.calls == syncs_at_open
    writer.close()  # a clean close makes everything durable
    assert fdatasync.calls == 1


def test_a_roll_fsyncs_the_full_file_and_the_directory(tmp_path, fsync):
    writer = LogWriter(tmp_path, 1, durability="os", roll_bytes=250)
    start = fsync.calls
    writer.append(1, bytes(200))  # file reaches 221 bytes: no roll
    assert fsync.calls == start and len(list_logs(tmp_path)) == 1
    writer.append(1, bytes(200))  # 442 bytes: roll = file fsync + directory fsync
    assert fsync.calls == start + 2 and len(list_logs(tmp_path)) == 2
    assert writer.active_path == tmp_path / log_name(3) and writer.active_first_lsn == 3
    writer.roll()  # an empty active file is not rolled
    assert fsync.calls == start + 2
    writer.append(1, b"x")
    writer.roll()  # the engine rolls at each flush
    assert writer.active_first_lsn == 4 and len(list_logs(tmp_path)) == 3
    before = fsync.calls
    writer.sync()  # forces an fsync of the active file
    assert fsync.calls == before + 1
    writer.close()


# -- failures -------------------------------------------------------------------------------------

def test_a_failed_fdatasync_poisons_the_log_for_good(tmp_path, monkeypatch, fsync):
    counter = SyncCounter(os.fdatasync, fail_at=3)
    monkeypatch.setattr(os, "fdatasync", counter)
    writer = LogWriter(tmp_path, 1)
    writer.append(1, b"a")
    writer.append(1, b"b")
    with pytest.raises(LogPoisonedError) as info:
        writer.append_group([(1, b"c1"), (1, b"c2")])
    assert isinstance(info.value, StorageError) and info.value.errno == errno.EIO
    assert writer.poisoned
    fsyncs = fsync.calls
    for call in (lambda: writer.append(1, b"d"), lambda: writer.append_group([(1, b"e")]),
                 writer.sync, writer.roll, writer.check_writable):
        with pytest.raises(LogPoisonedError):
            call()
    writer.close()  # closes without writing or syncing
    assert counter.calls == 3 and fsync.calls == fsyncs  # no sync was ever retried
    got = records(tmp_path)
    assert got[:2] == [(1, 1, b"a"), (2, 1, b"b")] and len(got) in (2, 4)  # "c*" unknown, whole


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


def test_a_full_disk_fails_only_that_group_and_leaves_no_partial_record(tmp_path, monkeypatch):
    fs = FullDisk()
    monkeypatch.setattr(fsio, "FS", fs)
    writer = LogWriter(tmp_path, 1)
    assert writer.append(1, b"first") == 1
    size = writer.active_path.stat().st_size
    fs.fail_next_write = True
    with pytest.raises(StorageFullError) as info:
        writer.append_group([(1, b"x" * 1000), (1, b"y" * 1000)], first_lsn=2)
    assert info.value.errno == errno.ENOSPC
    assert writer.active_path.stat().st_size == size  # the half-written group was cut off
    assert not writer.poisoned and writer.next_lsn == 2
    assert writer.append_group([(2, b"second")], first_lsn=2) == 2  # the LSNs are reused
    writer.close(clean=False)
    it = replay(tmp_path, mode=RecoveryMode.ABSOLUTE)
    assert [(r.lsn, r.kind, r.payload) for r in it] == [(1, 1, b"first"), (2, 2, b"second")]


def test_a_failed_write_that_cannot_be_cut_off_poisons_the_log(tmp_path, monkeypatch):
    fs = FullDisk(truncate_fails=True)
    monkeypatch.setattr(fsio, "FS", fs)
    writer = LogWriter(tmp_path, 1)
    writer.append(1, b"first")
    fs.fail_next_write = True
    for payload in (b"x" * 1000, b"more"):
        with pytest.raises(LogPoisonedError):
            writer.append(1, payload)
    writer.close()


def test_the_after_write_failpoint_fails_the_group_and_cuts_it_back(tmp_path):
    writer = LogWriter(tmp_path, 1, durability="os")
    writer.append(1, b"first")
    size = writer.active_path.stat().st_size
    failpoints.disarm()
    failpoints.arm("wal.after_write", "eio")
    try:
        with pytest.raises(StorageError) as info:
            writer.append_group([(1, b"lost"), (1, b"lost too")])
    finally:
        failpoints.disarm("wal.after_write")
    assert info.value.errno == errno.EIO and not writer.poisoned
    assert writer.active_path.stat().st_size == size and writer.next_lsn == 2
    assert failpoints.hits("wal.after_write") == 1 and failpoints.hits("wal.after_sync") == 0
    assert writer.append(1, b"second") == 2
    writer.close()
    assert [r[2] for r in records(tmp_path)] == [b"first", b"second"]


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
    writer = LogWriter(tmp_path, 1, roll_bytes=100)
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
        LogWriter(tmp_path / "file" / "wal", 1)


# -- truncation and closing -----------------------------------------------------------------------

def test_remove_below_deletes_exactly_the_files_wholly_at_or_below_the_checkpoint(tmp_path, fsync):
    writer = LogWriter(tmp_path, 1, durability="os", roll_bytes=100)
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
    writer = LogWriter(tmp_path, 1, durability="os")
    writer.append(1, b"x")
    writer.close()
    writer.close()
    assert writer.closed
    for call in (lambda: writer.append(1, b"y"), lambda: writer.append_group([(1, b"y")]),
                 writer.sync, writer.roll, lambda: writer.remove_below(5), writer.check_writable):
        with pytest.raises(ClosedError):
            call()
    it = replay(tmp_path)
    assert [r.payload for r in it] == [b"x"] and it.report.clean_close and it.report.last_lsn == 2
    unclean = LogWriter(tmp_path / "u", 1, durability="os")
    unclean.append(1, b"x")
    unclean.close(clean=False)  # writes no CLOSE record
    it = replay(tmp_path / "u")
    assert [r.payload for r in it] == [b"x"] and not it.report.clean_close
    assert it.report.next_lsn == 2


# -- the appender's lock --------------------------------------------------------------------------

class GatedSync:
    """os.fdatasync whose 1st call blocks until `gate` is set; calls from `fail_from` on fail."""

    def __init__(self, real, fail_from: int | None = None):
        self.real, self.fail_from = real, fail_from
        self.entered, self.gate = threading.Event(), threading.Event()
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1  # only ever called by one writer at a time (the log's lock)
        if self.calls == 1:
            self.entered.set()
            assert self.gate.wait(10), "gate never opened"
        if self.fail_from is not None and self.calls >= self.fail_from:
            raise OSError(errno.EIO, "Input/output error")
        self.real(fd)


def test_groups_from_many_threads_never_interleave_with_each_other_rolls_or_syncs(tmp_path):
    writer = LogWriter(tmp_path, 1, durability="os", roll_bytes=2000)
    groups: dict[int, list[bytes]] = {}
    lock = threading.Lock()
    start = threading.Barrier(9)

    def worker(t: int) -> None:
        start.wait(10)
        for i in range(40):
            payloads = [b"%d:%d:%d" % (t, i, j) for j in range(1 + (t + i) % 4)]
            first = writer.append_group([(1, p) for p in payloads])
            with lock:
                groups[first] = payloads

    def maintenance(_t: int) -> None:
        start.wait(10)
        for _ in range(40):
            writer.roll()
            writer.sync()

    errors = run_workers(lambda t: maintenance(t) if t == 8 else worker(t), 9)
    assert errors == []
    expected = [(first + j, 1, p) for first in sorted(groups) for j, p in enumerate(groups[first])]
    assert [lsn for lsn, _k, _p in expected] == list(range(1, len(expected) + 1))  # no gap
    writer.close()
    assert records(tmp_path) == expected and len(list_logs(tmp_path)) > 3


def test_close_waits_for_a_group_being_written_then_ends_the_log(tmp_path, monkeypatch):
    gated = GatedSync(os.fdatasync)
    monkeypatch.setattr(os, "fdatasync", gated)
    writer = LogWriter(tmp_path, 1)
    outcome: list[object] = []
    appender = threading.Thread(target=lambda: outcome.append(writer.append(1, b"in flight")))
    appender.start()
    assert gated.entered.wait(10)
    closing = threading.Event()
    closer = threading.Thread(target=lambda: (closing.set(), writer.close()))
    closer.start()
    assert closing.wait(10)
    assert not writer.closed  # close needs the log's lock: the group's sync still holds it
    gated.gate.set()
    appender.join(10)
    closer.join(10)
    assert outcome == [1] and writer.closed
    it = replay(tmp_path)
    assert [r.payload for r in it] == [b"in flight"]
    assert it.report.clean_close and it.report.last_lsn == 2


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
