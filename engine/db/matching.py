"""Which live items match a filter: get(filters=) and delete(filters=).

Memtable rows are checked against their metadata in memory. Segment rows come from the
segment's term index (a bitmap: no item is decrypted) -- through the cached plan mask when the
filter has an exact plan, else through filter_masks.py, which decides every operator there is
and names the candidates of any part it cannot decide; only those candidates' store bodies
are opened (through the item cache) and checked against their metadata.

Callers hold the index's read lock (get) or are the write queue's leader at the record's LSN
position (delete: see IndexCore._filter_delete_record), so the sources do not change under us.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from lsmvec.db.filter_masks import segment_mask
from lsmvec.db.segments import SegmentSource, segment_items
from lsmvec.disk import records


def _segment_verdicts(source: SegmentSource, rows: np.ndarray, flt, store: Any, cache: Any
                      ) -> np.ndarray:
    """Whether each of `rows` (live rows of `source`) matches `flt`: from the term index
    (filter_masks.py), reading only the candidates of a part it cannot decide."""
    if flt.is_match_all or not len(rows):
        return np.ones(len(rows), bool)
    if flt.plan is not None:
        mask = source.terms.mask(flt.plan)
        if mask is not None:
            return mask[rows]
    mask, exact = segment_mask(flt.spec, source.terms)
    verdicts = mask[rows]
    if exact:
        return verdicts
    at = np.flatnonzero(verdicts)
    items = segment_items(store, cache, [(source, int(r)) for r in rows[at]])
    verdicts[at] = flt.match_many([item[2] for item in items])
    return verdicts


def matching_rows(tables: Sequence[Any], segments: Sequence[SegmentSource], flt, store: Any,
                  cache: Any) -> list[tuple[Any, np.ndarray]]:
    """(source, its live rows matching `flt`) of every source with a match, each id once over
    them all: memtables newest first, then segments (a shadowed or deleted row is already
    dead in its source)."""
    out: list[tuple[Any, np.ndarray]] = []
    for table in tables:
        if not table.row_of:
            continue
        rows = table.live_rows()
        if len(rows) and not flt.is_match_all:
            rows = rows[flt.match_many([table.metadata[r] for r in rows.tolist()])]
        if len(rows):
            out.append((table, rows))
    for source in segments:
        rows = np.flatnonzero(~source.dead)
        rows = rows[_segment_verdicts(source, rows, flt, store, cache)]
        if len(rows):
            out.append((source, rows))
    return out


def matching_live(tables: Sequence[Any], segments: Sequence[SegmentSource], flt, store: Any,
                  cache: Any) -> list[tuple[Any, int]]:
    """(source, row) of every live item matching `flt`, each id once (matching_rows)."""
    return [(source, row) for source, rows in matching_rows(tables, segments, flt, store, cache)
            for row in rows.tolist()]


def filter_found(found: list[tuple[Any, int]], flt, store: Any, cache: Any
                 ) -> list[tuple[Any, int]]:
    """Those of `found` (live (source, row) places, e.g. of ids looked up) matching `flt`:
    only these rows are checked, not the whole index."""
    if flt.is_match_all:
        return list(found)
    keep = np.zeros(len(found), bool)
    by_source: dict[int, tuple[Any, list[int]]] = {}
    for i, (source, _row) in enumerate(found):
        by_source.setdefault(id(source), (source, []))[1].append(i)
    for source, at in by_source.values():
        rows = np.array([found[i][1] for i in at], np.int64)
        if type(source) is SegmentSource:
            verdicts = _segment_verdicts(source, rows, flt, store, cache)
        else:
            verdicts = flt.match_many([source.metadata[r] for r in rows.tolist()])
        keep[at] = verdicts
    return [place for place, ok in zip(found, keep.tolist()) if ok]


class FilterDelete:
    """A delete(filters=[, ids]) request: the ids are decided when its record is written."""

    __slots__ = ("flt", "ids")

    def __init__(self, flt, ids: list[str] | None):
        self.flt, self.ids = flt, ids


def filter_delete_record(core: Any, request: FilterDelete) -> tuple:
    """The log record (kind, payload, apply, prepare, resolve) of a delete by filter.

    Concurrency: the ids are decided at the record's LSN position, by the write queue's leader
    (write.py, `resolve`): every write logged before it is applied and counted, none after it.
    An upsert acknowledged before delete(filters=) was called is seen; one racing with it is
    ordered by the log -- logged first, it is judged (and deleted if it matches); logged after,
    it survives. The record names those ids, so replay deletes exactly what the call deleted,
    and the one record makes it all or nothing across a crash. Matching nothing still writes
    one (empty) record."""
    chosen: list[str] = []

    def resolve() -> bytes:
        with core.read_lock():  # flushes and merges swap sources under the write lock
            tables = [core.memtable, *reversed(core.frozen)]
            if request.ids is None:
                places = matching_live(tables, core.segments, request.flt, core.store,
                                       core.item_cache)
            else:
                found = [core.lookup(item_id) for item_id in request.ids]
                places = filter_found([at for at in found if at is not None], request.flt,
                                      core.store, core.item_cache)
            chosen[:] = dict.fromkeys(source.ids[row] for source, row in places)
        return records.encode_delete(chosen)

    return (records.KIND_DELETE, b"", lambda lsn: core.apply_delete(lsn, chosen), None, resolve)
