"""Opening an index: replay the log past the manifest's checkpoint into the memtable.

Every record is authenticated (sealed with the index key, bound to its LSN and kind) before it
is decoded; a record that fails is corruption, never skipped. A torn tail -- the last record
cut by a crash before it was acknowledged -- is dropped by the WAL reader and logged.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from wal import RecoveryMode, replay

from . import records
from .errors import CorruptionError

if TYPE_CHECKING:
    from .core import IndexCore

log = logging.getLogger(__name__)

__all__ = ["replay_log"]


def replay_log(core: "IndexCore", mode: RecoveryMode) -> int:
    """Apply every record after the checkpoint to `core`'s memtable; returns the next LSN."""
    start = core.manifest.checkpoint_lsn + 1
    records_iter = replay(core.wal_dir, from_lsn=start, mode=mode)
    last = start - 1
    core.memtable.first_lsn = start
    for rec in records_iter:
        try:
            payload = core._open_payload(rec.lsn, rec.kind, rec.payload)
        except CorruptionError as exc:
            raise CorruptionError("log record fails authentication", rec.path, rec.offset) from exc
        _apply(core, rec.lsn, rec.kind, payload, rec.path, rec.offset)
        last = rec.lsn
    report = getattr(records_iter, "report", None)
    if core.memtable.payload_bytes >= core.memtable_bytes:
        core._freeze()
    if report is not None and getattr(report, "truncated", None):
        log.warning("index %s: dropped a torn log tail: %s", core.folder.name, report.truncated)
    return max(last, report.last_lsn) + 1


def _apply(core: "IndexCore", lsn: int, kind: int, payload: bytes, path: str | None,
           offset: int | None) -> None:
    if kind == records.KIND_UPSERT:
        rec = records.decode_upsert(payload, path, offset)
        dim = core.memtable.dimension or core.config.dimension
        if dim is not None and rec.vectors.shape[1] != dim and len(rec.ids):
            raise CorruptionError("log record has the wrong dimension", path, offset)
        core._apply_upsert(lsn, rec.ids, rec.vectors, rec.contents, rec.metadata)
    elif kind == records.KIND_DELETE:
        core._apply_delete(lsn, records.decode_delete(payload, path, offset))
    else:
        raise CorruptionError(f"unknown log record kind {kind}", path, offset)
