"""iter_items: every live item once, in ascending id order, a batch at a time, resumable.

Each step finds the next ids after the cursor's last one under the read lock, reads their items
and releases the lock before the batch is handed out: an id live from the first step to the
last is yielded exactly once (the steps cover disjoint, ascending id ranges), a deleted one
vanishes, and one inserted meanwhile appears iff it sorts after the step that passed its place.
Order is Python's str order, which is the UTF-8 byte order the segment scan compares in.

Work per step is O(batch x sources), never O(index): a memtable contributes its smallest ids
after the cursor (a bounded table: memtable_bytes), a segment binary-searches the cursor in a
sort permutation of its ids, built once per segment (segments are immutable) and dropped with
it. Liveness is what queries see: a row not marked dead in its source (a newer version or a
tombstone kills older rows in place: IndexCore._shadow), so each live id is in one source.

The cursor is the last id a batch covered, sealed (AES-GCM, the index's "cursor" subkey, bound
to the index uuid) and urlsafe-base64 encoded: opaque to the caller, refused when damaged or
issued by another index.
"""
from __future__ import annotations

import base64
import binascii
import bisect
import heapq
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from lsmvec.db.reads import hits_of
from lsmvec.db.matching import filter_found
from lsmvec.db.row_ids import RowIds
from lsmvec.db.segments import SegmentSource
from lsmvec.errors import CorruptionError, InvalidArgumentError, InvalidCursorError

__all__ = ["ItemBatch", "MAX_BATCH_SIZE", "check_batch_size", "id_order", "iterate",
           "open_cursor", "seal_cursor"]

# A batch is built in memory (its vectors, contents and metadata) under one read lock: 100k
# items of 384 floats are ~150 MB of Python lists, past which a caller wants smaller batches.
MAX_BATCH_SIZE = 100_000


@dataclass(frozen=True)
class ItemBatch:
    """One step of iter_items: `items` (dicts like get's, ascending id) and the `cursor` that
    resumes after them (iter_items(cursor=...)), an opaque str safe in JSON and URLs."""

    items: list[dict[str, Any]]
    cursor: str


def check_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise InvalidArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise InvalidArgumentError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}, "
                                   f"got {batch_size!r}")
    return int(batch_size)


# -- the cursor ----------------------------------------------------------------------------

_CURSOR_VERSION = b"\x01"


def _cursor_aad(cipher: Any) -> bytes:
    return b"|".join((cipher.uuid, b"iter-cursor", _CURSOR_VERSION))


def seal_cursor(cipher: Any, last_id: str) -> str:
    sealed = cipher.cursor.seal(_CURSOR_VERSION + last_id.encode("utf-8"), _cursor_aad(cipher))
    return base64.urlsafe_b64encode(sealed).decode("ascii").rstrip("=")


def open_cursor(cipher: Any, cursor: object) -> str:
    """The last id of a cursor seal_cursor made for this index; InvalidCursorError otherwise."""
    if not isinstance(cursor, str):
        raise InvalidCursorError(f"cursor must be a str from a batch of iter_items, got "
                                 f"{type(cursor).__name__}")
    try:
        sealed = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise InvalidCursorError("cursor is not one iter_items issued (not urlsafe "
                                 "base64)") from None
    try:
        plain = cipher.cursor.open(sealed, _cursor_aad(cipher))
    except CorruptionError:
        raise InvalidCursorError("cursor was not issued by this index (damaged, altered, or "
                                 "from another index)") from None
    if plain[:1] != _CURSOR_VERSION:  # pragma: no cover - only this version was ever sealed
        raise InvalidCursorError("cursor of an unknown version")
    return plain[1:].decode("utf-8")


# -- the sort permutation of a segment's ids ------------------------------------------------

def _chunk_keys(data: np.ndarray, starts: np.ndarray, lens: np.ndarray, at: int) -> np.ndarray:
    """Bytes at..at+7 of each id as a big-endian uint64, zero past its end."""
    key = np.zeros(len(starts), np.uint64)
    last = len(data) - 1
    for j in range(8):
        past = lens <= at + j
        if past.all():
            break
        where = starts + (at + j)
        np.minimum(where, last, out=where)
        byte = data[where]
        byte[past] = 0
        wide = byte.astype(np.uint64)
        wide <<= np.uint64(8 * (7 - j))
        key |= wide
    return key


