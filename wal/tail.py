"""Following a log that another process is writing: each new intact record once, in LSN order.

A read-only opener (the engine's readers) replays the log past its snapshot's checkpoint and
then keeps reading what the writer appends. Unlike recovery (recovery.py), a tail never judges
and never repairs: damage at the end of the newest file is a record the writer is writing right
now (its bytes reach the page cache in pieces), so the tail stops before it and reads it again
next time. The states, and what ``read`` does:

    where the tail stands                      read()
    intact records after its offset            yields them, advances offset and next_lsn
    clean end of a file, next file exists      moves to the file named next_lsn, goes on
    clean end of the newest file               stops (nothing new yet)
    clean end, the next file missing, a later  LogGone (flushed and deleted, or lost: the
    one present                                caller tells by whether the store moved on)
    damage at the end of the newest file       stops before it (a write in progress)
    damage with intact records after it        reads once more; still damaged: CorruptionError
    damage, and a newer file exists            reads once more; still damaged: CorruptionError
    its file, or the one it needs, is gone     LogGone (the writer flushed past next_lsn and
                                               deleted those files: the caller reopens from
                                               the newer checkpoint)

The tail holds no file open between reads: the writer deletes files below its checkpoint, and a
reader must never keep them (or their disk space) alive.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from .errors import CorruptionError, LogGone
from .filenames import list_logs, log_name
from .format import HEADER_SIZE
from .reader import LogFileReader, Record, find_intact_record

__all__ = ["LogTail", "LogGone"]


class LogTail:
    """The records of the log in `directory` from LSN `next_lsn` on, read in steps."""

    def __init__(self, directory: str | os.PathLike[str], next_lsn: int):
        self.directory = Path(directory)
        self.next_lsn = next_lsn
        self._path: Path | None = None  # the file being read
        self._offset = 0  # where the record with LSN self._at starts in it
        self._at = next_lsn

    @property
    def position(self) -> tuple[str | None, int]:
        """(file name, byte offset) the next read starts at; (None, 0) before the first."""
        return (self._path.name if self._path else None), self._offset

    def read(self) -> Iterator[Record]:
        """Yield every intact data record appended since the last read (CLOSE records only
        advance next_lsn). A caller that stops early resumes after the last record it was
        given. Raises LogGone or CorruptionError (see the module docstring)."""
        if self._path is None:
            self._at, self._path = self._locate()
            self._offset = 0
        reread_at: tuple[Path, int] | None = None
        while True:
            path = self._path
            reader = LogFileReader(path, self._at, self.next_lsn, offset=self._offset)
            try:
                for record in reader:
                    self.next_lsn = self._at = record.lsn + 1
                    self._offset = record.offset + HEADER_SIZE + len(record.payload)
                    yield record
            except FileNotFoundError:
                raise LogGone(f"log file {path.name} was deleted under its reader") from None
            # skipped records (below next_lsn, CLOSE) moved the reader on too
            self._offset, self._at = reader.end_offset, reader.next_lsn
            self.next_lsn = max(self.next_lsn, self._at)
            following = self.directory / log_name(self._at)
            newer = following != path and following.exists()  # an empty file is its own name
            if reader.damage is not None:
                finished = any(later.name > path.name for _f, later in list_logs(self.directory))
                at = reader.damage.offset if reader.damage.offset is not None else self._offset
                if not finished and find_intact_record(path, at + 1, self._at) is None:
                    return  # a record being written: read again from here next time
                # A finished file, or intact records after the damage (a write in progress
                # has none): once more, in case a write just completed; then it is damage.
                again = LogFileReader(path, self._at, self.next_lsn, offset=self._offset)
                if not any(True for _ in again) and again.damage is not None:
                    where = "a log file the writer has finished" if finished else \
                        "the log, with intact records after it"
                    raise CorruptionError(f"log record damaged ({again.damage.reason}) in "
                                          f"{where}", str(path), again.damage.offset)
                continue  # it was a write finishing: the loop reads it properly
            if not newer:
                later = [p.name for first, p in list_logs(self.directory) if first > self._at]
                if not later:
                    return
                if reread_at != (path, self._offset):  # it may have grown before the writer
                    reread_at = (path, self._offset)   # rolled: read on from here once more
                    continue
                # the writer never skips an LSN: the file holding _at is gone -- flushed and
                # deleted (the store moved on), or lost: the caller tells
                raise LogGone(f"log file {following.name} is missing (the log goes on in "
                              f"{later[0]})")
            self._path, self._offset = following, 0

    def _locate(self) -> tuple[int, Path]:
        """(first LSN, path) of the log file holding next_lsn: the newest starting at or
        before it."""
        logs = list_logs(self.directory)
        holding = [(first, path) for first, path in logs if first <= self.next_lsn]
        if not holding:
            raise LogGone(f"no log file holds LSN {self.next_lsn} (oldest: "
                          f"{logs[0][1].name if logs else 'none'})")
        return holding[-1]
