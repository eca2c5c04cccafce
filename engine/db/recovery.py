"""Opening an index: replay the log past the manifest's checkpoint into the memtable.

Every record is authenticated (sealed with the index key, bound to its LSN and kind) before it
is decoded; a record that fails is corruption, never skipped. A torn tail -- the last record
cut by a crash before it was acknowledged -- is dropped by the WAL reader and logged.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from lsmvec.wal import RecoveryMode, list_logs, replay

from lsmvec.disk import records
from lsmvec.disk.filenames import WAL_DIR
from lsmvec.errors import CorruptionError
from lsmvec.db.segments import segment_folder_names
from lsmvec.db.version import Manifest, VersionEdit

if TYPE_CHECKING:
    from lsmvec.db.core import IndexCore

log = logging.getLogger(__name__)

__all__ = ["replay_log", "check_store_is_current", "opened_edit", "apply_record"]


def check_store_is_current(manifest: Manifest, folder: Path, store_path: Path) -> None:
    """A store that no writer has opened yet (log_head 0) owns no log record and no segment:
    finding either beside it means data.mdb is older than the files around it (restored from a
    backup, or LMDB fell back to an older meta page). Raises CorruptionError, changing nothing."""
    if manifest.log_head != 0:
        return
    written = [path.name for _lsn, path in list_logs(folder / WAL_DIR) if path.stat().st_size]
    segments = segment_folder_names(folder)
    if written or segments:
        found = f"log files {', '.join(written)}" if written else f"segments {', '.join(segments)}"
        raise CorruptionError(f"the store was never opened by a writer, yet the index holds "
                              f"{found}: the store is older than the files beside it "
                              "(restored from a backup?)", str(store_path))


def opened_edit(old: Manifest, replayed: bool, next_lsn: int, log_head: int) -> VersionEdit:
    """What a writer's open records before it takes any write (one version.install): the log
    file it appends to (it must exist from now on) and the clean-close mark cleared. When the
    log past the checkpoint held nothing but CLOSE records, the checkpoint moves up in the same
    commit, so replay never asks for records that are about to be deleted."""
    checkpoint = old.checkpoint_lsn
    if not replayed and next_lsn - 1 > checkpoint:
        checkpoint = next_lsn - 1
    return VersionEdit(checkpoint_lsn=checkpoint, log_head=log_head, closed_lsn=0)


def replay_log(core: "IndexCore", mode: RecoveryMode) -> int:
    """Apply every record after the checkpoint to `core`'s memtable; returns the next LSN."""
    start = core.manifest.checkpoint_lsn + 1
    manifest = core.manifest
    records_iter = replay(core.wal_dir, from_lsn=start, mode=mode,
                          required_file=manifest.log_head or 0, closed_at=manifest.closed_lsn)
    last = start - 1
    core.memtable.first_lsn = start
    for rec in records_iter:
        try:
            payload = core.open_payload(rec.lsn, rec.kind, rec.payload)
        except CorruptionError as exc:
            raise CorruptionError("log record fails authentication", rec.path, rec.offset) from exc
        apply_record(core, rec.lsn, rec.kind, payload, rec.path, rec.offset)
        last = rec.lsn
    report = getattr(records_iter, "report", None)
    if core.memtable.payload_bytes >= core.memtable_bytes:
        with core.rw.write():
            core.freeze()
    if report is not None and getattr(report, "truncated", None):
        log.warning("index %s: dropped a torn log tail: %s", core.folder.name, report.truncated)
    return max(last, report.last_lsn) + 1


def apply_record(core: "IndexCore", lsn: int, kind: int, payload: bytes, path: str | None,
                 offset: int | None) -> None:
    """One authenticated log record's payload applied to `core`'s memory (replay; readers)."""
    if kind == records.KIND_UPSERT:
        rec = records.decode_upsert(payload, path, offset)
        dim = core.memtable.dimension or core.config.dimension
        if dim is not None and rec.vectors.shape[1] != dim and len(rec.ids):
            raise CorruptionError("log record has the wrong dimension", path, offset)
        core.apply_upsert(lsn, rec.ids, rec.vectors, rec.contents, rec.metadata)
    elif kind == records.KIND_DELETE:
        core.apply_delete(lsn, records.decode_delete(payload, path, offset))
    else:
        raise CorruptionError(f"unknown log record kind {kind}", path, offset)
