"""IndexCore: the one implementation behind Index and AsyncIndex.

Write path: validated batch -> one sealed WAL record (group commit, fsync) -> applied to the
memtable by the group's leader in LSN order, under the write side of the lock -> return.
Read path: under the read side, search every source (memtable, frozen memtables, segments) and
merge (see reads.py). Opening replays the log on top of what the store already holds.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from wal import RecoveryMode, WalWriter, replay

from . import records
from .config import IndexConfig, read_config, write_config
from .crypto import IndexCipher
from .errors import ClosedError, CorruptionError, DimensionMismatchError
from .items import Batch
from .lockfile import LOCK_NAME, LockFile
from .memtable import TOMBSTONE, Memtable
from .reads import run_query
from .rwlock import RWLock

log = logging.getLogger(__name__)

WAL_DIR = "wal"
DURABILITY = ("fsync", "os")
DEFAULT_ROLL_BYTES = 64 << 20


def _wal_aad(uuid: bytes, lsn: int, kind: int) -> bytes:
    return b"%s|wal|%d|%d" % (uuid, kind, lsn)


class IndexCore:
    """An open index. Thread-safe; one per index folder per process (see Client)."""

    def __init__(self, folder: Path, index_key: bytes, *, durability: str = "fsync",
                 recovery: RecoveryMode = RecoveryMode.TOLERATE_TORN_TAIL):
        self.folder = folder
        self._lock = LockFile(folder / LOCK_NAME, f"index {folder.name!r}")
        try:
            self.config, self.cipher = read_config(folder, index_key)
            self.durability = durability
            self._rw = RWLock()
            self._config_lock = threading.Lock()
            self._closed = False
            self.embedder = None
            self.memtable = Memtable(self.config.dimension, self.config.metric)
            self.frozen: list[Memtable] = []
            self._replay(recovery)
            self.wal = WalWriter(folder / WAL_DIR, self._next_lsn,
                                 durability=durability,
                                 roll_bytes=int(self.config.options.get("wal_roll_bytes", DEFAULT_ROLL_BYTES)),
                                 seal=self._seal)
        except BaseException:
            self._lock.release()
            raise

    # -- log ----------------------------------------------------------------------------------

    def _seal(self, lsn: int, kind: int, payload: bytes) -> bytes:
        return self.cipher.wal.seal(payload, _wal_aad(self.cipher.uuid, lsn, kind))

    def _open_payload(self, lsn: int, kind: int, payload: bytes) -> bytes:
        return self.cipher.wal.open(payload, _wal_aad(self.cipher.uuid, lsn, kind))

    def _replay(self, mode: RecoveryMode) -> None:
        records_iter = replay(self.folder / WAL_DIR, from_lsn=1, mode=mode)
        last = 0
        for rec in records_iter:
            try:
                payload = self._open_payload(rec.lsn, rec.kind, rec.payload)
            except CorruptionError as exc:
                raise CorruptionError("log record fails authentication", rec.path, rec.offset) from exc
            self._apply(rec.lsn, rec.kind, payload, rec.path, rec.offset)
            last = rec.lsn
        report = getattr(records_iter, "report", None)
        self._next_lsn = max(last, getattr(report, "last_lsn", 0) or 0) + 1
        if report is not None and getattr(report, "truncated", None):
            log.warning("index %s: dropped a torn log tail: %s", self.folder.name, report.truncated)

    def _apply(self, lsn: int, kind: int, payload: bytes, path: str | None = None,
               offset: int | None = None) -> None:
        if kind == records.KIND_UPSERT:
            rec = records.decode_upsert(payload, path, offset)
            dim = self.memtable.dimension or self.config.dimension
            if dim is not None and rec.vectors.shape[1] != dim and len(rec.ids):
                raise CorruptionError("log record has the wrong dimension", path, offset)
            self._apply_upsert(lsn, rec.ids, rec.vectors, rec.contents, rec.metadata)
        elif kind == records.KIND_DELETE:
            self._apply_delete(lsn, records.decode_delete(payload, path, offset))
        else:
            raise CorruptionError(f"unknown log record kind {kind}", path, offset)

    def _apply_upsert(self, lsn: int, ids: list[str], vectors: np.ndarray, contents: list,
                      metadata: list) -> None:
        with self._rw.write():
            self._shadow(ids)
            self.memtable.upsert(lsn, ids, vectors, contents, metadata)

    def _apply_delete(self, lsn: int, ids: list[str]) -> None:
        with self._rw.write():
            self._shadow(ids)
            self.memtable.delete(lsn, ids)

    def _shadow(self, ids: list[str]) -> None:
        """A newer version is arriving: hide older ones in frozen memtables."""
        for frozen in self.frozen:
            for item_id in ids:
                frozen.kill(item_id)

    # -- writes -------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._closed:
            raise ClosedError(f"index {self.config.name!r} is closed")

    @property
    def dimension(self) -> int | None:
        return self.config.dimension

    def _fix_dimension(self, dim: int) -> None:
        """The first upsert of an index created without a dimension fixes it (CONFIG rewrite)."""
        with self._config_lock:
            if self.config.dimension is None:
                self.config.dimension = dim
                write_config(self.folder, self.config, self.cipher)
            elif self.config.dimension != dim:
                raise DimensionMismatchError(
                    f"vectors have dimension {dim}, the index has dimension {self.config.dimension}")

    def upsert(self, batch: Batch) -> None:
        self._check_writable()
        if not batch.ids:
            return
        if self.config.dimension is None or batch.vectors.shape[1] != self.config.dimension:
            self._fix_dimension(int(batch.vectors.shape[1]))
        payload = records.encode_upsert(batch.ids, batch.vectors, batch.contents, batch.metadata)
        vectors, ids, contents, metadata = batch.vectors, batch.ids, batch.contents, batch.metadata
        self.wal.append(records.KIND_UPSERT, payload,
                        lambda lsn: self._apply_upsert(lsn, ids, vectors, contents, metadata))

    def delete(self, ids: list[str]) -> None:
        self._check_writable()
        if not ids:
            return
        ids = list(dict.fromkeys(ids))
        self.wal.append(records.KIND_DELETE, records.encode_delete(ids),
                        lambda lsn: self._apply_delete(lsn, ids))

    # -- reads --------------------------------------------------------------------------------

    def sources(self) -> list[Memtable]:
        """Newest first: the live memtable, then frozen ones."""
        return [self.memtable, *reversed(self.frozen)]

    def lookup(self, item_id: str) -> tuple[Memtable, int] | None:
        """Where the live version of `item_id` is, or None (deleted or unknown)."""
        for source in self.sources():
            row = source.lookup(item_id)
            if row == TOMBSTONE:
                return None
            if row is not None:
                return source, row
        return None

    def read_lock(self):
        if self._closed:
            raise ClosedError(f"index {self.config.name!r} is closed")
        return self._rw.read()

    def query(self, queries: np.ndarray, k: int, *, n_probes: int | None = None, flt=None,
              include: tuple[str, ...] = ("distance",)) -> list[list[dict[str, Any]]]:
        with self.read_lock():
            return run_query(self.sources(), queries, k, flt=flt, n_probes=n_probes, include=include)

    def get(self, ids: list[str], include: tuple[str, ...]) -> list[dict[str, Any]]:
        out = []
        with self.read_lock():
            for item_id in ids:
                found = self.lookup(item_id)
                if found is not None:
                    source, row = found
                    out.append(source.hit(row, 0.0, include))
        return out

    def live_ids(self) -> list[str]:
        with self.read_lock():
            seen: set[str] = set()
            out: list[str] = []
            for source in self.sources():
                for item_id in source.row_of:
                    if item_id not in seen:
                        seen.add(item_id)
                        out.append(item_id)
                seen.update(source.tombstones)
            return out

    def count(self) -> int:
        with self.read_lock():
            if not self.frozen:
                return self.memtable.n_live
        return len(self.live_ids())

    def stats(self) -> dict[str, Any]:
        with self.read_lock():
            return {
                "vectors": self.count_unlocked(),
                "memtable_rows": self.memtable.n_rows,
                "memtable_live": self.memtable.n_live,
                "memtable_bytes": self.memtable.payload_bytes,
                "frozen_memtables": len(self.frozen),
                "tombstones": len(self.memtable.tombstones),
                "wal_bytes": self.wal.bytes_on_disk,
                "wal_files": self.wal.file_count,
                "last_lsn": self.wal.next_lsn - 1,
            }

    def count_unlocked(self) -> int:
        return self.memtable.n_live if not self.frozen else -1

    def n_lists(self) -> int | None:
        return None

    def training_state(self) -> str:
        return "untrained"

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.wal.close(clean=True)
        finally:
            self._lock.release()
