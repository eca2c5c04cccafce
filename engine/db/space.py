"""Disk space: what the index folder holds against its live data, and the write backpressure
that keeps it within a bound (RocksDB's universal-compaction size-amplification trigger and its
pending-compaction-bytes slowdown / stop, on lsmvec's own accounting).

Under sustained overwrites nothing else bounds the folder: the log keeps every record until the
memtables holding them are flushed (64 MiB memtables, four frozen at once: up to 320 MiB of log
for 5 MB of live rows), and every flushed version of an item leaves a dead row in an older
segment until a merge rewrites it. Measured before this module (`lsmvec bench-space`, 10,000
ids x 128 re-upserted 60 times): the folder peaked at 27.5x its live data.

The bound, with L the live data (live items x bytes per segment row, plus the store pages in
use) and ``space_amplification`` = A (index option, default 3.0): the folder -- segments, log,
store -- stays within the budget A x L + SLACK. ``assess`` compares the two before each write:

  * from FLUSH_AT of the write budget, a memtable that holds garbage (overwritten rows, deletes, or
    newer versions of rows in segments) is frozen and flushed, so its dead log records go and
    its shadowed segment rows become dead on disk (a memtable of new items only is left alone:
    its log is live data, and flushing it early would only cost merges);
  * compaction/policy.py merges segments once their dead rows exceed (A - 1) / 4 of the live
    ones (the size-amplification trigger), the most-dead segments first;
  * writes may fill the budget less the room a merge's new segment needs beside the ones it
    replaces (`write_budget`, `merge_room`: the segments' live rows and the store, at most L);
  * from SLOWDOWN_AT of the write budget each write is delayed in proportion to how far over it is
    (the rate falls linearly from SLOWDOWN_RATE to zero), and at STOP_AT writes stop until a
    flush or merge brings the folder back under it. Writes are never stopped while no flush or
    merge could help (nothing frozen, no garbage in memory, nothing the policy would pick):
    then the live data itself needs the room. The segment count is held the same way, between
    SEGMENTS_SLOWDOWN and SEGMENTS_STOP.
The figures measured with these defaults are in docs/tuning.md and docs/benchmarks.md.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from lsmvec.compaction.policy import SegmentStat

SLACK = 2 << 20
"""Bytes allowed on top of A x L: the active log, the store's minimum size and a merge's new
segment beside the ones it replaces, which a tiny index cannot amortise."""

FLUSH_AT = 0.5
"""Fraction of the budget where a memtable holding garbage is flushed early."""

SLOWDOWN_AT = 0.7
"""Fraction of the budget where writes begin to slow down."""

STOP_AT = 0.9
"""Fraction of the budget where writes stop: the rest is headroom for what the accounting
sees late -- the files of a replaced segment until their removal, the store growing inside a
commit, the writes already admitted (measured: peaks 1.8 MB over the accounted use at 6.5 MB
of live data)."""

SLOWDOWN_RATE = 16 << 20
"""Bytes/s a write is throttled to at the slowdown threshold when it is barely over (RocksDB's
delayed_write_rate default); the rate falls linearly to zero at the budget, where writes stop."""

SEGMENTS_SLOWDOWN = 20
SEGMENTS_STOP = 36
"""Segment counts where writes slow down / stop until merges catch up (RocksDB's level-0
slowdown / stop triggers, 20 / 36): every query searches every segment. Without them a
10-minute mixed load on a busy 2-core machine left merges behind at 75 segments."""

MAX_DELAY = 1.0
"""Longest single slowdown pause, seconds: above it the write waits for compaction instead."""


@dataclass(frozen=True)
class Space:
    """The folder's bytes as the engine accounts for them (no directory walk)."""
    segment_bytes: int
    segment_rows: int
    dead_rows: int
    log_bytes: int
    store_bytes: int
    store_used: int
    live_items: int
    row_bytes: float
    building_rows: int = 0
    """Live rows of segments being written now (a flush, a merge): their files are on disk
    beside the ones they replace until the install."""
    merging_rows: int = 0
    """Of building_rows, those of a merge: the merge room (merge_room) they already fill."""
    segments: int = 0
    store_row_bytes: int = 0
    """Of store_used, the pages that grow with segment rows dead or alive (row ids, dead sets,
    term indexes: Store.used_bytes_split)."""

    @property
    def live_bytes(self) -> int:
        """Live items x bytes per segment row, plus the store pages in use (not its free ones:
        under churn data.mdb held 4.6 MB for the 1.0 MB a fresh store of the same items needs)
        less the dead rows' share of the per-row pages. Counted whole, those grew the budget
        with the garbage: 39 B a dead row of 36-character ids, more than a dimension-8 row adds
        to the folder at A = 10, so the stop never came (32,000 dead rows for 2,000 live,
        folder 16x its live data, unmerged with background compaction off)."""
        dead_share = (self.store_row_bytes * self.dead_rows // self.segment_rows
                      if self.segment_rows else 0)
        return int(self.live_items * self.row_bytes) + self.store_used - dead_share

    @property
    def used_bytes(self) -> int:
        return (self.segment_bytes + int(self.building_rows * self.row_bytes) + self.log_bytes
                + self.store_bytes)

    def budget(self, amplification: float) -> int:
        """The bound the folder keeps to: A x L + SLACK."""
        return int(amplification * self.live_bytes) + SLACK

    @property
    def merge_room(self) -> int:
        """The most a merge can write beside what it replaces: the live rows of the segments
        (rows still in memtables are in no segment a merge could rewrite) and the store pages
        its transaction rewrites; at most the live data. During the first flushes of a bulk
        load most rows are in memtables: counting a whole L here slowed a fresh 100k x 384
        load to a stop at its first flush (0.34 s of delays in 1.1 s), with nothing to merge."""
        in_segments = int(max(0, self.segment_rows - self.dead_rows) * self.row_bytes)
        return min(self.live_bytes, in_segments + self.store_used)

    @property
    def merge_reserve(self) -> int:
        """The merge room not already in use: a merge in flight has its new segment counted in
        used_bytes, so that much of the room is not held free a second time (merges run one at
        a time; the next starts once this one's inputs are gone, and the reserve is whole
        again). Counting both slowed a 300k x 384 load to 37k rows/s (6.5 s of delays) while
        its merges trained."""
        return max(0, self.merge_room - int(self.merging_rows * self.row_bytes))

    def write_budget(self, amplification: float) -> int:
        """What writes may fill: the budget less the merge reserve, kept free for the segment a
        merge writes beside the ones it replaces (a merge is never held back, so without
        this room a merge started near the budget overshot it by up to L: 3.5x)."""
        return int(amplification * self.live_bytes) + SLACK - self.merge_reserve

    def to_dict(self, amplification: float) -> dict:
        live = max(1, self.live_bytes)
        return {"used_bytes": self.used_bytes, "live_bytes_estimate": self.live_bytes,
                "amplification": round(self.used_bytes / live, 3),
                "budget_bytes": self.budget(amplification),
                "write_budget_bytes": self.write_budget(amplification),
                "segment_bytes": self.segment_bytes, "log_bytes": self.log_bytes,
                "building_bytes": int(self.building_rows * self.row_bytes),
                "store_bytes": self.store_bytes, "store_used_bytes": self.store_used,
                "dead_segment_rows": self.dead_rows, "segments": self.segments}


