"""The read path: search every source of a snapshot, merge, and hydrate the results.

Sources never disagree about an id: a newer version or a tombstone kills the older row in
place (see IndexCore._shadow), so the merge is a plain k-way selection by distance.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from lsmvec.errors import CorruptionError, InvalidArgumentError
from lsmvec.db.item_cache import ItemCache, key as cache_key
from lsmvec.db.memtable import TOMBSTONE
from lsmvec.db.segments import SegmentSource, segment_items

INCLUDABLE = ("distance", "metadata", "contents", "vector")


def check_include(include: Sequence[str] | None, allowed: Sequence[str] = INCLUDABLE) -> tuple[str, ...]:
    if include is None:
        return ()
    if isinstance(include, str):
        include = [include]
    out = tuple(include)
    for field in out:
        if field not in allowed:
            raise InvalidArgumentError(f"include: unknown field {field!r} (allowed: {', '.join(allowed)})")
    return out


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k-way merge of per-source (rows (q, k_i), dists (q, k_i)) into (source, row, dist) (q, k').

    Padding rows (< 0, distance inf) sort last and are dropped by the caller."""
    nq = parts[0][0].shape[0]
    dists = np.concatenate([d for _, d in parts], axis=1) if parts else np.zeros((nq, 0), np.float32)
    rows = np.concatenate([r for r, _ in parts], axis=1)
    src = np.concatenate([np.full(r.shape, i, np.int64) for i, (r, _) in enumerate(parts)], axis=1)
    kk = min(k, dists.shape[1])
    if kk < dists.shape[1]:
        part = np.argpartition(dists, kk - 1, axis=1)[:, :kk]
        dists = np.take_along_axis(dists, part, axis=1)
        rows = np.take_along_axis(rows, part, axis=1)
        src = np.take_along_axis(src, part, axis=1)
    order = np.argsort(dists, axis=1, kind="stable")
    return (np.take_along_axis(src, order, axis=1), np.take_along_axis(rows, order, axis=1),
            np.take_along_axis(dists, order, axis=1))


def one_segment(source: SegmentSource, query: np.ndarray, k: int, n_probes: int | None,
                include: tuple[str, ...], store: Any, cache: ItemCache | None
                ) -> list[dict[str, Any]] | None:
    """The hits of one unfiltered query (a checked (d,) vector) when `source` is all there is
    to search -- an index after train() -- by one ScaNN call (Segment.search_one) and two
    lists made into result dicts; None when that call cannot answer alone (run_query does).
    Index.query down to here costs ~20 us of Python around a ~150 us ScaNN search (MiniLM
    60k; a hand-written minimum -- normalise, lock, search, dicts -- costs ~18 us), and the
    metadata of 10 cached hits ~30 us more (one msgpack call builds their objects)."""
    fast = source.segment.search_one(query, k, n_probes, source.dead if source.any_dead else None,
                                     source.n_dead)
    if fast is None:
        return None
    rows, dists = fast
    if include == ("distance",):
        return [{"id": i, "distance": d} for i, d in zip(source.ids.take(rows), dists)]
    if include == ("distance", "metadata"):  # the usual ask with metadata, without field loops
        base = cache_key(source.id, 0)
        items = segment_items(store, cache, [(source, r) for r in rows], [base | r for r in rows])
        return [{"id": item[0], "distance": d, "metadata": item[2] or {}}
                for item, d in zip(items, dists)]
    return hits_of([(source, r, d) for r, d in zip(rows, dists)], include, store, cache)


def locate(sources: list, queries: np.ndarray, k: int, *, flt=None, n_probes: int | None = None
           ) -> list[list[tuple[Any, int, float]]]:
    """Per query, the (source, row, distance) of its top-k over every source of one snapshot,
    best first (memtables offer search(), segments search()); `flt` None matches everything."""
    found = []
    for source in sources:
        part = source.search(queries, k, flt=flt, n_probes=n_probes)
        if part[0].shape[1]:
            found.append((source, part))
    if not found:
        return [[] for _ in range(len(queries))]
    if len(found) == 1:  # one source: already sorted, nothing to merge
        rows, dists = found[0][1]
        src = np.zeros(rows.shape, np.int64)
    else:
        src, rows, dists = merge_topk([part for _, part in found], k)
    sources = [source for source, _ in found]
    keep = np.isfinite(dists) & (rows >= 0)
    return [[(sources[s], r, d) for s, r, d, ok in zip(src_q, rows_q, dists_q, keep_q) if ok]
            for src_q, rows_q, dists_q, keep_q in zip(src.tolist(), rows.tolist(), dists.tolist(),
                                                      keep.tolist())]


