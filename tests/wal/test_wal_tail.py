"""wal/tail.py: a reader following a log another writer appends to, against the list of
records the writer acknowledged (the oracle): every record once, in order, nothing before its
bytes are whole; file rolls followed; deleted files and real damage reported."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from lsmvec.wal import LogWriter, list_logs
from lsmvec.wal.errors import CorruptionError
from lsmvec.wal.format import HEADER_SIZE
from lsmvec.wal.tail import LogGone, LogTail

KIND = 1


def payload(i: int) -> bytes:
    return b"record-%d-" % i + bytes([i % 251]) * (i % 37)


def write_log(folder: Path, n: int, roll_after: tuple[int, ...] = ()) -> LogWriter:
    """A log of records 1..n (payload(i)), a new file after each LSN in `roll_after`."""
    log = LogWriter(folder, 1, durability="os")
    for i in range(1, n + 1):
        log.append(KIND, payload(i))
        if i in roll_after:
            log.roll()
    return log


def read_all(tail: LogTail) -> list[tuple[int, bytes]]:
    return [(r.lsn, bytes(r.payload)) for r in tail.read()]


def test_follows_appends_and_rolls(tmp_path: Path) -> None:
    log = LogWriter(tmp_path, 1, durability="os")
    tail = LogTail(tmp_path, 1)
    assert read_all(tail) == []  # an empty first file: nothing yet
    want, got = [], []
    for i in range(1, 40):
        log.append(KIND, payload(i))
        want.append((i, payload(i)))
        if i % 7 == 0:
            log.roll()
        if i % 5 == 0:
            got.extend(read_all(tail))
            assert got == want  # everything acknowledged so far, each once
    got.extend(read_all(tail))
    assert got == want and read_all(tail) == []
    assert tail.next_lsn == 40 and len(list_logs(tmp_path)) == 6
    log.close()
    assert read_all(tail) == [] and tail.next_lsn == 41  # the CLOSE record only moves it on


def test_starts_mid_file_at_any_lsn(tmp_path: Path) -> None:
    log = write_log(tmp_path, 19, roll_after=(8,))
    for start in (1, 5, 9, 12, 19, 20):
        assert [lsn for lsn, _ in read_all(LogTail(tmp_path, start))] == list(range(start, 20))
    log.close()


def test_a_record_being_written_is_read_only_once_whole(tmp_path: Path) -> None:
    log = LogWriter(tmp_path, 1, durability="os")
    log.append(KIND, payload(1))
    log.close(clean=False)
    (_first, path), = list_logs(tmp_path)
    whole = path.read_bytes()
    record = whole  # one record: reuse its framing for LSN 1 in a fresh log
    path.write_bytes(b"")
    tail = LogTail(tmp_path, 1)
    for cut in (1, HEADER_SIZE - 1, HEADER_SIZE, len(record) - 1):
        with open(path, "r+b") as f:
            f.truncate(0)
            f.write(record[:cut])  # the writer's bytes reach the file in pieces
        assert read_all(tail) == [] and tail.next_lsn == 1
    with open(path, "r+b") as f:
        f.write(record)
    assert read_all(tail) == [(1, payload(1))]


def test_stopping_early_resumes_after_the_last_record_given(tmp_path: Path) -> None:
    log = write_log(tmp_path, 10)
    tail = LogTail(tmp_path, 1)
    got = []
    for record in tail.read():
        got.append(record.lsn)
        if record.lsn == 4:
            break
    assert got == [1, 2, 3, 4]
    assert [lsn for lsn, _ in read_all(tail)] == list(range(5, 11))
    log.close()


def test_deleted_log_is_reported_as_gone(tmp_path: Path) -> None:
    log = write_log(tmp_path, 6, roll_after=(5,))
    tail = LogTail(tmp_path, 3)
    log.remove_below(5)  # the writer flushed 1..5: their file goes
    with pytest.raises(LogGone):
        read_all(tail)
    with pytest.raises(LogGone):
        read_all(LogTail(tmp_path, 2))
    assert read_all(LogTail(tmp_path, 6)) == [(6, payload(6))]
    log.close()


def test_damage_before_a_newer_file_is_corruption(tmp_path: Path) -> None:
    log = write_log(tmp_path, 4, roll_after=(3,))
    log.close(clean=False)
    first = list_logs(tmp_path)[0][1]
    raw = bytearray(first.read_bytes())
    raw[-3] ^= 0xFF  # the last record of a finished file
    first.write_bytes(raw)
    tail = LogTail(tmp_path, 1)
    with pytest.raises(CorruptionError) as info:
        read_all(tail)
    assert info.value.path == str(first)
    assert tail.next_lsn == 3  # records 1 and 2 were given before


def test_holds_no_file_open_between_reads(tmp_path: Path) -> None:
    log = LogWriter(tmp_path, 1, durability="os")
    log.append(KIND, payload(1))
    tail = LogTail(tmp_path, 1)
    read_all(tail)
    fds = {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
           if os.path.exists(f"/proc/self/fd/{fd}")}
    writer_file = str(list_logs(tmp_path)[0][1])
    # the writer holds its active file; the tail adds no descriptor of its own
    log.close()
    fds_after = {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                 if os.path.exists(f"/proc/self/fd/{fd}")}
    assert writer_file in fds and writer_file not in fds_after


def test_a_missing_file_before_a_later_one_is_gone(tmp_path: Path) -> None:
    """Gone, not corrupt: a writer's flush deletes whole files below its checkpoint, and only
    the caller (has the store moved on?) can tell that from a lost file."""
    log = write_log(tmp_path, 9, roll_after=(3, 6))
    log.close(clean=False)
    middle = list_logs(tmp_path)[1][1]  # records 4..6
    middle.unlink()
    tail = LogTail(tmp_path, 1)
    with pytest.raises(LogGone, match=middle.name):
        read_all(tail)
    assert tail.next_lsn == 4  # records 1..3 were given


def test_damage_with_intact_records_after_it_is_corruption(tmp_path: Path) -> None:
    log = write_log(tmp_path, 5)
    log.close(clean=False)
    (_first, path), = list_logs(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[:8] = bytes(8)  # record 1's header zeroed; records 2..5 intact after it
    path.write_bytes(raw)
    with pytest.raises(CorruptionError) as info:
        read_all(LogTail(tmp_path, 1))
    assert info.value.path == str(path) and info.value.offset == 0
