"""The read path: search every source of a snapshot, merge, and hydrate the results.

Sources never disagree about an id: a newer version or a tombstone kills the older row in
place (see IndexCore._shadow), so the merge is a plain k-way selection by distance.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from lsmvec.errors import CorruptionError, InvalidArgumentError
from lsmvec.db.memtable import TOMBSTONE

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


def _plain_hits(ids: list[str], rows: np.ndarray, dists: np.ndarray, with_distance: bool
                ) -> list[list[dict[str, Any]]]:
    """The common case -- one source, ids and distances only -- without per-hit calls."""
    out = []
    inf = float("inf")
    for row_list, dist_list in zip(rows.tolist(), dists.tolist()):
        if with_distance:
            out.append([{"id": ids[r], "distance": d} for r, d in zip(row_list, dist_list)
                        if r >= 0 and d != inf])
        else:
            out.append([{"id": ids[r]} for r, d in zip(row_list, dist_list) if r >= 0 and d != inf])
    return out


def run_query(sources: list, queries: np.ndarray, k: int, *, flt=None, n_probes: int | None = None,
              include: tuple[str, ...] = ("distance",)) -> list[list[dict[str, Any]]]:
    """Top-k over every source of one snapshot; each source offers search() and hit()."""
    found = [(source, source.search(queries, k, flt=flt, n_probes=n_probes)) for source in sources]
    found = [(source, part) for source, part in found if part[0].shape[1]]
    if not found:
        return [[] for _ in range(len(queries))]
    sources = [source for source, _ in found]
    if len(found) == 1:  # one source: already sorted, nothing to merge
        rows, dists = found[0][1]
        if include == ("distance",) or not include:
            return _plain_hits(sources[0].ids, rows, dists, bool(include))
        src = np.zeros(rows.shape, np.int64)
    else:
        src, rows, dists = merge_topk([part for _, part in found], k)
    out: list[list[dict[str, Any]]] = []
    finite = np.isfinite(dists) & (rows >= 0)
    for qi in range(len(queries)):
        hits = []
        for j in np.flatnonzero(finite[qi]):
            hits.append(sources[src[qi, j]].hit(int(rows[qi, j]), float(dists[qi, j]), include))
        out.append(hits)
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
        ids = source.ids
        for row in source.live_rows():
            item_id = ids[row]
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
