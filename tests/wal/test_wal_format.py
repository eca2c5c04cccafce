"""The log's byte format and file names, and round trips through writer and reader."""
from __future__ import annotations

import random
import struct
from pathlib import Path

import crc32c
import numpy as np
import pytest

from lsmvec.wal import KIND_CLOSE, LogWriter, list_logs, log_name, parse_log_name, replay
from lsmvec.wal.filenames import is_temp_name, temp_name
from lsmvec.wal.format import (CRC_START, HEADER, HEADER_SIZE, MAGIC, MAGIC_BYTES, encode_header,
                        encode_record, record_crc)


def write_log(directory: Path, records: list[tuple[int, bytes]], *, roll_bytes: int = 64 << 20,
              clean: bool = True) -> list[tuple[int, int, bytes]]:
    """Append (kind, payload) records from LSN 1; returns the oracle [(lsn, kind, payload)]."""
    writer = LogWriter(directory, 1, durability="os", roll_bytes=roll_bytes)
    oracle = [(writer.append(kind, payload), kind, payload) for kind, payload in records]
    writer.close(clean=clean)
    return oracle


def replayed(directory: Path, **kwargs) -> list[tuple[int, int, bytes]]:
    return [(r.lsn, r.kind, r.payload) for r in replay(directory, **kwargs)]


# -- the record header --------------------------------------------------------------------------

def test_header_layout_is_little_endian_magic_crc_length_kind_lsn():
    record = encode_record(0x0102030405060708, 7, b"payload")
    assert HEADER_SIZE == 21 and len(record) == 21 + 7
    assert record[:4] == MAGIC_BYTES and struct.unpack("<I", record[:4])[0] == MAGIC
    magic, crc, length, kind, lsn = HEADER.unpack_from(record)
    assert (length, kind, lsn) == (7, 7, 0x0102030405060708)
    assert record[8:12] == (7).to_bytes(4, "little")
    assert record[12] == 7
    assert record[13:21] == (0x0102030405060708).to_bytes(8, "little")
    assert record[21:] == b"payload"
    assert crc == crc32c.crc32c(record[CRC_START:])


def test_checksum_covers_every_byte_after_the_crc_field():
    record = bytearray(encode_record(5, 1, bytes(range(40))))
    stored = HEADER.unpack_from(record)[1]
    for i in range(CRC_START, len(record)):
        damaged = bytearray(record)
        damaged[i] ^= 0x01
        assert crc32c.crc32c(bytes(damaged[CRC_START:])) != stored, f"byte {i} is not covered"


def test_checksum_of_parts_equals_checksum_of_the_joined_payload():
    parts = [b"head", np.arange(10, dtype=np.float32).tobytes(), b"", memoryview(b"tail")]
    joined = b"".join(bytes(p) for p in parts)
    assert record_crc(9, 3, parts, len(joined)) == record_crc(9, 3, [joined], len(joined))
    assert encode_header(9, 3, parts, len(joined)) + joined == encode_record(9, 3, joined)


def test_encode_header_refuses_an_oversized_length():
    with pytest.raises(ValueError):
        encode_header(1, 1, [], (1 << 30) + 1)


# -- file names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("lsn", [1, 42, 10 ** 19, 2 ** 64 - 1])
def test_log_name_round_trips(lsn):
    name = log_name(lsn)
    assert len(name) == 24 and name.endswith(".log")
    assert parse_log_name(name) == lsn


@pytest.mark.parametrize("bad", [0, -1, 10 ** 20, "7", 1.0, True])
def test_log_name_refuses_bad_lsns(bad):
    with pytest.raises(ValueError):
        log_name(bad)


@pytest.mark.parametrize("name", [
    "1.log", "00000000000000000000.log", "000000000000000000001.log", "00000000000000000001.LOG",
    "00000000000000000001.log.tmp", "0000000000000000000x.log",
    "\uff10" * 19 + "1.log",  # full-width digits
    "00000000000000000001", "CONFIG", ".00000000000000000001.log.ab12cd34.tmp",
])
def test_parse_log_name_refuses_other_names(name):
    assert parse_log_name(name) is None


def test_list_logs_sorts_by_lsn_and_ignores_other_files(tmp_path):
    for lsn in (300, 2, 10 ** 12, 41):
        (tmp_path / log_name(lsn)).write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"x")
    (tmp_path / temp_name(log_name(5))).write_bytes(b"x")
    assert list_logs(tmp_path) == [(n, tmp_path / log_name(n)) for n in (2, 41, 300, 10 ** 12)]
    assert list_logs(tmp_path / "missing") == []


