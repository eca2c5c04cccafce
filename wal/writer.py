"""The log appender: framed records in rolling files, and the failure rules (LevelDB log_writer).

A plain appender that calls nothing above it. The caller hands it a group of records that are
ready to be written -- (kind, payload) pairs, payloads already sealed -- and it frames them
(format.py), writes the whole group with one writev and, with durability="fsync", makes it
durable with one fdatasync. Who waits for whom (group commit), how payloads are sealed and what
a record means in memory is the engine's business (lsmvec.db.write).

LSNs: the caller passes the group's first LSN (`first_lsn`), and it must be `next_lsn`. The
engine seals each payload with its LSN as associated data before the group gets here, so it
must know the LSNs first; the appender checks that claim instead of silently assigning its own,
so a payload sealed for another LSN never reaches the file (at replay it would fail
authentication: corruption). The appender stays the one authority on next_lsn: it advances
only when a group is written, so the LSNs of a group whose write was cut back are reused by the
next group. `first_lsn` may be omitted (unsealed use: tools and tests).

Failures:
- a failed write is cut off again (ftruncate to the size before the group, then fsync); the
  call raises StorageError / StorageFullError and nothing of the group is logged. If the cut
  fails too, the log is poisoned.
- a failed fsync / fdatasync poisons the log: that call and every later append, roll or sync
  raise LogPoisonedError, and no sync is ever retried (after a failed fsync Linux may report
  success for pages it dropped - PostgreSQL's "fsyncgate"). The group's records may or may not
  be on disk; reopening and replaying the log tells.

durability="fsync" (default): append_group returns after fdatasync. durability="os": it returns
after write(); the data survives a process crash, not power loss or an OS crash. Rolls and
close fsync in both modes.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from . import failpoints, fsio
from .errors import (ClosedError, InvalidArgumentError, InvalidTypeError, LogPoisonedError,
                     storage_error_from)
from .filenames import list_logs, log_name
from .format import KIND_CLOSE, MAX_PAYLOAD, Buffer, encode_header, is_data_kind, payload_parts

__all__ = ["LogWriter", "DURABILITIES", "record_parts"]

log = logging.getLogger(__name__)

DURABILITIES = ("fsync", "os")
Payload = Buffer | Sequence[Buffer]
_Framed = tuple[int, list[Buffer], int]  # kind, payload parts, payload size


class _DirectorySyncError(OSError):
    """A new log file's directory entry could not be made durable."""


def record_parts(kind: int, payload: Payload) -> tuple[list[Buffer], int]:
    """Check one record as append_group will: its payload as a list of buffers (no copy) and
    its size. Raises InvalidArgumentError (kind outside 1..254, payload over MAX_PAYLOAD) or
    InvalidTypeError (payload not bytes-like, nor a list of bytes-like parts)."""
    if not is_data_kind(kind):
        raise InvalidArgumentError(f"record kind must be an int in 1..254, got {kind!r}")
    parts, size = payload_parts(payload)
    if size > MAX_PAYLOAD:
        raise InvalidArgumentError(f"record payload of {size} bytes exceeds {MAX_PAYLOAD}")
    return parts, size


