"""The log writer: group commit, rolling files, and the failure rules (LevelDB log_writer + the
writers queue of DBImpl::Write).

Group commit: callers queue up; the caller at the head of the queue is the leader. It takes
every waiting record (up to MAX_GROUP_BYTES), gives them consecutive LSNs, seals and encodes
them, and - without holding the queue lock - writes them with one writev and makes them durable
with one fdatasync. Then it runs each record's apply(lsn) in LSN order (the engine applies to
its memtable there, so memory follows log order), and wakes the followers. The next leader
starts only after that, so applies of successive groups never interleave.

Failures:
- a failed write is cut off again (ftruncate to the size before the group, then fsync); only
  that group's callers get StorageError / StorageFullError and their LSNs are reused by the next
  group (so `seal` may see an LSN twice; it must not derive a nonce from the LSN alone). If
  the cut fails too, the log is poisoned.
- a failed fsync / fdatasync poisons the log: that group's callers and every later append or
  sync get LogPoisonedError, and no sync is ever retried (after a failed fsync Linux may report
  success for pages it dropped - PostgreSQL's "fsyncgate"). The group's records may or may not
  be on disk; reopening and replaying the log tells.

durability="fsync" (default): append returns after fdatasync. durability="os": append returns
after write(); the data survives a process crash, not power loss or an OS crash. Rolls and
close fsync in both modes.
"""
from __future__ import annotations

import contextlib

import errno
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import failpoints, fsio
from .errors import (ClosedError, InvalidArgumentError, InvalidTypeError, LogPoisonedError,
                     storage_error_from)
from .filenames import list_logs, log_name
from .format import (HEADER_SIZE, KIND_CLOSE, MAX_PAYLOAD, Buffer, encode_header, is_data_kind,
                     join_parts, payload_parts)

__all__ = ["WalWriter", "DURABILITIES", "MAX_GROUP_BYTES"]

log = logging.getLogger(__name__)

DURABILITIES = ("fsync", "os")
MAX_GROUP_BYTES = 64 << 20  # one group's payload cap: bounds a leader's latency and memory
Payload = Buffer | Sequence[Buffer]
Seal = Callable[[int, int, Any], Any]
Apply = Callable[[int], None]


class _DirectorySyncError(OSError):
    """A new log file's directory entry could not be made durable."""


class _Entry:
    """One queued record and, once its group is done, its outcome."""

    __slots__ = ("kind", "parts", "size", "apply", "lsn", "done", "error", "wake")

    def __init__(self, kind: int, parts: list[Buffer], size: int, apply: Apply | None):
        self.kind, self.parts, self.size, self.apply = kind, parts, size, apply
        self.lsn = 0
        self.done = False
        self.error: BaseException | None = None
        self.wake = threading.Lock()  # held until the leader releases this caller
        self.wake.acquire()


