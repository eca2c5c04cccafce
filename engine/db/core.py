"""IndexCore: the one implementation behind Index and AsyncIndex.

Write path: validated batch -> one sealed WAL record (group commit, fsync: write.py) -> applied
to the memtable by the group's leader in LSN order, under the write side of the lock -> return.
Read path: under the read side, search every source (memtable, frozen memtables, segments) and
merge (see reads.py). Opening replays the log on top of what the store already holds.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from lsmvec.compaction.compactor import BuildBudget, run_in_background_thread
from lsmvec.compaction.scann_serialize import trim_heap
from lsmvec.db import info as reports
from lsmvec.db.maintenance import Maintenance
from lsmvec.db.matching import FilterDelete, filter_delete_record, filter_found, matching_live
from lsmvec.db.memtable import Memtable
from lsmvec.db.item_cache import ItemCache
from lsmvec.db.reads import find_live, hits_of, live_ids, one_segment, run_query
from lsmvec.db.recovery import check_store_is_current, opened_edit, replay_log
from lsmvec.db.rwlock import RWLock
from lsmvec.db.segments import SegmentSource, collect_orphans, id_index_of, open_segment
from lsmvec.db.text_search import check_analyzer
from lsmvec.db.version import Manifest, VersionEdit, install, read_manifest
from lsmvec.db.write import WriteQueue, payload_bytes, sealer, wal_aad
from lsmvec.disk import records
from lsmvec.disk.config import read_config, stored_dimension, write_config
from lsmvec.disk.filenames import WAL_DIR
from lsmvec.disk.lockfile import LOCK_NAME, LockFile
from lsmvec.disk.store import Store
from lsmvec.errors import ClosedError, DimensionMismatchError, StorageError, StorageFullError
from lsmvec.request.items import Batch
from lsmvec.request.options import IndexOptions
from lsmvec.wal import LogWriter, RecoveryMode

log = logging.getLogger(__name__)

DURABILITY = ("fsync", "os")


class IndexCore:
    """An open index. Thread-safe; one per index folder per process (see Client)."""

    def __init__(self, folder: Path, index_key: bytes, *, durability: str = "fsync",
                 recovery: RecoveryMode = RecoveryMode.TOLERATE_TORN_TAIL):
        self.folder = folder
        self.wal_dir = folder / WAL_DIR
        # The key first: a refused key changes no file (not even a missing LOCK is recreated).
        self.config, self.cipher = read_config(folder, index_key)
        self._lock = LockFile(folder / LOCK_NAME, f"index {folder.name!r}")
        try:
            self.durability = durability
            self.rw = self._rw = RWLock()
            self._config_lock = threading.Lock()
            self._closed = False
            self.embedder = None
            if self.config.embedding_model:
                from lsmvec.embedding import load_model
                self.embedder = load_model(self.config.embedding_model)
            # CONFIG's options object (authenticated) -> typed and validated, from here on
            opts = IndexOptions.from_stored(self.config.options, f"index {folder.name!r}")
            check_analyzer(opts, folder.name)
            self.config = dataclasses.replace(self.config, options=opts)
            self.memtable_bytes = opts.memtable_bytes
            self.background = opts.background_compaction
            self.memtable = Memtable(self.config.dimension, self.config.metric,
                                     expected_bytes=self.memtable_bytes)
            self.frozen: list[Memtable] = []
            self.flush_lock = threading.Lock()
            self.merge_lock = threading.Lock()
            self.commit_lock = threading.Lock()  # one store write transaction (+ its switch) at a time
            self._ids_lock = threading.Lock()
            self._training = False
            self.segments: list[SegmentSource] = []
            self.item_cache = ItemCache()  # decrypted store values of segment rows (queries)
            self.seg_by_id: dict[int, SegmentSource] = {}
            self.store = Store(folder, self.cipher)
            self.manifest: Manifest = read_manifest(self.store)
            self.next_segment_id = self.manifest.next_segment_id
            check_store_is_current(self.manifest, self.folder, self.store.path)
            self._load_segments()
            self._live = self.store.count()
            self._next_lsn = replay_log(self, recovery)
            self.wal = LogWriter(self.wal_dir, self._next_lsn,
                                 durability=durability,
                                 roll_bytes=self.config.options.wal_roll_bytes)
            self.writes = WriteQueue(self.wal, seal=sealer(self.cipher), name=folder.name)
            self._record_open()
            # Only now, with the open wholly done, is anything deleted: a refused open (a
            # rolled-back store, a missing log) must leave every file as it found it.
            self.wal.remove_below(self.manifest.checkpoint_lsn)
            if removed := collect_orphans(self.folder, {s.id for s in self.manifest.segments}):
                log.info("index %s: removed unreferenced segment folders %s", self.folder.name, removed)
            # The open's transient buffers (decrypted term indexes and id lists, ScaNN's read
            # buffers) are freed but kept by malloc: 6 MB of a 60k x 384 trained index's 116 MB
            trim_heap()
            self.maintenance = Maintenance(self)  # starts the flusher and merger threads
            self._lock.name_holder()  # the open succeeded: LOCK now names this process
        except BaseException:
            if getattr(self, "wal", None) is not None:
                self.wal.close(clean=False)
            if getattr(self, "store", None) is not None:
                self.store.close()
            self._lock.release()
            raise

    def _load_segments(self) -> None:
        """Open every manifest segment (folders it does not name are left alone here)."""
        for info in self.manifest.segments:
            self.add_segment(open_segment(self.folder, info, self.store,
                                          key=self.cipher.segment_key,
                                          context=self.cipher.segment_context(info.id, ""),
                                          metric=self.config.metric))

    def _record_open(self) -> None:
        """One version.install before any write is taken (see recovery.opened_edit)."""
        replayed = bool(self.memtable.n_rows or self.memtable.tombstones or self.frozen)
        install(self, opened_edit(self.manifest, replayed, self._next_lsn, self.wal.active_first_lsn))

    def add_segment(self, source: SegmentSource) -> None:
        source.cache = self.item_cache
        self.segments.append(source)
        self.seg_by_id[source.id] = source

    def remove_segment(self, seg_id: int) -> None:
        source = self.seg_by_id.pop(seg_id)
        self.segments.remove(source)
        self.item_cache.forget_segment(seg_id)

    def reserve_segment_id(self) -> int:
        with self._ids_lock:
            seg_id = self.next_segment_id
            self.next_segment_id += 1
            return seg_id

    # -- reports: plain functions of lsmvec.db.info over the public state below ---------------
    stats, verify = reports.stats, reports.verify
    n_lists, training_state = reports.n_lists, reports.training_state

    @property
    def live_count(self) -> int:  # read it under the read lock
        return self._live

    @property
    def training(self) -> bool:
        return self._training

    @property
    def background_error(self) -> BaseException | None:
        return self.maintenance.error

    @property
    def closed(self) -> bool:
        return self._closed

    # -- log ----------------------------------------------------------------------------------

    def open_payload(self, lsn: int, kind: int, payload: bytes) -> bytes:  # sealed: write.py
        """Authenticate and decrypt one log record's payload (recovery and verify)."""
        return self.cipher.wal.open(payload, wal_aad(self.cipher.uuid, lsn, kind))

    def apply_upsert(self, lsn: int, ids: list[str], vectors: np.ndarray, contents: list,
                     metadata: list, staged: list | None = None) -> None:
        """Apply a durable upsert record to memory (the write queue, and recovery's replay).
        `staged`: holds the memtable's token when the write queue's prepare staged the rows."""
        token = staged[0] if staged else None
        with self._rw.write():
            older = self.memtable.staged_older(token)  # looked up while the record was written
            self._live += len(ids) - self._shadow(ids, older)
            self.memtable.upsert(lsn, ids, vectors, contents, metadata, staged=token, older=older)
            if self.memtable.payload_bytes >= self.memtable_bytes:
                self.freeze()

    def apply_delete(self, lsn: int, ids: list[str]) -> None:
        """Apply a durable delete record to memory (the write queue, and recovery's replay)."""
        with self._rw.write():
            self._live -= self._shadow(ids)
            self.memtable.delete(lsn, ids)

    def _shadow(self, ids: list[str], in_memtable: set[str] | None = None) -> int:
        """A newer version or a delete is arriving: hide older versions everywhere.
        Returns how many of `ids` were live before (for the live count). `in_memtable`: those
        of `ids` the live memtable holds, when the caller already knows.

        Set operations against each memtable, then each segment's in-memory id index: no per-id
        Python loop over the tables and no store lookup (a bulk load of new ids costs a few
        hash probes per id)."""
        wanted = set(ids)
        for table in self.frozen:
            table.kill_many(wanted)
        live = 0
        for table in (self.memtable, *reversed(self.frozen)):  # newest first
            if not wanted:
                return live
            if in_memtable is not None and table is self.memtable:
                found = in_memtable
            else:
                found = wanted & table.row_of.keys()
            deleted = (wanted & table.tombstones) - found if table.tombstones else set()
            live += len(found)
            wanted -= found
            wanted -= deleted
        if wanted and self.segments:
            rest = list(wanted)
            probe = id_index_of(rest)  # hashed and sorted once for every segment
            for source in self.segments:
                rows = source.live_rows_of(rest, probe)
                live += len(rows)
                for row in rows:
                    source.kill(row)
        return live

    def freeze(self) -> None:
        """Hand the live memtable to the flusher (caller holds the write lock)."""
        table = self.memtable
        if table.n_rows == 0 and not table.tombstones:
            return
        table.frozen = True
        table.seal_lists()
        self.frozen.append(table)
        self.memtable = Memtable(table.dimension, self.config.metric, table.last_lsn + 1,
                                 expected_bytes=self.memtable_bytes)
        if (maintenance := getattr(self, "maintenance", None)) is not None:
            maintenance.roll_log()  # the frozen table's records end a file its flush frees
            maintenance.signal_flush()

    def after_install(self) -> None:
        """version.install switched the version: the space account is read again and writers
        waiting for room re-check (maintenance.py)."""
        if (maintenance := getattr(self, "maintenance", None)) is not None:
            maintenance.refresh()

    # -- maintenance a caller asks for (maintenance.py); runs at lowered CPU priority ----------

    def flush(self) -> None:
        """Freeze the memtable and write every frozen one as a segment, now."""
        self._check_writable()
        run_in_background_thread(self.maintenance.flush_all)

    def compact(self) -> None:
        """Flush, then run merges until the size-tiered policy has nothing left to do."""
        self._check_writable()
        run_in_background_thread(self.maintenance.compact_all)

    def train(self, n_lists: int | None = None) -> None:
        """Flush and merge everything into one segment, trained (tree + AH) when large enough."""
        self._check_writable()
        self._training = True
        try:  # the caller waits: ScaNN trains on every usable core (background merges: one)
            run_in_background_thread(lambda: self._train_all(n_lists, BuildBudget.for_caller()))
        finally:
            self._training = False

    def _train_all(self, n_lists: int | None, budget: BuildBudget) -> None:
        from lsmvec.db.jobs import merge_segments
        self.maintenance.flush_all()
        merge_segments(self, None, n_lists=n_lists, budget=budget)  # every segment, under the lock

    # -- writes -------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._closed:
            raise ClosedError(f"index {self.config.name!r} is closed")
        self._lock.check()  # ~2 us: a writer whose LOCK file vanished must not write on
        self.writes.check_applied()  # memory lost a logged write: no write until reopen

    @property
    def dimension(self) -> int | None:
        return self.config.dimension

    def _fix_dimension(self, dim: int) -> None:
        """The first upsert of an index created without a dimension fixes it (CONFIG rewrite)."""
        with self._config_lock:
            if self.config.dimension is None:
                fixed = dataclasses.replace(self.config, dimension=dim)
                try:
                    write_config(self.folder, fixed, self.cipher)
                except BaseException:
                    # The rename may have happened before the failure (a failed directory
                    # fsync): memory follows whatever CONFIG now says.
                    if stored_dimension(self.folder) == dim:
                        self.config = fixed
                    raise
                self.config = fixed
            elif self.config.dimension != dim:
                raise DimensionMismatchError(
                    f"vectors have dimension {dim}, the index has dimension {self.config.dimension}")

    def upsert(self, batch: Batch) -> None:
        self._raise_first(self.write_many([(records.KIND_UPSERT, batch)]))

    def delete(self, ids: list[str] | FilterDelete) -> None:
        self._raise_first(self.write_many([(records.KIND_DELETE, ids)]))

    @staticmethod
    def _raise_first(outcomes: list[BaseException | None]) -> None:
        if outcomes[0] is not None:
            raise outcomes[0]

    def write_many(self, writes: list[tuple[int, Any]]) -> list[BaseException | None]:
        """Several independent upsert / delete calls -- (records.KIND_UPSERT, Batch) or
        (records.KIND_DELETE, ids) -- from one thread, as one group of log records: each call
        is still its own record, all or nothing, and its own outcome (None or the error)."""
        self._check_writable()
        outcomes: list[BaseException | None] = [None] * len(writes)
        queued: list[tuple[int, tuple]] = []
        for i, (kind, what) in enumerate(writes):
            try:
                record = (self._upsert_record(what) if kind == records.KIND_UPSERT
                          else self._delete_record(what))
            except Exception as exc:
                outcomes[i] = exc
                continue
            if record is not None:
                queued.append((i, record))
        if queued:
            self.maintenance.make_room(sum(payload_bytes(record[1]) for _i, record in queued))
            results = self.writes.write_many([record for _i, record in queued])
            if self.wal.active_first_lsn != self.manifest.log_head:  # the log rolled
                self._record_log_head()
            for (i, _record), result in zip(queued, results):
                if isinstance(result, BaseException):
                    outcomes[i] = result
        return outcomes

    def _upsert_record(self, batch: Batch) -> tuple | None:
        """The log record (kind, payload, apply) of a validated batch; None when empty."""
        if type(batch) is not Batch:  # a request that builds its own (update: db/updating.py)
            return batch.record(self)
        if not batch.ids:
            return None
        if self.config.dimension is None or batch.vectors.shape[1] != self.config.dimension:
            self._fix_dimension(int(batch.vectors.shape[1]))
        payload = records.encode_upsert(batch.ids, batch.vectors, batch.contents, batch.metadata)
        vectors, ids, contents, metadata = batch.vectors, batch.ids, batch.contents, batch.metadata
        staged: list = []  # the prepare (write.py's stager, while the leader seals, writes, syncs)
        return (records.KIND_UPSERT, payload,
                lambda lsn: self.apply_upsert(lsn, ids, vectors, contents, metadata, staged),
                lambda: staged.append(self.memtable.stage(vectors, ids)))

    def _delete_record(self, ids: list[str] | FilterDelete) -> tuple | None:
        if isinstance(ids, FilterDelete):  # ids decided at the record's LSN (matching.py)
            return filter_delete_record(self, ids)
        if not ids:
            return None
        ids = list(dict.fromkeys(ids))
        return records.KIND_DELETE, records.encode_delete(ids), lambda lsn: self.apply_delete(lsn, ids)

    # -- reads --------------------------------------------------------------------------------

    def sources(self) -> list:
        """Everything a query searches: memtables newest first (empty ones left out: nothing
        to find), then segments."""
        tables = [table for table in (self.memtable, *reversed(self.frozen)) if table.row_of]
        return [*tables, *self.segments] if tables else self.segments

    def lookup(self, item_id: str) -> tuple[Any, int] | None:
        """Where the live version of `item_id` is, or None (deleted or unknown)."""
        return find_live(item_id, [self.memtable, *reversed(self.frozen)], self.segments,
                         self.seg_by_id, self.store)

    def read_lock(self):
        if self._closed:
            raise ClosedError(f"index {self.config.name!r} is closed")
        return self._rw.read()

    def query(self, queries: np.ndarray, k: int, *, n_probes: int | None = None, flt=None,
              include: tuple[str, ...] = ("distance",)) -> list[list[dict[str, Any]]]:
        """`flt` None matches everything. The read lock is taken without a context manager
        (rwlock.py: 0.5 us, not 2.7 us, of a ~135 us query)."""
        if self._closed:
            raise ClosedError(f"index {self.config.name!r} is closed")
        rw = self._rw
        rw.acquire_read()
        try:
            return run_query(self.sources(), queries, k, flt=flt, n_probes=n_probes,
                             include=include, store=self.store, cache=self.item_cache)
        finally:
            rw.release_read()

    def query_one(self, query: np.ndarray, k: int, n_probes: int | None,
                  include: tuple[str, ...]) -> list[dict[str, Any]]:
        """One unfiltered query, a checked (d,) vector (request.vectors.single_query): its hits.
        Ids + distances of a lone segment read no store: searched without the lock (3 us of a
        cold ~150 us query), kept only when no writer entered meanwhile (RWLock.epoch; a
        segment a merge closes meanwhile lives on while this search holds it). What reads the
        store takes the lock, which keeps the store and the segments in step."""
        if self._closed:
            raise ClosedError(f"index {self.config.name!r} is closed")
        rw = self._rw
        epoch = rw.epoch
        if not epoch & 1 and include == ("distance",):
            segments = self.segments[:2]  # one atomic copy: an install edits the list in place
            if len(segments) == 1 and not self.frozen and not self.memtable.row_of:
                hits = one_segment(segments[0], query, k, n_probes, include, None, None)
                if hits is not None and rw.epoch == epoch:
                    return hits
        rw.acquire_read()
        try:
            segments = self.segments
            if len(segments) == 1 and not self.frozen and not self.memtable.row_of:
                hits = one_segment(segments[0], query, k, n_probes, include, self.store,
                                   self.item_cache)
                if hits is not None:
                    return hits
            return run_query(self.sources(), query[None, :], k, n_probes=n_probes,
                             include=include, store=self.store, cache=self.item_cache)[0]
        finally:
            rw.release_read()

    def get(self, ids: list[str] | None, include: tuple[str, ...], flt=None) -> list[dict[str, Any]]:
        """Items of `ids` (in order) that match `flt`; `ids` None: all matching (matching.py)."""
        with self.read_lock():
            if ids is None:
                found = matching_live([self.memtable, *reversed(self.frozen)], self.segments,
                                      flt, self.store, self.item_cache)
            else:
                found = [at for at in map(self.lookup, ids) if at is not None]
                if flt is not None:
                    found = filter_found(found, flt, self.store, self.item_cache)
            return hits_of([(s, r, 0.0) for s, r in found], include, self.store, self.item_cache)

    def live_ids(self) -> list[str]:
        with self.read_lock():
            return live_ids([self.memtable, *reversed(self.frozen)], self.segments)

    def count(self) -> int:
        with self.read_lock():
            return self._live

    # -- lifecycle ----------------------------------------------------------------------------

    def _record_log_head(self) -> None:
        """The log rolled: record its new file (its loss is then seen at the next open). Once
        per roll; never waits behind a flush or merge commit (which records it itself, or the
        next write does). A failure only weakens that check."""
        edit = VersionEdit(log_head=self.wal.active_first_lsn, skip_unchanged=True)
        try:
            install(self, edit, wait=False)
        except StorageError as exc:
            log.warning("index %s: cannot record the new log file: %s", self.folder.name, exc)

    def close(self) -> None:
        """Stop background work, flush (so reopen replays nothing), end the log with a CLOSE
        record, record the clean close in the store. A full disk is not an error here once the
        acknowledged writes are durable (the flush is skipped, logged; the log keeps every
        write); other storage errors are raised after the index is closed all the same."""
        if self._closed:
            return
        flush_error: StorageError | None = None
        try:
            self.maintenance.stop()
            if not self.writes.poisoned:  # else memory may not match the log: replay decides
                try:
                    run_in_background_thread(self.maintenance.flush_and_merge_small)
                except StorageFullError as exc:
                    log.warning("index %s: close could not flush (%s); the log keeps every "
                                "write and the next open replays it", self.folder.name, exc)
                except StorageError as exc:
                    flush_error = exc
        finally:
            self._closed = True
            try:
                self.writes.close()  # refuse new writes, wait for the queued ones
                self._close_log()
            finally:
                with self.flush_lock:  # a running backup() (db/backup.py) reads the store
                    self.store.close()
                for source in self.segments:
                    source.segment.close()
                self._lock.release()
        if flush_error is not None:
            raise flush_error

    def _close_log(self) -> None:
        clean = not self.wal.poisoned
        try:
            self.wal.close(clean=clean)
        except StorageFullError as exc:
            if self.durability == "os":  # the final sync is what makes "os" writes durable
                raise
            log.warning("index %s: no room for the CLOSE record (%s); every acknowledged write "
                        "was synced, the next open treats this as a crash", self.folder.name, exc)
            return
        if not clean:
            return
        try:
            install(self, VersionEdit(closed_lsn=self.wal.last_lsn))
        except StorageFullError as exc:
            log.warning("index %s: cannot record the clean close (%s); the next open treats "
                        "this as a crash", self.folder.name, exc)
