"""Read-only opening: any number of reader processes beside the one writer of an index folder.

A reader never takes the writer's LOCK and never writes, renames or deletes a file (LMDB's
lock.mdb, its shared table of reader slots, is the one file it touches). What it answers from
is a **view**: one committed state of the store (an LMDB read transaction: manifest, dead rows,
items), the segments that state names, and a memtable holding the log's records past that
state's checkpoint, as the writer's own open would rebuild it (recovery.py) -- so a view is
exactly some state the writer was in, never a mix.

    what changed since the view was built      refresh()
    nothing                                     nothing (one stat of the store's meta page)
    the log grew, the store did not             the new records applied to the view's memtable
                                                (wal/tail.py: a record being written waits)
    the store committed (flush, merge, open,    a new view from a new snapshot: segments it
    close of the writer)                        shares with the old one are reused (ScaNN
                                                searchers, ids, term/text indexes), new ones
                                                opened, the log replayed from its checkpoint

Swapping views is a reference assignment; a query holds the view it started with, and an old
view is freed (its LMDB read transaction aborted, its reader slot released) when its last query
returns -- views hold no reference cycles, so that is at once. A segment merged away under a
running view stays readable: ScaNN holds its data in memory and vectors.bin is kept open
(Segment.hold_rows_file), as POSIX keeps an unlinked file. A view being built when the writer
deletes what it needs (a segment folder, a log file) is built again from the newer state.

A thread refreshes every ``max_staleness / 4`` seconds, so a committed write is visible to the
reader's queries within ``max_staleness`` (default 1 s) plus one refresh's work;
``refresh()`` does it at once (read-your-own-process tests).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import weakref
from pathlib import Path
from typing import Any

from lsmvec.db.core import IndexCore
from lsmvec.db.item_cache import ItemCache
from lsmvec.db.memtable import Memtable
from lsmvec.db.recovery import apply_record
from lsmvec.db.rwlock import RWLock
from lsmvec.db.segments import SegmentSource, open_segment
from lsmvec.db.text_search import check_analyzer
from lsmvec.db.version import read_dead, read_manifest
from lsmvec.disk.config import read_config
from lsmvec.disk.filenames import WAL_DIR
from lsmvec.disk.store import Store
from lsmvec.errors import ClosedError, CorruptionError, LogGone, ReadOnlyError
from lsmvec.request.options import IndexOptions
from lsmvec.wal import list_logs, log_name
from lsmvec.wal.tail import LogTail

log = logging.getLogger(__name__)

__all__ = ["Reader", "ReaderView", "DEFAULT_MAX_STALENESS"]

DEFAULT_MAX_STALENESS = 1.0
"""Seconds within which a reader sees what the writer committed (docs/api.md)."""
_BUILD_ATTEMPTS = 8
"""Views built in a row while the writer keeps deleting what they need before giving up."""


class _TailLog:
    """What stats() reads of a log (`core.wal`), for a view that only follows it."""

    def __init__(self, tail: LogTail) -> None:
        self._tail = tail

    @property
    def next_lsn(self) -> int:
        return self._tail.next_lsn

    @property
    def bytes_on_disk(self) -> int:
        return sum(path.stat().st_size for _lsn, path in list_logs(self._tail.directory)
                   if path.exists())

    @property
    def file_count(self) -> int:
        return len(list_logs(self._tail.directory))


class _ReaderMaintenance:
    """A reader runs no flush or merge; what it reports is its Reader's refreshing (held
    weakly: a view must not keep its Reader, nor be kept in a cycle past its last query)."""

    def __init__(self, reader: "Reader") -> None:
        self._reader = weakref.ref(reader)

    @property
    def error(self) -> BaseException | None:
        """The last background refresh's failure (stats()["background_error"])."""
        reader = self._reader()
        return reader.error if reader is not None else None

    def report(self) -> dict:
        reader = self._reader()
        return {"read_only": True, "max_staleness": reader.max_staleness if reader else None,
                "views_built": reader.refreshes if reader else None}

    def refresh(self) -> None:  # the write paths' hooks: a reader freezes memtables as it
        pass                     # follows the log, and never flushes them

    roll_log = signal_flush = refresh

    # A view's memtable fills while it follows the log (IndexCore.freeze calls these): the
    # frozen table stays in the view -- the writer rolls its log and flushes it, not the reader.
    def roll_log(self) -> None:
        pass

    def signal_flush(self) -> None:
        pass


