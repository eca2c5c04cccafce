"""Replaying a log directory, and the one place where damage is judged (RocksDB WALRecoveryMode).

A damaged record (bad magic, bad checksum, impossible length, cut-short header or payload, LSN
out of sequence) is a *torn tail* only when it is in the last log file and no intact record
with a current LSN exists anywhere after it in that file: only then can it be the unfinished
write of a crash. Anything else is corruption: acknowledged records would silently vanish.

Because a clean close appends a CLOSE record, damage to the last data record of a cleanly closed
log has an intact record after it and is reported as corruption. LevelDB's reader cannot tell
that case from a torn write; this one can.

    mode                 torn tail                      other damage
    TOLERATE_TORN_TAIL   drop it (default)              raise CorruptionError
    POINT_IN_TIME        drop it                        stop there, keep the prefix, report
    ABSOLUTE             raise CorruptionError          raise CorruptionError

What the log must hold is checked too, from what its owner recorded elsewhere (the engine keeps
it in the store): records from `from_lsn` on (a missing oldest file is corruption, from LSN 1
as from any other), `required_file` (the newest log file the owner knows it created: missing, it
took acknowledged records with it), and after a clean close (`closed_at`) the whole log up to
that CLOSE record: nothing of a cleanly closed log may be missing or cut, so no damage there is
ever taken for a torn tail. Only the unfinished write of a crash is tolerated.

With repair=True a dropped tail is cut off on disk (truncate + fsync; a file left with nothing
is removed), and in POINT_IN_TIME the files after the damage are removed too, so the next
writer never leaves garbage in the middle of the log. With repair=False nothing on disk changes.
"""
from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from . import fsio
from .errors import CorruptionError, InvalidArgumentError, StorageError, storage_error_from
from .filenames import list_logs, log_name
from .format import KIND_CLOSE
from .reader import Damage, LogFileReader, Record, find_intact_record

__all__ = ["RecoveryMode", "Truncation", "ReplayReport", "Replay", "replay"]

log = logging.getLogger(__name__)

OpenPayload = Callable[[int, int, bytes], bytes]


class RecoveryMode(enum.Enum):
    """What replay does with damaged log bytes (see the module docstring's table)."""

    TOLERATE_TORN_TAIL = "tolerate_torn_tail"
    POINT_IN_TIME = "point_in_time"
    ABSOLUTE = "absolute"


class Truncation(NamedTuple):
    """Bytes replay dropped: `dropped_bytes` of `path` from `offset` on."""

    path: Path
    offset: int
    dropped_bytes: int


@dataclass
class ReplayReport:
    """What a replay found. Final once the iterator is exhausted (`finished`)."""

    directory: Path
    from_lsn: int
    files: list[Path] = field(default_factory=list)  # log files read, in order
    records: int = 0  # data records yielded
    last_lsn: int = 0  # last intact LSN of any kind; from_lsn - 1 when none was read
    clean_close: bool = False  # the last intact record is a CLOSE record
    truncated: list[Truncation] = field(default_factory=list)  # dropped tails and prefixes' rest
    removed: list[Path] = field(default_factory=list)  # files deleted by repair
    damage: CorruptionError | None = None  # what ended a POINT_IN_TIME replay early
    repaired: bool = False  # whether dropped bytes were cut off on disk
    finished: bool = False

    @property
    def next_lsn(self) -> int:
        """The LSN a new writer must start at."""
        return self.last_lsn + 1


