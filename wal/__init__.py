"""The write-ahead log: record format, group-commit writer, replaying reader.

    writer = WalWriter(directory, next_lsn)          # group commit, fsync per group
    lsn = writer.append(kind, payload, apply)        # durable, then apply(lsn) in LSN order
    for record in (it := replay(directory, from_lsn=checkpoint + 1)):
        ...                                          # it.report: last_lsn, truncated, ...

`wal` imports nothing else of lsmvec; every exception of the project lives in wal.errors.
"""
from __future__ import annotations

from .filenames import list_logs, log_name, parse_log_name
from .format import KIND_CLOSE, MAX_DATA_KIND, MAX_PAYLOAD, MIN_DATA_KIND
from .reader import Record
from .recovery import RecoveryMode, Replay, ReplayReport, Truncation, replay
from .writer import DURABILITIES, WalWriter

__all__ = [
    "WalWriter",
    "DURABILITIES",
    "replay",
    "Replay",
    "ReplayReport",
    "Truncation",
    "Record",
    "RecoveryMode",
    "KIND_CLOSE",
    "MIN_DATA_KIND",
    "MAX_DATA_KIND",
    "MAX_PAYLOAD",
    "log_name",
    "parse_log_name",
    "list_logs",
]