class ReaderView(IndexCore):
    """One committed state of the index, as IndexCore's read paths expect it. Built only by
    Reader. Every write path raises ReadOnlyError (``_check_writable``)."""

    def __init__(self, reader: "Reader", store: Store, reuse: dict[int, SegmentSource]):
        # The attributes IndexCore's read paths use; no LOCK, no log writer, no maintenance.
        self.folder, self.wal_dir = reader.folder, reader.folder / WAL_DIR
        self.config, self.cipher = reader.config, reader.cipher
        self.durability = "os"
        self.rw = self._rw = RWLock()
        self._config_lock = threading.Lock()
        self._closed = False
        self.embedder = reader.embedder
        self.memtable_bytes = self.config.options.memtable_bytes
        self.background = False
        self.frozen: list[Memtable] = []
        self.flush_lock, self.merge_lock = threading.Lock(), threading.Lock()
        self.commit_lock, self._ids_lock = threading.Lock(), threading.Lock()
        self._training = False
        self.segments: list[SegmentSource] = []
        self.seg_by_id: dict[int, SegmentSource] = {}
        self.item_cache = reader.item_cache  # (segment, row) values never change: shared
        self.store = store
        self.maintenance = _ReaderMaintenance(reader)
        weakref.finalize(self, store.release)  # the reader slot goes with the last query
        self.manifest = read_manifest(store)
        self.next_segment_id = self.manifest.next_segment_id
        self.memtable = Memtable(self.config.dimension, self.config.metric,
                                 expected_bytes=self.memtable_bytes)
        for info in self.manifest.segments:
            old = reuse.get(info.id)
            if old is not None and old.info.files == info.files:
                source = old.for_view(info, read_dead(store, info.id, info.rows, info.dead), store)
            else:
                source = open_segment(self.folder, info, store, key=self.cipher.segment_key,
                                      context=self.cipher.segment_context(info.id, ""),
                                      metric=self.config.metric)
                source.segment.hold_rows_file()
                # kept for the next attempt when this build fails (the writer merged a segment
                # away meanwhile): a retry then opens only what is new, and can catch up with
                # a writer installing faster than a whole build takes
                reuse[info.id] = source
            self.add_segment(source)
        self._live = store.count()
        self.tail = LogTail(self.wal_dir, self.manifest.checkpoint_lsn + 1)
        self.wal = _TailLog(self.tail)
        self.memtable.first_lsn = self.tail.next_lsn
        self.catch_up()
        self._check_log()

    def _check_log(self) -> None:
        """What the store says the log must hold, as the writer's open checks it (recovery.py):
        the newest log file the writer recorded creating, and after a clean close every record
        up to its CLOSE record (no damage there is a write in progress: no writer is running)."""
        manifest, folder = self.manifest, self.wal_dir
        if manifest.log_head and not (folder / log_name(manifest.log_head)).exists():
            raise CorruptionError(f"log file {log_name(manifest.log_head)} the store names is "
                                  "missing", str(folder))
        if manifest.closed_lsn and self.tail.next_lsn <= manifest.closed_lsn:
            name, offset = self.tail.position
            raise CorruptionError(f"the log of a cleanly closed index ends before its CLOSE "
                                  f"record (LSN {manifest.closed_lsn}): it was cut or damaged",
                                  str(folder / name) if name else str(folder), offset)

    def catch_up(self) -> int:
        """Apply the log records written since the last call; returns how many. Raises LogGone
        when the writer deleted records this view still needs (a newer view is due)."""
        count = 0
        for rec in self.tail.read():
            try:
                payload = self.open_payload(rec.lsn, rec.kind, rec.payload)
            except CorruptionError as exc:
                raise CorruptionError("log record fails authentication", rec.path,
                                      rec.offset) from exc
            apply_record(self, rec.lsn, rec.kind, payload, rec.path, rec.offset)
            count += 1
        return count

    def _check_writable(self) -> None:
        if self._closed:
            raise ClosedError(f"index {self.config.name!r} is closed")
        raise ReadOnlyError(f"index {self.config.name!r} is open read_only: it cannot be "
                            "written (open it without read_only=True in one process)")

    def close(self) -> None:
        """Views are freed with their last query; Reader.close ends them all."""
        self._closed = True