class Replay(Iterator[Record]):
    """The iterator replay() returns; `report` describes what it found."""

    def __init__(self, directory: Path, from_lsn: int, mode: RecoveryMode,
                 open_payload: OpenPayload | None, repair: bool, required_file: int = 0,
                 closed_at: int = 0):
        if type(from_lsn) is not int or from_lsn < 1:
            raise InvalidArgumentError(f"from_lsn must be an int >= 1, got {from_lsn!r}")
        for name, value in (("required_file", required_file), ("closed_at", closed_at)):
            if type(value) is not int or value < 0:
                raise InvalidArgumentError(f"{name} must be an int >= 0, got {value!r}")
        self._required_file, self._closed_at = required_file, closed_at
        if not isinstance(mode, RecoveryMode):
            raise InvalidArgumentError(f"mode must be a RecoveryMode, got {mode!r}")
        self.report = ReplayReport(directory, from_lsn, last_lsn=from_lsn - 1)
        self._mode, self._open, self._repair = mode, open_payload, repair
        self._logs: list[tuple[int, Path]] = []
        self._records = self._run()

    def __iter__(self) -> Iterator[Record]:
        return self._records  # the generator itself: no Python-level __next__ per record

    def __next__(self) -> Record:
        return next(self._records)

    def _run(self) -> Iterator[Record]:
        report = self.report
        try:
            self._logs = logs = list_logs(report.directory)
        except OSError as exc:
            raise storage_error_from(exc, f"cannot list log directory {report.directory}") from None
        # Files whose successor starts at or below from_lsn hold only older records: skip them.
        start = 0
        while start + 1 < len(logs) and logs[start + 1][0] <= report.from_lsn:
            start += 1
        if self._required_file and all(lsn != self._required_file for lsn, _p in logs):
            self._on_damage(Damage(report.directory, None, f"log file "
                                   f"{log_name(self._required_file)} is missing (its creation "
                                   "was recorded: the records it held are lost)", False), 0)
            report.finished = True
            return
        if logs and logs[start][0] > report.from_lsn:
            self._on_damage(Damage(report.directory, None, f"log files before LSN {logs[start][0]} "
                                   f"are missing; records from LSN {report.from_lsn} are needed",
                                   False), start)
            report.finished = True
            return
        expected: int | None = None
        for index in range(start, len(logs)):
            first_lsn, path = logs[index]
            if _size(path) == 0:  # created, never written (crash right after a roll or open)
                if index != len(logs) - 1:  # ...which only the newest file can be
                    self._on_damage(Damage(path, 0, "an empty log file precedes later ones "
                                           "(its records are missing)", False), index)
                    break
                if expected is not None and first_lsn != expected:
                    self._on_damage(Damage(path, 0, f"log file starts at LSN {first_lsn}, "
                                           f"expected {expected} (a log file is missing or "
                                           "misnamed)", False), index)
                    break
                report.files.append(path)
                continue
            if expected is not None and first_lsn != expected:
                self._on_damage(Damage(path, 0, f"log file starts at LSN {first_lsn}, expected "
                                       f"{expected} (a log file is missing or misnamed)", False),
                                index)
                break
            report.files.append(path)
            reader = LogFileReader(path, first_lsn, report.from_lsn)
            try:
                if self._open is None:
                    yield from reader
                else:
                    for record in reader:
                        yield record._replace(payload=self._opened(record))
            except StorageError:
                raise
            except OSError as exc:
                raise storage_error_from(exc, f"cannot read log file {path}") from None
            report.records += reader.records
            if reader.last_kind is not None:
                report.last_lsn = reader.next_lsn - 1
                report.clean_close = reader.last_kind == KIND_CLOSE
            expected = reader.next_lsn
            if reader.damage is not None:
                self._on_damage(reader.damage, index, min_lsn=expected)
                break
        else:
            self._check_recorded(logs)
        report.finished = True

    def _check_recorded(self, logs: list[tuple[int, Path]]) -> None:
        """The whole log was read without damage: after a clean close it must end with the
        recorded CLOSE record (a cut or removed newest file is corruption, not a torn tail)."""
        report = self.report
        if self._closed_at and not (report.last_lsn == self._closed_at and report.clean_close):
            self._on_damage(Damage(report.directory, None, f"the log was closed cleanly at LSN "
                                   f"{self._closed_at} but ends at LSN {report.last_lsn} "
                                   "(a log file was cut or removed)", False), len(logs))

    def _opened(self, record: Record) -> bytes:
        try:
            return self._open(record.lsn, record.kind, record.payload)  # type: ignore[misc]
        except CorruptionError as exc:
            if exc.path is None:
                raise CorruptionError(str(exc), record.path, record.offset) from exc
            raise

    def _on_damage(self, damage: Damage, index: int, min_lsn: int = 0) -> None:
        """The only place RecoveryMode is applied. Returns when the damage is tolerated (the
        replay ends there, what follows is dropped); raises CorruptionError otherwise."""
        is_torn = (damage.may_be_torn and not self._closed_at and index == len(self._logs) - 1
                   and damage.offset is not None and not self._intact_after(damage, min_lsn))
        error = CorruptionError(("torn log tail: " if is_torn else "damaged log: ") + damage.reason,
                                damage.path, damage.offset)
        if is_torn and self._mode is not RecoveryMode.ABSOLUTE:
            log.warning("dropping a torn log tail (%s)", error)
        elif self._mode is RecoveryMode.POINT_IN_TIME:
            log.error("point-in-time recovery stops at damage and drops the rest of the log (%s)",
                      error)
            self.report.damage = error
        else:
            raise error
        self._drop_from(index, damage.offset or 0)

    @staticmethod
    def _intact_after(damage: Damage, min_lsn: int) -> bool:
        try:
            return find_intact_record(damage.path, damage.offset + 1, min_lsn) is not None
        except OSError as exc:
            raise storage_error_from(exc, f"cannot read log file {damage.path}") from None

    def _drop_from(self, index: int, offset: int) -> None:
        """Record (and with repair, perform) the loss of everything from logs[index] @ offset."""
        report = self.report
        for i, (_lsn, path) in enumerate(self._logs[index:]):
            cut = offset if i == 0 else 0
            size = _size(path)
            if size > cut:
                report.truncated.append(Truncation(path, cut, size - cut))
            if not self._repair:
                continue
            try:
                if cut > 0:
                    fsio.FS.truncate_file(path, cut)
                else:
                    fsio.FS.remove(path)
                    report.removed.append(path)
            except OSError as exc:
                raise storage_error_from(exc, f"cannot repair log file {path}") from None
            report.repaired = True
        if report.removed:
            try:
                fsio.FS.fsync_dir(report.directory)
            except OSError as exc:
                raise storage_error_from(exc, f"cannot sync {report.directory}") from None


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def replay(directory: str | os.PathLike[str], *, from_lsn: int = 1,
           mode: RecoveryMode = RecoveryMode.TOLERATE_TORN_TAIL,
           open_payload: OpenPayload | None = None, repair: bool = True,
           required_file: int = 0, closed_at: int = 0) -> Replay:
    """Iterate the data records (not CLOSE) with lsn >= from_lsn, in LSN order, as Record.

    `open_payload(lsn, kind, payload)` maps each payload (the engine decrypts; it may raise
    CorruptionError, which is given the record's path and offset). The returned iterator's
    `.report` (ReplayReport) is final once it is exhausted; repair happens during iteration,
    so an abandoned iterator repairs nothing. An empty or missing directory yields nothing.

    `required_file` (0: none): the first LSN of a log file that must exist (the newest one the
    caller recorded creating). `closed_at` (0: none): the LSN of the CLOSE record the caller
    recorded at a clean close; the log must end with it, and no damage is taken for a torn tail.

    Raises CorruptionError (with .path and .offset) for damage the mode does not tolerate,
    possibly after earlier records were yielded; also when the oldest log file starts after
    from_lsn (records the caller needs were deleted), when `required_file` is missing or the log
    does not end at `closed_at` (.path is the directory for these three).
    Raises StorageError when the directory cannot be read or a repair fails, and
    InvalidArgumentError (at once) for a bad from_lsn or mode.
    """
    return Replay(Path(directory), from_lsn, mode, open_payload, repair, required_file, closed_at)
