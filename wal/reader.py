"""Reading one log file: intact records in order, and where the first damage is (LevelDB
log_reader). This module reports; recovery.py decides what a damage means.

Files are read sequentially in large chunks (bounded memory, whatever the file or record size)
and each record costs one struct unpack and one crc32c call over header tail + payload, which are
contiguous in the chunk: replay runs at memory/CRC speed, not at Python-per-byte speed.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

import crc32c

from .format import CRC_START, HEADER, HEADER_SIZE, KIND_CLOSE, MAGIC, MAGIC_BYTES, MAX_PAYLOAD

__all__ = ["Record", "Damage", "LogFileReader", "find_intact_record"]

READ_CHUNK = 1 << 20  # bytes per read(); a larger record is read in one piece of its own size
SCAN_CHUNK = 1 << 20  # bytes per step when looking for an intact record past a damage


class Record(NamedTuple):
    """A data record: `payload` as stored (or as returned by replay's open_payload)."""

    lsn: int
    kind: int
    payload: bytes
    path: Path
    offset: int  # byte offset of the record's header in `path`


class Damage(NamedTuple):
    """The first record of a file that is not an intact, in-sequence record."""

    path: Path
    offset: int | None
    reason: str
    # False when the bytes prove later writes happened (an intact record whose LSN skips ahead,
    # a file starting past the expected LSN): a crash mid-write can never produce that.
    may_be_torn: bool


_new_record = tuple.__new__


class LogFileReader:
    """Iterates the intact records of one log file whose first LSN is `first_lsn`, yielding
    data records with lsn >= `min_lsn`; stops at the first damage and stores it in `.damage`.

    After iteration: `damage` (or None), `next_lsn` (one past the last intact record of any
    kind), `last_kind` (kind of that record, or None), `end_offset` (where intact bytes end),
    `size` (the file size at open), `records` (data records yielded).
    """

    def __init__(self, path: Path, first_lsn: int, min_lsn: int = 1, *, offset: int = 0):
        """`offset` > 0 starts at that byte (a record boundary an earlier read ended at), where
        the record expected next has LSN `first_lsn` (log tails: wal/tail.py)."""
        self.path = path
        self.first_lsn = first_lsn
        self.start = offset
        self.min_lsn = min_lsn
        self.damage: Damage | None = None
        self.next_lsn = first_lsn
        self.last_kind: int | None = None
        self.end_offset = 0
        self.size = 0
        self.records = 0

    def __iter__(self) -> Iterator[Record]:
        path, min_lsn = self.path, self.min_lsn
        unpack, crc_of, new, rec_cls = HEADER.unpack_from, crc32c.crc32c, _new_record, Record
        hs, cs = HEADER_SIZE, CRC_START
        expected, last_kind, count = self.first_lsn, None, 0
        base, pos = self.start, 0  # buf[pos] is at file offset base + pos
        buf = b""
        try:
            with open(path, "rb", buffering=0) as f:
                size = self.size = os.fstat(f.fileno()).st_size
                if base:
                    f.seek(base)
                view = memoryview(buf)
                while True:
                    avail = len(buf) - pos
                    if avail < hs:
                        if base + len(buf) >= size:
                            if avail:
                                self._damaged(base + pos, "truncated record header")
                            return
                        known = base + len(buf)
                        buf, base, pos = _refill(f, buf, base, pos, hs)
                        view = memoryview(buf)
                        if base + len(buf) == known:  # the file shrank under us
                            size = known
                        continue
                    magic, crc, length, kind, lsn = unpack(buf, pos)
                    if magic != MAGIC:
                        self._damaged(base + pos, "bad record magic")
                        return
                    end = pos + hs + length
                    if length > MAX_PAYLOAD or base + end > size:
                        self._damaged(base + pos, f"record length {length} runs past the end "
                                                  f"of the file ({size} bytes)")
                        return
                    if end > len(buf):
                        buf, base, pos = _refill(f, buf, base, pos, hs + length)
                        view = memoryview(buf)
                        if len(buf) - pos < hs + length:  # the file shrank under us
                            self._damaged(base + pos, "record cut short while reading")
                            return
                        continue
                    if crc_of(view[pos + cs:end]) != crc:
                        self._damaged(base + pos, "record checksum mismatch")
                        return
                    if lsn != expected:
                        self._damaged(base + pos, f"record LSN {lsn} out of sequence "
                                                  f"(expected {expected})", lsn < expected)
                        return
                    if lsn >= min_lsn and kind != KIND_CLOSE:
                        count += 1
                        yield new(rec_cls, (lsn, kind, buf[pos + hs:end], path, base + pos))
                    expected, last_kind = lsn + 1, kind
                    pos = end
        finally:
            self.next_lsn, self.last_kind, self.end_offset = expected, last_kind, base + pos
            self.records = count

    def _damaged(self, offset: int, reason: str, may_be_torn: bool = True) -> None:
        self.damage = Damage(self.path, offset, reason, may_be_torn)


def _refill(f: BinaryIO, buf: bytes, base: int, pos: int, need: int) -> tuple[bytes, int, int]:
    """Drop consumed bytes and read until at least `need` bytes follow `pos` (or EOF)."""
    tail = buf[pos:]
    want = max(READ_CHUNK, need - len(tail))
    chunks = [tail]
    while want > 0:
        more = f.read(want)
        if not more:
            break
        chunks.append(more)
        want -= len(more)
    joined = chunks[-1] if len(chunks) <= 2 and not tail else b"".join(chunks)  # avoid a copy
    return joined, base + pos, 0


def find_intact_record(path: Path, start: int, min_lsn: int) -> int | None:
    """Offset of the first intact record at or after `start` whose LSN is >= `min_lsn`, or None.

    Used to tell a torn tail (nothing intact follows the damage) from damage in the middle.
    Intact records with smaller LSNs are stale bytes (e.g. blocks of a deleted older log exposed
    after power loss), not proof of later writes, so they do not count.
    """
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        overlap = len(MAGIC_BYTES) - 1
        step = start
        while step + HEADER_SIZE <= size:
            chunk = os.pread(fd, SCAN_CHUNK + overlap, step)
            hit = chunk.find(MAGIC_BYTES)
            while 0 <= hit < SCAN_CHUNK:
                if _is_intact_at(fd, step + hit, size, min_lsn):
                    return step + hit
                hit = chunk.find(MAGIC_BYTES, hit + 1)
            step += SCAN_CHUNK
    return None


def _is_intact_at(fd: int, offset: int, size: int, min_lsn: int) -> bool:
    head = os.pread(fd, HEADER_SIZE, offset)
    if len(head) < HEADER_SIZE:
        return False
    magic, crc, length, _kind, lsn = HEADER.unpack(head)
    end = offset + HEADER_SIZE + length
    if magic != MAGIC or length > MAX_PAYLOAD or end > size or lsn < min_lsn:
        return False
    value = crc32c.crc32c(head[CRC_START:])
    pos = offset + HEADER_SIZE
    while pos < end:
        piece = os.pread(fd, min(SCAN_CHUNK, end - pos), pos)
        if not piece:
            return False
        value = crc32c.crc32c(piece, value)
        pos += len(piece)
    return value == crc