def test_temp_names_are_fresh_and_recognisable():
    a, b = temp_name("CONFIG"), temp_name("CONFIG")
    assert a != b and is_temp_name(a) and is_temp_name(b)
    assert not is_temp_name("CONFIG") and not is_temp_name(log_name(3))


# -- round trips --------------------------------------------------------------------------------

def test_many_records_round_trip_including_large_and_empty_payloads(tmp_path):
    rng = random.Random(1)
    records = [(rng.randint(1, 254), rng.randbytes(rng.choice([0, 1, 21, 300, 5000])))
               for _ in range(300)]
    records[10] = (1, b"")
    records[50] = (2, rng.randbytes(3 << 20))
    records[51] = (3, b"")
    records[200] = (254, rng.randbytes(5 << 20))
    oracle = write_log(tmp_path, records)
    it = replay(tmp_path)
    got = list(it)
    assert [(r.lsn, r.kind, r.payload) for r in got] == oracle
    assert [r.lsn for r in got] == list(range(1, 301))
    # offsets: records are back to back from offset 0 of the one file
    offset = 0
    for r in got:
        assert r.path == tmp_path / log_name(1) and r.offset == offset
        offset += HEADER_SIZE + len(r.payload)
    report = it.report
    assert report.finished and report.records == 300
    assert report.last_lsn == 301 and report.next_lsn == 302  # 301 is the CLOSE record
    assert report.clean_close and report.truncated == [] and report.damage is None
    assert (tmp_path / log_name(1)).stat().st_size == offset + HEADER_SIZE  # + CLOSE


def test_records_spanning_roll_boundaries_round_trip_and_files_are_named_by_first_lsn(tmp_path):
    rng = random.Random(2)
    records = [(1, rng.randbytes(rng.randint(0, 6000))) for _ in range(300)]
    oracle = write_log(tmp_path, records, roll_bytes=10_000)
    got = list(replay(tmp_path))
    assert [(r.lsn, r.kind, r.payload) for r in got] == oracle
    logs = list_logs(tmp_path)
    assert len(logs) > 20
    by_file: dict[Path, list] = {}
    for r in got:
        by_file.setdefault(r.path, []).append(r)
    for first_lsn, path in logs:
        in_file = by_file.get(path, [])
        if in_file:
            assert in_file[0].lsn == first_lsn and in_file[0].offset == 0
        stored = sum(HEADER_SIZE + len(r.payload) for r in in_file)
        # whole records only: a file is its records (plus the CLOSE record in the last one)
        extra = HEADER_SIZE if path == logs[-1][1] else 0
        assert path.stat().st_size == stored + extra
    for (a, pa), (b, _pb) in zip(logs, logs[1:]):
        assert by_file[pa][-1].lsn + 1 == b  # continuous across files


def test_from_lsn_yields_exactly_the_records_at_or_after_it(tmp_path):
    oracle = write_log(tmp_path, [(1, bytes([i]) * i) for i in range(60)], roll_bytes=400)
    for from_lsn in (1, 2, 17, 33, 60, 61, 62):
        it = replay(tmp_path, from_lsn=from_lsn)
        assert [(r.lsn, r.kind, r.payload) for r in it] == oracle[from_lsn - 1:]
        assert it.report.last_lsn == 61 and it.report.clean_close


def test_close_records_are_never_yielded_but_count_as_lsns(tmp_path):
    first = LogWriter(tmp_path, 1, durability="os")
    assert first.append(5, b"a") == 1
    first.close()
    second = LogWriter(tmp_path, 3, durability="os")  # LSN 2 was the CLOSE record
    assert second.append(5, b"b") == 3
    second.close(clean=False)
    it = replay(tmp_path)
    assert [(r.lsn, r.payload) for r in it] == [(1, b"a"), (3, b"b")]
    assert it.report.last_lsn == 3 and not it.report.clean_close
    assert KIND_CLOSE not in {r.kind for r in replay(tmp_path)}


def test_an_empty_or_missing_directory_replays_nothing(tmp_path):
    for directory in (tmp_path, tmp_path / "missing"):
        it = replay(directory)
        assert list(it) == []
        assert it.report.finished and it.report.last_lsn == 0 and it.report.next_lsn == 1
    it = replay(tmp_path, from_lsn=7)
    assert list(it) == [] and it.report.next_lsn == 7
    assert not (tmp_path / "missing").exists()  # replay creates nothing


@pytest.mark.parametrize("bad", [0, -3, "1", 1.5])
def test_replay_refuses_a_bad_from_lsn(tmp_path, bad):
    with pytest.raises(ValueError):
        replay(tmp_path, from_lsn=bad)
