"""Maintenance: the flusher and merger threads, the flush / compact work a caller asks for, and
room for writes (LevelDB's DBImpl::MakeRoomForWrite + MaybeScheduleCompaction).

A write asks `make_room(nbytes)` before it is logged. Two limits hold it back:
  * memory: while MAX_FROZEN memtables await their flush, it waits for the flusher;
  * disk: engine/db/space.py's `assess` -- a memtable holding garbage flushed early from 50%
    of the write budget, writes slowed in proportion from 70%, stopped from 90% until a flush
    or merge frees space (never while none could); the segment count likewise (20 / 36).
With background compaction off, the writer does the flush or merge itself instead of waiting.
Every slowed / stopped write is counted (stats()["write_pressure"]).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from typing import TYPE_CHECKING

from lsmvec.compaction.compactor import Compactor
from lsmvec.compaction.policy import pick, tier
from lsmvec.db import space
from lsmvec.db.jobs import flush_oldest, merge_segments
from lsmvec.errors import StorageError

if TYPE_CHECKING:
    from lsmvec.db.core import IndexCore

log = logging.getLogger(__name__)

MAX_FROZEN = 4
"""Writers wait while this many memtables await their flush (backpressure, bounded memory)."""

EARLY_FLUSH_SHARE = 1 / 8
"""An early flush (a memtable holding garbage, frozen before memtable_bytes because the folder
is past space.FLUSH_AT) waits until the memtable holds this share of the headroom (A - 1) x L:
a smaller one frees little and leaves a tiny segment for the merges. Without the floor a
5-minute mixed load froze at 70% of its 1,000-row writes and kept 33-34 segments (the count's
slowdown holding it) where 10 had been."""

STOP_RECHECK = 0.5
"""A stopped writer re-reads the space this often (seconds) even if no install woke it."""


class Maintenance:
    """One per open index; owns its background threads."""

    def __init__(self, core: "IndexCore") -> None:
        self.core = core
        self.amplification = core.config.options.space_amplification
        self.counters = space.PressureCounters()
        self._store_used = self._store_row_bytes = 0
        self._inflight_lock = threading.Lock()
        self._inflight_rows = 0
        self._merging_rows = 0  # of _inflight_rows, a merge's
        self._retiring: dict[int, int] = {}  # segment id -> bytes, of segments a merge replaces
        self._room = threading.Condition()
        self.refresh()
        self.flusher = Compactor(self.flush_step, "lsmvec-flush")
        self.merger = Compactor(self.merge_step, "lsmvec-merge")
        if core.background:
            if core.frozen:
                self.flusher.signal()
            self.merger.signal()  # small segments left by earlier processes merge now

    # -- accounting -----------------------------------------------------------------------------

    def space(self) -> space.Space:
        """The folder's account now: what the last refresh read, plus the live count, the
        segments being written and the log bytes written since (no I/O: ~5 us; reading the
        log folder and the store at every write cost 190 us, 6% of a 1,000 x 384 batch)."""
        base = self._base
        with self._inflight_lock:
            gone = sum(size for seg_id, size in self._retiring.items()
                       if seg_id not in self._named)
            building, merging = self._inflight_rows, self._merging_rows
        return dataclasses.replace(base, live_items=self.core.live_count, building_rows=building,
                                   merging_rows=merging,
                                   segment_bytes=base.segment_bytes + gone,
                                   log_bytes=base.log_bytes + self._logged_since)

    def refresh(self) -> None:
        """After every install, and after a flush removed log files: the manifest's segments,
        the log files, the store's file and pages in use are read again; writers waiting for
        room re-check."""
        core = self.core
        try:
            self._store_used, self._store_row_bytes = core.store.used_bytes_split()
            # A reader process killed (kill -9) leaves its LMDB reader slot behind, pinning the
            # pages of its old snapshot: freed here, once per install (a scan of 254 slots).
            if freed := core.store.check_readers():
                log.info("index %s: freed %d reader slots of dead processes", core.folder.name,
                         freed)
        except StorageError as exc:  # keep the last figure; the store's own calls report it
            log.debug("index %s: store size unknown: %s", core.folder.name, exc)
        self._logged_since = 0
        self._named = {s.id for s in core.manifest.segments}
        self._base = space.measure(core.manifest.segments, 0, core.wal.bytes_on_disk,
                                   core.store.data_file, self._store_used, core.config.dimension,
                                   store_row_bytes=self._store_row_bytes)
        with self._room:
            self._room.notify_all()

    @property
    def error(self) -> BaseException | None:
        return self.flusher.error or self.merger.error

    def _max_dead_ratio(self) -> float:
        return (self.amplification - 1.0) / 4.0

    # -- the steps the threads (and callers) run ----------------------------------------------------

    def flush_step(self) -> bool:
        core = self.core
        with core.rw.read():
            rows = core.frozen[0].n_live if core.frozen else 0
        with self._building(rows):  # (a bulk load's first 64 MiB flush stops writes briefly)
            done = flush_oldest(core)
        if done:
            self.refresh()  # the flush removed the log files it made redundant
        if done and self.core.background:
            self.merger.signal()
        return done

    def merge_step(self, small_only: bool = False) -> bool:
        """One merge the policy picks (small_only: only of tier-0 segments, and no
        size-amplification merge: close's quick tidy-up)."""
        with self.core.rw.read():
            stats = space.segment_stats(self.core.manifest.segments)
        picked = pick(stats, None if small_only else self._max_dead_ratio())
        if not picked or (small_only and any(tier(st.rows - st.dead) > 0
                                             for st in stats if st.id in picked)):
            return False
        with self.core.rw.read():  # their files stay until merge_segments removes them
            retiring = {s.id: sum(int(f[1]) for f in s.files)
                        for s in self.core.manifest.segments if s.id in picked}
        with self._building(sum(st.rows - st.dead for st in stats if st.id in picked), retiring,
                            merge=True):
            return merge_segments(self.core, picked)

    @contextlib.contextmanager
    def _building(self, rows: int, retiring: dict[int, int] | None = None, merge: bool = False):
        """Count a segment being written (`rows` live rows) in the space until it is installed
        (or abandoned): its files sit beside the ones it replaces until then. `retiring`: the
        bytes of the segments it replaces, counted until their files are removed (after the
        install; a merge thread at nice 10 on a busy machine was seen holding 3.6 MB of them
        past the install). `merge`: a merge's segment (Space.merging_rows)."""
        with self._inflight_lock:
            self._inflight_rows += rows
            self._merging_rows += rows if merge else 0
            self._retiring.update(retiring or {})
        try:
            yield
        finally:
            with self._inflight_lock:
                self._inflight_rows -= rows
                self._merging_rows -= rows if merge else 0
                for seg_id in retiring or {}:
                    self._retiring.pop(seg_id, None)

    def flush_all(self) -> None:
        core = self.core
        with core.rw.write():
            core.freeze()
        while self.flush_step():
            pass

    def flush_and_merge_small(self) -> None:
        """Close's work: flush, then merge tier-0 segments (milliseconds each) while the policy
        picks them: open-write-close cycles left one tiny segment each (474 after 500)."""
        self.flush_all()
        while self.merge_step(small_only=True):
            pass

    def compact_all(self) -> None:
        self.flush_all()
        while self.merge_step():
            pass

    def roll_log(self) -> None:
        """A memtable was just frozen: start a new log file, so the flush of that table frees
        its records' files whole (else they share a file with the next table's records, and
        the log held up to two tables: 7.9 MB at a 4 MiB threshold). A failure only delays
        that (the flush rolls too); the write that froze the table is already durable."""
        try:
            self.core.wal.roll()
        except Exception as exc:  # ClosedError, LogPoisonedError: the next write reports them
            log.debug("index %s: no log roll at freeze: %s", self.core.folder.name, exc)

    def signal_flush(self) -> None:
        if self.core.background:
            self.flusher.signal()

    def stop(self) -> None:
        self.flusher.stop()
        self.merger.stop()

    # -- room for a write -------------------------------------------------------------------------

    def make_room(self, nbytes: int) -> None:
        """Called by a write of `nbytes` before it is logged; holds no lock. Raises the
        StorageError of a flush or merge it had to run itself (nothing written yet)."""
        self._wait_for_memtable_room()
        pressure = space.assess(self.space(), self.amplification, nbytes)
        self._logged_since += nbytes  # (approximate under concurrent writers: an estimate)
        if pressure.flush and self._freeze_garbage():
            self.counters.early_flushes += 1
            if not self.core.background:
                self.flush_step()
        if pressure.stop:
            self._stop_until_room(nbytes)
        elif pressure.delay:
            self.counters.slowed += 1
            self.counters.delay_seconds += pressure.delay
            with self._room:  # woken early when an install frees space
                self._room.wait(pressure.delay)

    def _wait_for_memtable_room(self) -> None:
        core = self.core
        if len(core.frozen) < MAX_FROZEN:
            return
        if not core.background:
            while len(core.frozen) >= MAX_FROZEN:
                self.flush_step()
            return
        with self._room:
            while len(core.frozen) >= MAX_FROZEN and not core.closed:
                if self.flusher.error is not None:
                    break  # the flusher cannot make room (a full disk?): see below
                self.flusher.signal()
                self._room.wait(STOP_RECHECK)
        if len(core.frozen) >= MAX_FROZEN and not core.closed:
            # Flush here, in the caller: it makes room (space was freed) or raises the
            # StorageError itself, before this call has written anything.
            self.flush_step()
            self.flusher.error = None

    def _garbage_in_memory(self) -> bool:
        """Would flushing the live memtable free space? It holds overwritten rows or deletes, or
        rows of it supersede rows of segments (dead in memory, not yet on disk)."""
        core = self.core
        with core.rw.read():
            table = core.memtable
            if table.n_rows == 0 and not table.tombstones:
                return False
            if table.tombstones or table.n_live < table.n_rows:
                return True
            # n_dead: kept up to date by the source (a count over every row here cost ~140 us
            # per million rows, on every write once the folder is past FLUSH_AT)
            return any(s.n_dead > s.info.dead for s in core.segments)

    def _early_flush_floor(self) -> int:
        """Payload bytes a memtable holds before an early flush (module EARLY_FLUSH_SHARE)."""
        headroom = (self.amplification - 1.0) * self.space().live_bytes
        return min(self.core.memtable_bytes, int(EARLY_FLUSH_SHARE * headroom))

    def _can_free_space(self) -> bool:
        core = self.core
        with core.rw.read():
            stats = space.segment_stats(core.manifest.segments)
            frozen = bool(core.frozen)
        return frozen or pick(stats, self._max_dead_ratio()) is not None

    def _freeze_garbage(self) -> bool:
        """Freeze the live memtable when that frees space and it is big enough to be worth a
        segment (EARLY_FLUSH_SHARE); True when it did."""
        core = self.core
        if core.frozen or core.memtable.payload_bytes < self._early_flush_floor():
            return False
        if not self._garbage_in_memory():
            return False
        with self.core.rw.write():
            self.core.freeze()
        return True

    def _stop_until_room(self, nbytes: int) -> None:
        """At the budget: wait for the background work (or do it here) until the write fits,
        or until nothing left could free space."""
        core = self.core
        counted = False
        while not core.closed:
            if not space.assess(self.space(), self.amplification, nbytes).stop:
                return
            froze = self._freeze_garbage()
            if not froze and not self._can_free_space():
                return  # the live data itself needs the room: nothing to wait for
            if not counted:
                self.counters.stopped += 1
                counted = True
            if not core.background or self.error is not None:
                # Do it here: frees space, or raises the StorageError before anything is written.
                self.counters.inline_compactions += 1
                progressed = bool(core.frozen) and self.flush_step()
                progressed = progressed or self.merge_step()
                self.flusher.error = self.merger.error = None
                if not progressed:
                    return
                continue
            self.merger.signal()
            if core.frozen:
                self.flusher.signal()
            with self._room:
                self._room.wait(STOP_RECHECK)

    def report(self) -> dict:
        out = self.counters.to_dict()
        out["space"] = self.space().to_dict(self.amplification)
        return out

