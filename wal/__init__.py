"""The write-ahead log: record format, framed appender, replaying reader.

    log = LogWriter(directory, next_lsn)             # one writev + one fdatasync per group
    first = log.append_group([(kind, payload), ...], first_lsn=log.next_lsn)
    for record in (it := replay(directory, from_lsn=checkpoint + 1)):
        ...                                          # it.report: last_lsn, truncated, ...

The log calls nothing above it: group commit (the queue of waiting writers), sealing and the
apply to memory live in the engine (lsmvec.db.write). `wal` imports nothing else of lsmvec;
every exception of the project lives in wal.errors.
"""
from __future__ import annotations

from .filenames import list_logs, log_name, parse_log_name
from .format import KIND_CLOSE, MAX_DATA_KIND, MAX_PAYLOAD, MIN_DATA_KIND
from .reader import Record
from .recovery import RecoveryMode, Replay, ReplayReport, Truncation, replay
from .writer import DURABILITIES, LogWriter, record_parts

__all__ = [
    "LogWriter",
    "record_parts",
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