class Reader:
    """The read-only opening of one index folder in this process (one per folder: LMDB allows
    one environment per file and process). ``view`` is the current ReaderView."""

    def __init__(self, folder: Path, index_key: bytes, *,
                 max_staleness: float = DEFAULT_MAX_STALENESS):
        self.folder = folder
        self.max_staleness = float(max_staleness)
        config, self.cipher = read_config(folder, index_key)
        options = IndexOptions.from_stored(config.options, f"index {folder.name!r}")
        check_analyzer(options, folder.name)
        self.config = dataclasses.replace(config, options=options)
        self.embedder = None
        if config.embedding_model:
            from lsmvec.embedding import load_model
            self.embedder = load_model(config.embedding_model)
        self.item_cache = ItemCache()
        self.store = Store(folder, self.cipher, read_only=True)
        self._refresh_lock = threading.Lock()
        self._closed = threading.Event()
        self.refreshes = 0  # views built after the first (tests and stats count them)
        self.error: BaseException | None = None  # the last background refresh's failure
        try:
            self._view = self._build({})
        except BaseException:
            self.store.close()
            raise
        self._thread = threading.Thread(target=self._run, name=f"lsmvec-reader-{folder.name}",
                                        daemon=True)
        self._thread.start()

    @property
    def view(self) -> ReaderView:
        if self._closed.is_set():
            raise ClosedError(f"index {self.config.name!r} is closed")
        return self._view

    def refresh(self) -> None:
        """Bring the view up to what the writer has committed and logged, now."""
        with self._refresh_lock:
            if self._closed.is_set():
                raise ClosedError(f"index {self.config.name!r} is closed")
            view = self._view
            if self.store.last_txn_id() == view.store.snapshot_txn_id:
                try:
                    view.catch_up()
                    return
                except LogGone as gone:  # the writer flushed past this view: its store moved
                    log.debug("index %s: %s; a new view", self.folder.name, gone)
            self._view = self._build({s.id: s for s in view.segments})
            self.refreshes += 1

    def verify(self) -> dict[str, Any]:
        """verify() of the current view. The writer goes on meanwhile, and may delete a log file
        or segment the view checks, or reuse store pages the unlocked page walk reads: a report
        with problems while the store moved on is taken again on a newer view."""
        for attempt in range(_BUILD_ATTEMPTS):
            view = self.view
            report = view.verify()
            if report["ok"] or self.store.last_txn_id() == view.store.snapshot_txn_id:
                return report
            self.refresh()
        return report

    def _build(self, reuse: dict[int, SegmentSource]) -> ReaderView:
        """A view of the newest committed state; built again when the writer deleted something
        it needed meanwhile (a merged segment's folder, a flushed log file)."""
        for attempt in range(_BUILD_ATTEMPTS):
            snapshot = self.store.snapshot()
            try:
                return ReaderView(self, snapshot, reuse)
            except (CorruptionError, LogGone) as exc:
                moved = self.store.last_txn_id() != snapshot.snapshot_txn_id
                snapshot.release()
                if not moved or attempt == _BUILD_ATTEMPTS - 1:
                    if isinstance(exc, LogGone):
                        raise CorruptionError(f"log records the store needs are missing: {exc}",
                                              str(self.folder / WAL_DIR)) from None
                    raise
                log.debug("index %s: the writer moved on while a view was built (%s); again",
                          self.folder.name, exc)
        raise AssertionError("unreachable")

    def _run(self) -> None:
        interval = self.max_staleness / 4
        while not self._closed.wait(interval):
            try:
                self.refresh()
                self.error = None
            except ClosedError:
                return
            except Exception as exc:  # kept: the next refresh tries again; stats() shows it
                if self.error is None:
                    log.warning("index %s: reader refresh failed: %s", self.folder.name, exc)
                self.error = exc

    def close(self) -> None:
        """Stop refreshing and close the store (every view's reader slot with it)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._thread.join()
        with self._refresh_lock:
            self._view.close()
            self._view.store.release()
            self.store.close()