class WalWriter:
    """Appends records to the log files in `directory`, starting at `next_lsn`.

    Always starts a NEW file named by next_lsn (an existing empty file of that name, left by a
    crash, is reused). Raises InvalidArgumentError for a bad durability / roll_bytes / next_lsn,
    or when a log file at or after next_lsn already holds records (the caller must pass the
    replay report's next_lsn); StorageError when the directory or file cannot be created.
    Thread-safe. `seal(lsn, kind, payload) -> bytes` transforms each payload before it is
    written (the engine encrypts, binding the LSN); it runs in the leader's thread. With
    `seal_parts`, seal gets the payload's list of buffers instead of their concatenation.
    """

    def __init__(self, directory: str | os.PathLike[str], next_lsn: int, *,
                 durability: str = "fsync", roll_bytes: int = 64 << 20, seal: Seal | None = None,
                 seal_parts: bool = False):
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
        self._seal = seal
        self._seal_parts = seal_parts  # seal gets the payload's parts, unjoined (saves a copy)
        self._cond = threading.Condition(threading.Lock())  # guards the queue and the flags
        self._io = threading.Lock()  # guards the fd, file size and next LSN during I/O
        self._queue: deque[_Entry] = deque()
        self._next_lsn = next_lsn
        self._poison: OSError | None = None
        self._closing = self._closed = False
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

    def append(self, kind: int, payload: Payload, apply: Apply | None = None) -> int:
        """Append one record and return its LSN once it is durable (per `durability`) and
        `apply(lsn)` has run. `payload`: bytes-like, or a list of bytes-like parts written back
        to back (no concatenation). `apply` runs in the leader's thread, in LSN order, and must
        not call append; if it raises, this call raises that error but the record stays logged.

        Raises InvalidArgumentError (kind outside 1..254, payload over MAX_PAYLOAD),
        InvalidTypeError (payload not bytes-like), ClosedError (after close),
        StorageError / StorageFullError (the write failed; nothing was logged),
        LogPoisonedError (a sync failed, now or earlier).
        """
        entry = self._entry(kind, payload, apply)
        with self._cond:
            self._check_writable()
            self._queue.append(entry)
            head = self._queue[0] is entry
        self._await(entry, head)
        if entry.error is not None:
            raise entry.error
        return entry.lsn

    def append_many(self, records: Sequence[tuple[int, Payload, Apply | None]]
                    ) -> list[int | BaseException]:
        """Append several records, queued back to back, from one thread: they share groups
        (one write, one sync) without a thread per record. Returns, per record, its LSN or the
        error that `append` would have raised for it (each record stands alone: one failing
        does not undo another). Raises, before queueing anything, what `append` raises for a
        bad kind or payload, and ClosedError / LogPoisonedError."""
        entries = [self._entry(kind, payload, apply) for kind, payload, apply in records]
        if not entries:
            return []
        with self._cond:
            self._check_writable()
            head = not self._queue
            self._queue.extend(entries)
        for i, entry in enumerate(entries):
            if not entry.done:
                self._await(entry, head and i == 0)
        return [entry.error if entry.error is not None else entry.lsn for entry in entries]

    def _entry(self, kind: int, payload: Payload, apply: Apply | None) -> _Entry:
        if not is_data_kind(kind):
            raise InvalidArgumentError(f"record kind must be an int in 1..254, got {kind!r}")
        parts, size = payload_parts(payload)
        if size > MAX_PAYLOAD:
            raise InvalidArgumentError(f"record payload of {size} bytes exceeds {MAX_PAYLOAD}")
        return _Entry(kind, parts, size, apply)

    def _await(self, entry: _Entry, head: bool) -> None:
        """Wait until `entry`'s group is done, leading it when `entry` reaches the head."""
        if not head:  # released once: when its group is done, or when it becomes the head
            entry.wake.acquire()
        with self._cond:
            group = None if entry.done else self._take_group()
        if group is not None:
            self._lead(group)

    def _take_group(self) -> list[_Entry]:
        """The head of the queue, up to MAX_GROUP_BYTES (at least one). Stays queued until done,
        so later callers wait behind it. Caller holds _cond."""
        group: list[_Entry] = []
        total = 0
        for entry in self._queue:
            if group and total + entry.size > MAX_GROUP_BYTES:
                break
            group.append(entry)
            total += entry.size + HEADER_SIZE
        return group

    def _lead(self, group: list[_Entry]) -> None:
        try:
            with self._io:
                self._write_group(group, force_sync=False)
                if self._file_size >= self.roll_bytes and self._poison is None:
                    self._roll()
            for entry in group:  # in LSN order: the group is in queue order, LSNs too
                if entry.error is None and entry.apply is not None:
                    try:
                        entry.apply(entry.lsn)
                    except Exception as exc:  # the record is logged; only its caller learns
                        log.exception("apply callback of log record %d failed", entry.lsn)
                        entry.error = exc
        except BaseException as exc:  # e.g. KeyboardInterrupt in the leader: fail the rest
            for entry in group:
                if entry.error is None and entry.lsn == 0:
                    entry.error = exc
            raise
        finally:
            # Wake exactly the callers that can go on -- this group's and the next leader --
            # not every waiting thread (with hundreds of writers, a notify_all per group is a
            # thundering herd that costs more CPU than the group commit saves).
            with self._cond:
                for _ in group:
                    self._queue.popleft().done = True
                following = self._queue[0] if self._queue else None
                if following is None:
                    self._cond.notify_all()  # close() waits for an empty queue
            for entry in group[1:]:  # group[0] leads: the head, not waiting
                entry.wake.release()
            if following is not None:
                following.wake.release()

    def _write_group(self, group: list[_Entry], force_sync: bool) -> None:
        """Seal, encode, write and (if durable mode or forced) sync `group`; store each entry's
        LSN or error. Caller holds _io."""
        if self._poison is not None:
            for entry in group:
                entry.error = self._poisoned_error()
            return
        lsn = self._next_lsn
        buffers: list[Buffer] = []
        written: list[_Entry] = []
        for entry in group:
            parts, size = entry.parts, entry.size
            if self._seal is not None and entry.kind != KIND_CLOSE:
                try:
                    sealed = self._seal(lsn, entry.kind,
                                        parts if self._seal_parts else join_parts(parts))
                    if not isinstance(sealed, (bytes, bytearray)):
                        sealed = bytes(sealed)
                    parts, size = [sealed], len(sealed)
                    if size > MAX_PAYLOAD:
                        raise InvalidArgumentError(f"sealed payload of {size} bytes exceeds "
                                                   f"{MAX_PAYLOAD}")
                except Exception as exc:  # this caller's problem only; its LSN goes to the next
                    entry.error = exc
                    continue
            buffers.append(encode_header(lsn, entry.kind, parts, size))
            buffers.extend(parts)
            entry.lsn = lsn
            lsn += 1
            written.append(entry)
        if not written:
            return
        nbytes = sum(len(b) if isinstance(b, bytes) else memoryview(b).nbytes for b in buffers)
        before = self._file_size
        try:
            fsio.FS.write_all(self._fd, buffers)
            failpoints.hit("wal.after_write")
        except OSError as exc:
            self._undo_write(before)
            for entry in written:
                entry.lsn = 0
                entry.error = (self._poisoned_error() if self._poison is not None
                               else storage_error_from(exc, f"cannot write log {self._path}"))
            return
        self._file_size = before + nbytes
        self._next_lsn = lsn
        if force_sync or self.durability == "fsync":
            try:
                self.fsyncs += 1
                fsio.FS.fdatasync(self._fd)
            except OSError as exc:
                self._set_poison(exc)
                for entry in written:
                    entry.error = self._poisoned_error()
                return
        failpoints.hit("wal.after_sync")
        self.groups += 1
        self.records += len(written)

    def _undo_write(self, size: int) -> None:
        """Cut a partly written group off again, so no caller's failed record can replay."""
        try:
            fsio.FS.ftruncate(self._fd, size)
            self.fsyncs += 1
            fsio.FS.fsync(self._fd)
        except OSError as exc:
            self._set_poison(exc)

    def _roll(self) -> None:
        """Seal the full file (fsync) and continue in a new one named by the next LSN. A file
        that cannot be created is logged and retried after the next group. Caller holds _io."""
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

    @contextmanager
    def _io_writable(self) -> Iterator[None]:
        """Hold the I/O lock on a log that is neither closed nor poisoned."""
        with self._cond:
            self._check_writable()
        with self._io:
            if self._closed:
                raise ClosedError("log writer is closed")
            if self._poison is not None:
                raise self._poisoned_error()
            yield

    def roll(self) -> None:
        """Continue in a new file now, so a later checkpoint can free this one whole (the
        engine rolls at each flush). Raises ClosedError, LogPoisonedError."""
        with self._io_writable():
            if self._file_size > 0:
                self._roll()

    def sync(self) -> None:
        """fsync the active file now (earlier files were synced when rolled).
        Raises ClosedError, LogPoisonedError (also when this sync fails)."""
        with self._io_writable():
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
        with self._cond:
            if self._closing or self._closed:
                raise ClosedError("log writer is closed")
        logs = list_logs(self.directory)
        active = self._path
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
        """Wait for queued appends, then (clean=True) append a CLOSE record and fsync, and close
        the file. Idempotent. A poisoned log closes without writing. clean=False writes and
        syncs nothing more (a crash-like stop). Raises StorageError when the CLOSE record
        cannot be made durable (the file is closed anyway)."""
        with self._cond:
            if self._closing:
                while not self._closed:
                    self._cond.wait()
                return
            self._closing = True
            while self._queue:
                self._cond.wait()
        try:
            with self._io:
                try:
                    if clean and self._poison is None:
                        entry = _Entry(KIND_CLOSE, [], 0, None)
                        self._write_group([entry], force_sync=True)
                        if entry.error is not None:
                            raise entry.error
                finally:
                    _close_quietly(self._fd)
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    # -- helpers --------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._closing or self._closed:
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
        return f"<WalWriter {self.directory} next_lsn={self._next_lsn} {state}>"


def _close_quietly(fd: int) -> None:
    try:
        fsio.FS.close(fd)
    except OSError as exc:
        log.warning("closing a log file failed: %s", exc)