def measure(segments: list, live_items: int, log_bytes: int, store_path: os.PathLike,
            store_used: int, dimension: int | None, building_rows: int = 0,
            store_row_bytes: int = 0) -> Space:
    """The Space of an index: `segments` its manifest's SegmentInfo entries (sizes and dead
    counts as committed), `live_items` its live count, `log_bytes` the log's files,
    `store_used` the store's pages in use and `store_row_bytes` those of its meta table
    (Store.used_bytes_split, read at the last install)."""
    seg_bytes = sum(int(f[1]) for s in segments for f in s.files)
    rows = sum(s.rows for s in segments)
    dead = sum(s.dead for s in segments)
    row_bytes = seg_bytes / rows if rows else 4.0 * (dimension or 0) + 64
    try:
        store = os.stat(store_path).st_size
    except OSError:
        store = 0
    store_used = min(store, store_used)
    return Space(seg_bytes, rows, dead, log_bytes, store, store_used, live_items,
                 row_bytes, building_rows, segments=len(segments),
                 store_row_bytes=min(store_used, store_row_bytes))


def segment_stats(segments: list) -> list[SegmentStat]:
    return [SegmentStat(s.id, s.rows, s.dead) for s in segments]


@dataclass(frozen=True)
class Pressure:
    """What a write must do before it is logged: go (delay 0), wait `delay` seconds, or stop
    (wait for a flush or merge to free space); `flush`: flush a memtable holding garbage."""
    delay: float = 0.0
    stop: bool = False
    flush: bool = False


GO = Pressure()


def assess(space: Space, amplification: float, nbytes: int) -> Pressure:
    """The pressure on a write of `nbytes` given the folder's `space` (pure; table-tested): the
    stronger of the space pressure and the segment-count pressure."""
    budget = space.write_budget(amplification)
    used = space.used_bytes
    by_space = _ramp(used, SLOWDOWN_AT * budget, STOP_AT * budget, nbytes)
    by_count = _ramp(space.segments, SEGMENTS_SLOWDOWN, SEGMENTS_STOP, nbytes)
    pressure = max(by_space, by_count, key=lambda p: (p.stop, p.delay))
    if used >= FLUSH_AT * budget:
        pressure = Pressure(pressure.delay, pressure.stop, flush=True)
    return pressure


def _ramp(level: float, soft: float, hard: float, nbytes: int) -> Pressure:
    """GO below `soft`, stop from `hard`, in between a delay whose rate falls linearly."""
    if level < soft:
        return GO
    if level >= hard:
        return Pressure(stop=True)
    over = (level - soft) / (hard - soft)  # 0 .. 1
    rate = SLOWDOWN_RATE * (1.0 - over)
    delay = nbytes / rate if rate > 0 else MAX_DELAY
    return Pressure(stop=True) if delay > MAX_DELAY else Pressure(delay=delay)


@dataclass
class PressureCounters:
    """How often writes were slowed or stopped (stats()["write_pressure"]): tests count these."""
    slowed: int = 0
    stopped: int = 0
    delay_seconds: float = 0.0
    inline_compactions: int = 0
    early_flushes: int = 0

    def to_dict(self) -> dict:
        return {"slowed_writes": self.slowed, "stopped_writes": self.stopped,
                "delay_seconds": round(self.delay_seconds, 3),
                "inline_compactions": self.inline_compactions,
                "early_flushes": self.early_flushes}