class LogWriter:
    """Appends records to the log files in `directory`, starting at `next_lsn`.

    Always starts a NEW file named by next_lsn (an existing empty file of that name, left by a
    crash, is reused). Raises InvalidArgumentError for a bad durability / roll_bytes / next_lsn,
    or when a log file at or after next_lsn already holds records (the caller must pass the
    replay report's next_lsn); StorageError when the directory or file cannot be created.
    Thread-safe: one lock serialises appends, rolls, syncs and close.
    """

    def __init__(self, directory: str | os.PathLike[str], next_lsn: int, *,
                 durability: str = "fsync", roll_bytes: int = 64 << 20):
        if durability not in DURABILITIES:
            raise InvalidArgumentError(f"durability must be one of {DURABILITIES}, "
                                       f"got {durability!r}")
        if type(roll_bytes) is not int or roll_bytes < 1:
            raise InvalidArgumentError(f"roll_bytes must be a positive int, got {roll_bytes!r}")
        if type(next_lsn) is not int or next_lsn < 1:
            raise InvalidArgumentError(f"next_lsn must be an int >= 1, got {next_lsn!r}")
        self.directory = Path(directory)
        self.durability = durability
        self.roll_bytes = roll_bytes
        self._lock = threading.Lock()  # guards the fd, file size, next LSN and the flags
        self._next_lsn = next_lsn
        self._poison: OSError | None = None
        self._closed = False
        self.fsyncs = self.groups = self.records = 0
        try:
            fsio.FS.make_dirs(self.directory)
        except OSError as exc:
            raise storage_error_from(exc, f"cannot create log directory {self.directory}") from None
        for first_lsn, path in list_logs(self.directory):
            if first_lsn > next_lsn:
                raise InvalidArgumentError(f"log file {path.name} starts after next_lsn "
                                           f"{next_lsn}: replay the log and pass its next_lsn")
        try:
            self._fd, self._path = self._create_file(next_lsn)
            self._active_first = next_lsn
        except OSError as exc:
            raise storage_error_from(exc, f"cannot create a log file in {self.directory}") from None
        self._file_size = 0

    # -- properties ---------------------------------------------------------------------------

    @property
    def next_lsn(self) -> int:
        """The LSN the next record will get."""
        return self._next_lsn

    @property
    def last_lsn(self) -> int:
        """The LSN of the last record written (next_lsn - 1)."""
        return self._next_lsn - 1

    @property
    def poisoned(self) -> bool:
        """True after a failed sync: every append and sync raises LogPoisonedError."""
        return self._poison is not None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def active_path(self) -> Path:
        """The file records are appended to."""
        return self._path

    @property
    def active_first_lsn(self) -> int:
        """The first LSN of the file records are appended to (its name)."""
        return self._active_first

    def written_end(self) -> tuple[int, Path, int]:
        """(LSN of the last record written, the active file, its size in bytes), read at one
        instant under the lock: every record up to that LSN lies in the log files up to that
        one, within that size, and nothing after it does (an online backup copies exactly
        that much)."""
        with self._lock:
            return self._next_lsn - 1, self._path, self._file_size

    @property
    def bytes_on_disk(self) -> int:
        """Total size of the log files in the directory."""
        total = 0
        for _lsn, path in list_logs(self.directory):
            with contextlib.suppress(FileNotFoundError):  # removed by a concurrent checkpoint
                total += path.stat().st_size
        return total

    @property
    def file_count(self) -> int:
        return len(list_logs(self.directory))

    # -- appending ----------------------------------------------------------------------------

    def append_group(self, records: Sequence[tuple[int, Payload]],
                     first_lsn: int | None = None) -> int:
        """Write `records` -- (kind, payload) pairs; a payload is bytes-like or a list of
        bytes-like parts written back to back -- as records first_lsn, first_lsn + 1, ...: one
        writev, then (durability="fsync") one fdatasync. Returns the first LSN once the group
        is durable (per `durability`); the whole group is logged, or nothing of it. A full
        file is rolled after the group. An empty group writes nothing and returns next_lsn.

        Raises, before anything is written: InvalidArgumentError (a kind outside 1..254, a
        payload over MAX_PAYLOAD, first_lsn other than next_lsn), InvalidTypeError (a payload
        not bytes-like), ClosedError, LogPoisonedError (an earlier sync failed). Then
        StorageError / StorageFullError (the write failed and was cut off: nothing logged, the
        LSNs are reused), LogPoisonedError (the sync failed, or the cut did).
        """
        framed = [(kind, *record_parts(kind, payload)) for kind, payload in records]
        with self._lock:
            self._check_writable()
            lsn = self._next_lsn
            if first_lsn is not None and (type(first_lsn) is not int or first_lsn != lsn):
                raise InvalidArgumentError(f"a group starting at LSN {first_lsn!r} cannot be "
                                           f"appended: the log is at LSN {lsn}")
            if not framed:
                return lsn
            self._write(framed, lsn, force_sync=False)
            if self._file_size >= self.roll_bytes and self._poison is None:
                self._roll()
            return lsn

    def append(self, kind: int, payload: Payload) -> int:
        """One record as a group of its own; returns its LSN (tools and tests). Raises what
        append_group raises."""
        return self.append_group([(kind, payload)])

    def check_writable(self) -> None:
        """Raise ClosedError / LogPoisonedError now if the log refuses appends (a cheap check
        without the lock, for callers that queue work; append_group checks again)."""
        self._check_writable()

    def _write(self, framed: list[_Framed], lsn: int, force_sync: bool) -> None:
        """Encode, write and (if durable mode or forced) sync records lsn, lsn + 1, ...
        Caller holds _lock."""
        buffers: list[Buffer] = []
        for i, (kind, parts, size) in enumerate(framed):
            buffers.append(encode_header(lsn + i, kind, parts, size))
            buffers.extend(parts)
        nbytes = sum(len(b) if isinstance(b, bytes) else memoryview(b).nbytes for b in buffers)
        before = self._file_size
        try:
            fsio.FS.write_all(self._fd, buffers)
            failpoints.hit("wal.after_write")
        except OSError as exc:
            self._undo_write(before)
            if self._poison is not None:
                raise self._poisoned_error() from None
            raise storage_error_from(exc, f"cannot write log {self._path}") from None
        self._file_size = before + nbytes
        self._next_lsn = lsn + len(framed)
        if force_sync or self.durability == "fsync":
            try:
                self.fsyncs += 1
                fsio.FS.fdatasync(self._fd)
            except OSError as exc:
                self._set_poison(exc)
                raise self._poisoned_error() from None
        failpoints.hit("wal.after_sync")
        self.groups += 1
        self.records += len(framed)

    def _undo_write(self, size: int) -> None:
        """Cut a partly written group off again, so none of its records can replay."""
        try:
            fsio.FS.ftruncate(self._fd, size)
            self.fsyncs += 1
            fsio.FS.fsync(self._fd)
        except OSError as exc:
            self._set_poison(exc)

    def _roll(self) -> None:
        """Seal the full file (fsync) and continue in a new one named by the next LSN. A file
        that cannot be created is logged and retried after the next group. Caller holds _lock."""
        try:
            self.fsyncs += 1
            fsio.FS.fsync(self._fd)
        except OSError as exc:
            self._set_poison(exc)
            return
        try:
            fd, path = self._create_file(self._next_lsn)
        except _DirectorySyncError as exc:
            self._set_poison(exc.__cause__)  # type: ignore[arg-type]
            return
        except (OSError, InvalidArgumentError) as exc:
            log.warning("cannot roll to a new log file, continuing in %s: %s", self._path, exc)
            return
        old, self._fd, self._path, self._file_size = self._fd, fd, path, 0
        self._active_first = self._next_lsn
        _close_quietly(old)

    def _create_file(self, first_lsn: int) -> tuple[int, Path]:
        """Create (or reuse, when empty) the file named by first_lsn and make its entry durable.
        Raises OSError, or _DirectorySyncError when the entry could not be made durable."""
        path = self.directory / log_name(first_lsn)
        try:
            fd = fsio.FS.open_for_append(path, exclusive=True)
        except FileExistsError:
            if path.stat().st_size != 0:
                raise InvalidArgumentError(f"log file {path.name} already holds records: "
                                           f"replay the log and pass its next_lsn") from None
            fd = fsio.FS.open_for_append(path, exclusive=False)
        try:
            self.fsyncs += 1
            fsio.FS.fsync_dir(self.directory)
        except OSError as exc:
            _close_quietly(fd)
            raise _DirectorySyncError(exc.errno, f"cannot sync log directory: {exc}") from exc
        return fd, path

    # -- syncing, truncating, closing -----------------------------------------------------------

    def roll(self) -> None:
        """Continue in a new file now, so a later checkpoint can free this one whole (the
        engine rolls at each flush). Raises ClosedError, LogPoisonedError."""
        with self._lock:
            self._check_writable()
            if self._file_size > 0:
                self._roll()

    def sync(self) -> None:
        """fsync the active file now (earlier files were synced when rolled).
        Raises ClosedError, LogPoisonedError (also when this sync fails)."""
        with self._lock:
            self._check_writable()
            try:
                self.fsyncs += 1
                fsio.FS.fsync(self._fd)
            except OSError as exc:
                self._set_poison(exc)
                raise self._poisoned_error() from None

    def remove_below(self, checkpoint_lsn: int) -> list[Path]:
        """Delete the log files all of whose records have lsn <= checkpoint_lsn (a file goes
        when the next file starts at or below checkpoint_lsn + 1), never the active file, then
        fsync the directory. Returns the removed paths, oldest first.
        Raises ClosedError, StorageError (files removed before the failure stay removed)."""
        if type(checkpoint_lsn) is not int:
            raise InvalidTypeError(f"checkpoint_lsn must be an int, got {checkpoint_lsn!r}")
        with self._lock:
            if self._closed:
                raise ClosedError("log writer is closed")
            active = self._path
        logs = list_logs(self.directory)
        removed: list[Path] = []
        for (_first, path), (next_first, _next) in zip(logs, logs[1:]):
            if path == active or next_first > checkpoint_lsn + 1:
                break
            try:
                fsio.FS.remove(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise storage_error_from(exc, f"cannot remove log file {path}") from None
            removed.append(path)
        if removed:
            try:
                fsio.FS.fsync_dir(self.directory)
            except OSError as exc:
                raise storage_error_from(exc, f"cannot sync {self.directory}") from None
        return removed

    def close(self, clean: bool = True) -> None:
        """Wait for a group being written, then (clean=True) append a CLOSE record and fsync,
        and close the file. Idempotent. A poisoned log closes without writing. clean=False
        writes and syncs nothing more (a crash-like stop). Raises StorageError when the CLOSE
        record cannot be made durable (the file is closed anyway)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if clean and self._poison is None:
                    self._write([(KIND_CLOSE, [], 0)], self._next_lsn, force_sync=True)
            finally:
                _close_quietly(self._fd)

    # -- helpers --------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._closed:
            raise ClosedError("log writer is closed")
        if self._poison is not None:
            raise self._poisoned_error()

    def _set_poison(self, exc: OSError) -> None:
        if self._poison is None:
            log.error("log %s poisoned: a sync failed (%s); writes are refused until reopen",
                      self.directory, exc)
            self._poison = exc

    def _poisoned_error(self) -> LogPoisonedError:
        cause = self._poison
        err = LogPoisonedError(errno.EIO, f"log {self.directory} refuses writes after a failed "
                                          f"sync ({cause}); reopen the index to recover")
        err.__cause__ = cause
        return err

    def __repr__(self) -> str:
        state = "closed" if self._closed else "poisoned" if self._poison else "open"
        return f"<LogWriter {self.directory} next_lsn={self._next_lsn} {state}>"


def _close_quietly(fd: int) -> None:
    try:
        fsio.FS.close(fd)
    except OSError as exc:
        log.warning("closing a log file failed: %s", exc)