def id_order(ids: RowIds) -> np.ndarray:
    """Rows of `ids` in ascending id order (int32). UTF-8 byte order is code point order, so
    this is str order. An MSD radix sort on 8-byte big-endian chunks in NumPy: one sort of
    every row on its first 8 bytes, then each later chunk only for rows still tied, and the
    length last ("a" before "a\\0", which pads the same). Measured at 1M ids (one process,
    2 shared cores): "doc-<n>" 0.5-0.9 s, a common 22-byte prefix ("https://example.com/d/<n>")
    0.7-1.2 s, ~85 MB transient (tracemalloc peak); decoding the ids and sorted() takes ~1.2 s and
    ~115 MB. Kept: 4 bytes a row (4 MB per 1M rows, beside ~14 MB of packed ids)."""
    n = len(ids)
    if n == 0:
        return np.zeros(0, np.int32)
    data, ends = ids.packed()  # read without decoding a str per row
    starts, lens = ends[:-1], np.diff(ends).astype(np.int32)  # an id is <= 1024 bytes
    key = _chunk_keys(data, starts, lens, 0)
    order = np.argsort(key, kind="stable").astype(np.int32)
    key = key[order]
    tied = np.arange(n, dtype=np.int32)  # positions of `order` whose group is undecided
    group = np.zeros(n, np.int32)  # group of each tied position (ascending along positions)
    at, longest = 0, int(lens.max())
    while True:
        new = np.empty(len(key), bool)
        new[0] = True
        np.not_equal(key[1:], key[:-1], out=new[1:])
        new[1:] |= group[1:] != group[:-1]
        alone = new.copy()
        alone[:-1] &= new[1:]  # a group of one (its successor starts another): decided
        if alone.all():
            break
        keep = ~alone
        group = np.cumsum(new, dtype=np.int32)[keep]
        tied = tied[keep]
        rows = order[tied]
        at += 8
        key = (_chunk_keys(data, starts[rows], lens[rows], at) if at < longest
               else lens[rows].astype(np.uint64))
        sub = np.lexsort((key, group))  # within each group (contiguous positions) only
        order[tied] = rows[sub]
        key = key[sub]
        if at >= longest + 8:  # pragma: no cover - the length pass decides unique ids
            break
    return order


# Keyed by the Segment, not the SegmentSource: a reader's next view (db/reader.py) wraps the
# same immutable Segment and ids in a new source, and must not sort them again (1 s at 1M ids).
_orders: "weakref.WeakKeyDictionary[Any, np.ndarray]" = weakref.WeakKeyDictionary()
_orders_lock = threading.Lock()


def _segment_order(source: SegmentSource) -> np.ndarray | None:
    with _orders_lock:
        return _orders.get(source.segment)


def _build_order(source: SegmentSource) -> None:
    """Sort `source`'s ids (no lock held: its RowIds are immutable memory; racing builders
    build the same thing)."""
    order = id_order(source.ids)
    with _orders_lock:
        _orders.setdefault(source.segment, order)


# -- one step ------------------------------------------------------------------------------

def _table_after(table: Any, after: str | None, limit: int, sorted_ids: dict
                 ) -> list[tuple[str, Any, int]]:
    """The `limit` smallest live ids of a memtable after `after`: (id, table, row). A frozen
    table's ids are sorted once per iteration (its row_of no longer changes); the live one's
    are selected each step (heapq: O(rows) for a table bounded by memtable_bytes)."""
    row_of, dead = table.row_of, table.dead_flags()
    if not row_of:
        return []
    if table.frozen:
        ids = sorted_ids.get(id(table))
        if ids is None or ids[0] is not table:
            ids = sorted_ids[id(table)] = (table, sorted(row_of))
        ids = ids[1]
        out = []
        for pos in range(0 if after is None else bisect.bisect_right(ids, after), len(ids)):
            item_id = ids[pos]
            row = row_of[item_id]
            if not dead[row]:  # shadowed by a newer memtable's write
                out.append((item_id, table, row))
                if len(out) == limit:
                    break
        return out
    # (the live table's row_of holds only live rows; checked anyway: a row left out here that
    # is live would be passed over by the cursor)
    wanted = (i for i in row_of if (after is None or i > after) and not dead[row_of[i]])
    return [(item_id, table, row_of[item_id]) for item_id in heapq.nsmallest(limit, wanted)]