def nearest(sources: list, query: np.ndarray, k: int, n_probes: int | None, flt=None
            ) -> list[tuple[Any, int, float]]:
    """locate() of one checked (d,) query; one ScaNN call when a lone segment is all there is
    and nothing filters (one_segment's path)."""
    if flt is None and len(sources) == 1 and type(sources[0]) is SegmentSource:
        source = sources[0]
        fast = source.segment.search_one(query, k, n_probes,
                                         source.dead if source.any_dead else None, source.n_dead)
        if fast is not None:
            return [(source, r, d) for r, d in zip(*fast)]
    return locate(sources, query[None, :], k, flt=flt, n_probes=n_probes)[0]


def run_query(sources: list, queries: np.ndarray, k: int, *, flt=None, n_probes: int | None = None,
              include: tuple[str, ...] = ("distance",), store: Any = None,
              cache: ItemCache | None = None) -> list[list[dict[str, Any]]]:
    """Top-k over every source of one snapshot (locate), as result dicts; metadata / contents
    of segment rows come from `store` through `cache` (hits_of). `flt` None matches
    everything."""
    picked = locate(sources, queries, k, flt=flt, n_probes=n_probes)
    if include == ("distance",) or not include:
        with_distance = bool(include)
        return [[{"id": source.ids[r], "distance": d} if with_distance else {"id": source.ids[r]}
                 for source, r, d in hits] for hits in picked]
    # every query's hits hydrated at once: one store read, one decode, each row read once
    flat = hits_of([hit for hits in picked for hit in hits], include, store, cache)
    out, at = [], 0
    for hits in picked:
        out.append(flat[at:at + len(hits)])
        at += len(hits)
    return out


def hits_of(picked: list[tuple[Any, int, float]], include: tuple[str, ...], store: Any,
            cache: ItemCache | None) -> list[dict[str, Any]]:
    """The result dicts of (source, row, distance) hits, keys in `include` order.

    Segment rows' metadata / contents: their plaintext store bodies (from the cache, the rest
    in one read transaction: segments.segment_items), decoded by one msgpack call into
    objects of this result's own (a caller may change them freely). Memtable rows: hit()."""
    items: list | None = None
    if "metadata" in include or "contents" in include:
        at = [i for i, (source, _r, _d) in enumerate(picked) if type(source) is SegmentSource]
        if len(at) == len(picked):  # every hit a segment row: the usual case
            items = segment_items(store, cache, [(source, row) for source, row, _d in picked])
        elif at:
            items = [None] * len(picked)
            for i, item in zip(at, segment_items(store, cache, [picked[i][:2] for i in at])):
                items[i] = item
    out = []
    for i, (source, row, dist) in enumerate(picked):
        if type(source) is not SegmentSource:
            out.append(source.hit(row, dist, include))
            continue
        hit: dict[str, Any] = {"id": source.ids[row]}
        for field in include:
            if field == "distance":
                hit["distance"] = dist
            elif field == "metadata":
                hit["metadata"] = items[i][2] or {}  # type: ignore[index]
            elif field == "contents":
                hit["contents"] = items[i][1]  # type: ignore[index]
            elif field == "vector":
                hit["vector"] = source.segment.row(row).tolist()
        out.append(hit)
    return out


def live_ids(tables: list, segments: list) -> list[str]:
    """Every live id once: memtables newest first (their tombstones hide older rows), then
    segments (whose shadowed rows are already dead)."""
    seen: set[str] = set()
    out: list[str] = []
    for table in tables:
        for item_id in table.row_of:
            if item_id not in seen:
                seen.add(item_id)
                out.append(item_id)
        seen.update(table.tombstones)
    for source in segments:
        for item_id in source.ids.take(source.live_rows()):
            if item_id not in seen:
                out.append(item_id)
    return out


def find_live(item_id: str, tables: Sequence[Any], segments: Sequence[Any],
              seg_by_id: dict[int, Any], store: Any) -> tuple[Any, int] | None:
    """(source, row) of the live version of `item_id`, or None (deleted or unknown): memtables
    newest first, then the store's id map into the segments."""
    for table in tables:
        row = table.lookup(item_id)
        if row == TOMBSTONE:
            return None
        if row is not None:
            return table, row
    if segments:
        loc = store.location(item_id)
        if loc is not None:
            source = seg_by_id.get(loc[0])
            # the location is stored in the clear: check it before trusting it
            if source is None or loc[1] >= source.n_rows or source.ids[loc[1]] != item_id:
                raise CorruptionError(f"store entry of an item points at segment {loc[0]} "
                                      f"row {loc[1]}, which does not hold it", store.path)
            return source, loc[1]
        for source in segments:  # no entry: make sure no segment row expects one
            source.check_unstored(item_id)
    return None
