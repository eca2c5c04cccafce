"""Byte surgery on log files, one failure mode per test (LevelDB log_test.cc), under each
RecoveryMode: torn tails are dropped, damage anywhere else is reported with file and offset."""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from lsmvec.wal import RecoveryMode, Truncation, LogWriter, list_logs, log_name, replay
from lsmvec.wal.errors import CorruptionError
from lsmvec.wal.format import HEADER_SIZE, encode_record

TOLERATE, PIT, ABSOLUTE = (RecoveryMode.TOLERATE_TORN_TAIL, RecoveryMode.POINT_IN_TIME,
                           RecoveryMode.ABSOLUTE)


class Log:
    """A log written from LSN 1, with the oracle and where each record landed."""

    def __init__(self, directory: Path, n: int = 20, *, roll_bytes: int = 64 << 20,
                 clean: bool = False, seed: int = 0):
        rng = random.Random(seed)
        self.dir = directory
        writer = LogWriter(directory, 1, durability="os", roll_bytes=roll_bytes)
        self.oracle = [(writer.append(1 + i % 3, p), 1 + i % 3, p)
                       for i, p in enumerate(rng.randbytes(rng.randint(30, 200)) for _ in range(n))]
        writer.close(clean=clean)
        self.where = {r.lsn: (r.path, r.offset) for r in replay(directory, repair=False)}

    def files(self) -> list[Path]:
        return [p for _lsn, p in list_logs(self.dir)]

    def digest(self) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in self.dir.iterdir()}