def _segment_after(source: SegmentSource, order: np.ndarray, after: bytes | None, limit: int,
                   mask: np.ndarray | None = None) -> list[tuple[str, Any, int]]:
    """The `limit` smallest live ids of a segment after `after` (UTF-8) -- with `mask`, of
    rows it marks only: a binary search in its sort permutation, then live rows in order
    (dead and unmarked ones skipped a chunk at a time)."""
    ids = source.ids
    pos = 0
    if after is not None:
        id_bytes = ids.id_bytes
        pos = bisect.bisect_right(range(len(order)), after, key=lambda p: id_bytes(order[p]))
    rows: list[int] = []
    step, dead = limit, source.dead
    while pos < len(order) and len(rows) < limit:
        chunk = order[pos:pos + step]
        pos += len(chunk)
        keep = ~dead[chunk] if mask is None else mask[chunk] & ~dead[chunk]
        rows.extend(chunk[keep][:limit - len(rows)].tolist())
        step = min(step * 2, 1 << 16)  # a mostly dead (or unmarked) stretch: larger chunks
    return [(item_id, source, row) for item_id, row in zip(ids.take(rows), rows)]


def next_places(tables: list, segments: list, after: str | None, limit: int, sorted_ids: dict,
                flt: Any = None) -> list[tuple[str, Any, int]]:
    """The `limit` smallest candidate ids after `after` over every source, ascending, with
    their (source, row): live ids -- of a segment that decides `flt`'s exact plan from its term
    index, only matching ones (a selective filter then skips whole stretches in NumPy; the
    caller still filters the rest). Each source offers its own `limit` smallest, so no
    candidate below the last one kept is missed. Caller holds the read lock and has built
    every segment's order."""
    after_b = None if after is None else after.encode("utf-8")
    plan = None if flt is None or flt.is_match_all else flt.plan
    found: list[tuple[str, Any, int]] = []
    for table in tables:
        found.extend(_table_after(table, after, limit, sorted_ids))
    for source in segments:
        mask = None if plan is None else source.terms.mask(plan)  # cached per plan
        found.extend(_segment_after(source, _orders[source.segment], after_b, limit, mask))
    found.sort(key=lambda place: place[0])
    found = found[:limit]
    # Each live id lives in one source, and every id found sorts after `after`: checked (O(batch)),
    # since either slip would yield an id twice -- or, as a cursor that stops moving, forever.
    ids = [place[0] for place in found]
    if ids and ((after is not None and ids[0] <= after) or any(map(str.__eq__, ids, ids[1:]))):
        raise CorruptionError("iter_items: an id is live in two sources, or the id scan went "
                              "backwards (run verify)")
    return found


def iterate(core: Any, check: Callable[[], Any], batch_size: int, include: tuple[str, ...],
            flt: Any, after: str | None) -> Iterator[ItemBatch]:
    """The batches of iter_items after id `after` (None: from the start). `check` raises when
    the handle was closed. No lock is held between batches (nor across a yield)."""
    sorted_ids: dict[int, tuple[Any, list[str]]] = {}
    while True:
        items: list[dict[str, Any]] = []
        while True:  # rounds of up to batch_size ids, until the batch fills or the ids end
            check()
            need = batch_size - len(items)
            with core.read_lock():
                missing = [s for s in core.segments if _segment_order(s) is None]
                if not missing:
                    tables = [core.memtable, *reversed(core.frozen)]
                    places = next_places(tables, core.segments, after, batch_size, sorted_ids,
                                         flt)
                    ended = len(places) < batch_size
                    live = {id(t) for t in core.frozen}
                    found = [(source, row) for _id, source, row in places]
                    # No item cache (None): it is an LRU for queries' hot items, which a scan
                    # of the whole index would evict; the batch is one store read instead.
                    if flt is not None and not flt.is_match_all:
                        found = filter_found(found, flt, core.store, None)
                    if len(found) > need:
                        found, ended = found[:need], False
                        after = found[-1][0].ids[found[-1][1]]
                    elif places:
                        after = places[-1][0]
                    items.extend(hits_of([(s, r, 0.0) for s, r in found], include, core.store,
                                         None))
            if missing:  # sort new segments' ids outside the lock, then look again
                for source in missing:
                    _build_order(source)
                continue
            for key in [k for k in sorted_ids if k not in live]:  # flushed tables: drop
                del sorted_ids[key]
            if ended or len(items) >= batch_size:
                break
        if items:
            yield ItemBatch(items, seal_cursor(core.cipher, after))
        if ended:
            return