def records(directory: Path, **kwargs) -> list[tuple[int, int, bytes]]:
    return [(r.lsn, r.kind, r.payload) for r in replay(directory, **kwargs)]


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def cut(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


# -- torn tails ---------------------------------------------------------------------------------

@pytest.mark.parametrize("into_last", [1, 3, 4, 8, 12, 13, 20, 21, 22, 40, -1])
def test_torn_last_record_is_dropped_and_cut_off_so_the_next_writer_appends_cleanly(
        tmp_path, into_last):
    log = Log(tmp_path)
    path, offset = log.where[20]
    end = path.stat().st_size
    size = offset + into_last if into_last > 0 else end + into_last
    cut(path, size)
    it = replay(tmp_path)
    assert [(r.lsn, r.kind, r.payload) for r in it] == log.oracle[:-1]
    assert it.report.truncated == [Truncation(path, offset, size - offset)]
    assert it.report.repaired and it.report.next_lsn == 20 and not it.report.clean_close
    assert path.stat().st_size == offset
    writer = LogWriter(tmp_path, it.report.next_lsn, durability="os")
    assert writer.append(2, b"after the crash") == 20
    writer.close()
    assert records(tmp_path, mode=ABSOLUTE) == log.oracle[:-1] + [(20, 2, b"after the crash")]


def test_a_cut_on_a_record_boundary_is_no_damage(tmp_path):
    log = Log(tmp_path)
    path, offset = log.where[20]
    cut(path, offset)
    it = replay(tmp_path, mode=ABSOLUTE)
    assert [(r.lsn, r.kind, r.payload) for r in it] == log.oracle[:-1]
    assert it.report.truncated == [] and not it.report.repaired


def test_any_crash_cut_replays_exactly_the_whole_records_before_it(tmp_path):
    rng = random.Random(7)
    base = Log(tmp_path / "base", n=30, roll_bytes=2000)
    last_path = base.files()[-1]
    image = {p.name: p.read_bytes() for p in base.files()}
    for trial in range(25):
        d = tmp_path / f"t{trial}"
        d.mkdir()
        for name, data in image.items():
            (d / name).write_bytes(data)
        size = rng.randint(0, len(image[last_path.name]))
        cut(d / last_path.name, size)
        survivors = [o for o in base.oracle
                     if base.where[o[0]][0] != last_path
                     or base.where[o[0]][1] + HEADER_SIZE + len(o[2]) <= size]
        assert records(d) == survivors
        assert records(d, mode=ABSOLUTE) == survivors  # repaired: nothing torn is left


@pytest.mark.parametrize("field_offset", [0, 3, 4, 7, 8, 11, 12, 13, 20, 21, 30])
def test_flipped_byte_in_the_last_record_of_an_unclosed_log_is_a_torn_tail(tmp_path, field_offset):
    log = Log(tmp_path)
    path, offset = log.where[20]
    flip(path, offset + field_offset)
    it = replay(tmp_path)
    assert [(r.lsn, r.kind, r.payload) for r in it] == log.oracle[:-1]
    assert it.report.truncated[0][:2] == (path, offset)


def test_zero_filled_tail_counts_as_torn(tmp_path):
    log = Log(tmp_path)
    path = log.files()[-1]
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(bytes(65536))  # preallocated / extended file after power loss
    it = replay(tmp_path)
    assert [(r.lsn, r.kind, r.payload) for r in it] == log.oracle
    assert it.report.truncated == [Truncation(path, size, 65536)]
    assert path.stat().st_size == size


def test_zeroed_last_record_with_zero_padding_counts_as_torn(tmp_path):
    log = Log(tmp_path)
    path, offset = log.where[20]
    data = path.read_bytes()
    path.write_bytes(data[:offset + 5] + bytes(len(data) - offset - 5 + 4096))
    assert records(tmp_path) == log.oracle[:-1]


def test_stale_intact_records_after_a_torn_write_do_not_make_it_corruption(tmp_path):
    # Blocks of an older, deleted log may show up after power loss: intact, but older LSNs.
    log = Log(tmp_path)
    path = log.files()[-1]
    with open(path, "ab") as f:
        f.write(b"\x89LWR garbage of an unfinished write" + encode_record(3, 1, b"stale"))
    assert records(tmp_path) == log.oracle


def test_an_empty_last_file_left_by_a_crash_after_a_roll_is_fine(tmp_path):
    log = Log(tmp_path)
    (tmp_path / log_name(21)).write_bytes(b"")
    it = replay(tmp_path, mode=ABSOLUTE)
    assert [(r.lsn, r.kind, r.payload) for r in it] == log.oracle and it.report.next_lsn == 21
    writer = LogWriter(tmp_path, 21, durability="os")  # reuses the empty file
    writer.append(1, b"x")
    writer.close()
    assert len(list_logs(tmp_path)) == 2 and records(tmp_path)[-1] == (21, 1, b"x")


# -- damage that is not a torn tail ---------------------------------------------------------------

@pytest.mark.parametrize("mode", [TOLERATE, ABSOLUTE])
def test_flipped_byte_in_an_earlier_record_raises_naming_file_and_offset(tmp_path, mode):
    log = Log(tmp_path)
    path, offset = log.where[12]
    flip(path, offset + HEADER_SIZE + 2)
    before = log.digest()
    seen = []
    with pytest.raises(CorruptionError) as info:
        for r in replay(tmp_path, mode=mode):
            seen.append((r.lsn, r.kind, r.payload))
    assert info.value.path == str(path) and info.value.offset == offset
    assert str(path) in str(info.value)
    assert seen == log.oracle[:11]
    assert log.digest() == before  # refusing changes nothing


def test_flipped_byte_in_the_last_data_record_of_a_cleanly_closed_log_is_corruption(tmp_path):
    log = Log(tmp_path, clean=True)
    path, offset = log.where[20]
    flip(path, offset + HEADER_SIZE)
    with pytest.raises(CorruptionError) as info:
        records(tmp_path)
    assert (info.value.path, info.value.offset) == (str(path), offset)


def test_flipped_byte_in_the_close_record_itself_is_a_torn_tail(tmp_path):
    log = Log(tmp_path, clean=True)
    path = log.files()[-1]
    flip(path, path.stat().st_size - 1)  # the CLOSE record's lsn
    it = replay(tmp_path)
    assert [(r.lsn, r.kind, r.payload) for r in it] == log.oracle and not it.report.clean_close


def test_damage_at_the_end_of_a_non_last_file_is_corruption(tmp_path):
    log = Log(tmp_path, n=40, roll_bytes=1500)
    first = log.files()[0]
    last_in_first = max(lsn for lsn, (p, _o) in log.where.items() if p == first)
    path, offset = log.where[last_in_first]
    flip(path, offset + HEADER_SIZE + 1)
    with pytest.raises(CorruptionError) as info:
        records(tmp_path)
    assert (info.value.path, info.value.offset) == (str(first), offset)
    cut(first, offset + 5)  # a truncated non-last file is no torn tail either
    with pytest.raises(CorruptionError):
        records(tmp_path)


def test_an_lsn_gap_is_corruption_even_at_the_tail(tmp_path):
    path = tmp_path / log_name(1)
    path.write_bytes(b"".join(encode_record(lsn, 1, b"r%d" % lsn) for lsn in (1, 2, 4)))
    with pytest.raises(CorruptionError) as info:
        records(tmp_path)
    assert info.value.offset == 2 * (HEADER_SIZE + 2)


def test_an_lsn_regression_followed_by_intact_records_is_corruption(tmp_path):
    path = tmp_path / log_name(1)
    path.write_bytes(b"".join(encode_record(lsn, 1, b"r%d" % lsn) for lsn in (1, 2, 2, 3)))
    with pytest.raises(CorruptionError):
        records(tmp_path)


def test_a_file_named_past_the_expected_lsn_is_corruption(tmp_path):
    log = Log(tmp_path, n=40, roll_bytes=1500)
    middle = log.files()[1]
    middle.unlink()
    after = log.files()[1]
    with pytest.raises(CorruptionError) as info:
        records(tmp_path)
    assert (info.value.path, info.value.offset) == (str(after), 0)


def test_missing_oldest_files_are_corruption_when_their_records_are_needed(tmp_path):
    log = Log(tmp_path, n=40, roll_bytes=1500)
    first, second = log.files()[:2]
    second_lsn = next(lsn for lsn, (p, o) in log.where.items() if p == second and o == 0)
    first.unlink()
    assert records(tmp_path, from_lsn=second_lsn) == log.oracle[second_lsn - 1:]
    assert records(tmp_path, from_lsn=second_lsn + 3) == log.oracle[second_lsn + 2:]
    for mode in (TOLERATE, ABSOLUTE):
        with pytest.raises(CorruptionError) as info:
            records(tmp_path, from_lsn=second_lsn - 1, mode=mode)
        assert info.value.path == str(tmp_path) and info.value.offset is None
    # from_lsn=1 is no exception: the records of LSN 1 on are needed and gone
    with pytest.raises(CorruptionError, match="missing"):
        records(tmp_path)


def test_open_payload_errors_are_given_the_record_position(tmp_path):
    log = Log(tmp_path)
    path, offset = log.where[4]

    def open_payload(lsn: int, kind: int, payload: bytes) -> bytes:
        if lsn == 4:
            raise CorruptionError("authentication failed")
        return payload

    with pytest.raises(CorruptionError) as info:
        records(tmp_path, open_payload=open_payload)
    assert (info.value.path, info.value.offset) == (str(path), offset)


# -- the modes ------------------------------------------------------------------------------------

def test_absolute_refuses_a_torn_tail_and_changes_nothing(tmp_path):
    log = Log(tmp_path)
    path, offset = log.where[20]
    cut(path, offset + 30)
    before = log.digest()
    with pytest.raises(CorruptionError) as info:
        records(tmp_path, mode=ABSOLUTE, repair=True)
    assert (info.value.path, info.value.offset) == (str(path), offset)
    assert log.digest() == before


@pytest.mark.parametrize("clean", [False, True])
def test_absolute_accepts_an_undamaged_log(tmp_path, clean):
    log = Log(tmp_path, n=30, roll_bytes=1000, clean=clean)
    assert records(tmp_path, mode=ABSOLUTE) == log.oracle


def test_repair_false_leaves_every_byte_as_it_was(tmp_path):
    log = Log(tmp_path)
    path, offset = log.where[20]
    cut(path, offset + 9)
    before = log.digest()
    it = replay(tmp_path, repair=False)
    assert [(r.lsn, r.kind, r.payload) for r in it] == log.oracle[:-1]
    assert it.report.truncated == [Truncation(path, offset, 9)] and not it.report.repaired
    assert log.digest() == before


def test_point_in_time_keeps_the_prefix_and_reports_what_it_dropped(tmp_path):
    log = Log(tmp_path, n=40, roll_bytes=1500)
    files = log.files()
    path, offset = log.where[5]
    assert path == files[0]
    flip(path, offset + HEADER_SIZE)
    sizes = {p: p.stat().st_size for p in files}
    before = log.digest()

    it = replay(tmp_path, mode=PIT, repair=False)
    assert [(r.lsn, r.kind, r.payload) for r in it] == log.oracle[:4]
    report = it.report
    assert report.last_lsn == 4 and report.next_lsn == 5
    assert (report.damage.path, report.damage.offset) == (str(path), offset)
    assert report.truncated == ([Truncation(path, offset, sizes[path] - offset)]
                                + [Truncation(p, 0, sizes[p]) for p in files[1:]])
    assert log.digest() == before and report.removed == []

    it = replay(tmp_path, mode=PIT, repair=True)
    assert [(r.lsn, r.kind, r.payload) for r in it] == log.oracle[:4]
    assert it.report.removed == files[1:] and log.files() == [path]
    assert path.stat().st_size == offset
    writer = LogWriter(tmp_path, it.report.next_lsn, durability="os")
    writer.append(1, b"new")
    writer.close()
    assert records(tmp_path, mode=ABSOLUTE) == log.oracle[:4] + [(5, 1, b"new")]


def test_point_in_time_tolerates_a_torn_tail_without_reporting_damage(tmp_path):
    log = Log(tmp_path)
    path, offset = log.where[20]
    cut(path, offset + 2)
    it = replay(tmp_path, mode=PIT)
    assert [(r.lsn, r.kind, r.payload) for r in it] == log.oracle[:-1]
    assert it.report.damage is None and it.report.truncated == [Truncation(path, offset, 2)]


def test_point_in_time_stops_at_a_missing_file(tmp_path):
    log = Log(tmp_path, n=40, roll_bytes=1500)
    files = log.files()
    files[2].unlink()
    last_kept = max(lsn for lsn, (p, _o) in log.where.items() if p in files[:2])
    it = replay(tmp_path, mode=PIT, repair=True)
    assert [(r.lsn, r.kind, r.payload) for r in it] == log.oracle[:last_kept]
    assert it.report.removed == files[3:] and log.files() == files[:2]
    assert records(tmp_path, mode=ABSOLUTE) == log.oracle[:last_kept]
