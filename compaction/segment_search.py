"""Exact re-scoring of a trained segment's candidates, so that every distance lsmvec returns is
computed by one direct formula (``compaction.exact.direct_distances``) on the stored float32
rows, whichever source found the row. Brute-force segments use ``compaction.exact`` directly.

Conventions: rows are int64 segment row numbers, -1 means "no row"; distances are float32 in
the lsmvec metric, +inf pairs with -1; each result row is sorted ascending by distance.
Queries under "cosine" must be unit vectors (the engine normalises them once per query).
"""
from __future__ import annotations

import numpy as np

from compaction.exact import direct_distances

__all__ = ["empty_result", "pad_result", "rescore_candidates", "rescore_one"]


def empty_result(num_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(-1 rows, +inf distances) of shape (num_queries, k)."""
    return (np.full((num_queries, k), -1, dtype=np.int64),
            np.full((num_queries, k), np.inf, dtype=np.float32))


def pad_result(rows: np.ndarray, distances: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """Widen (q, k') results to (q, k) with -1 / +inf; returned as is when k' == k."""
    count = rows.shape[1]
    if count >= k:
        return rows, distances
    padded_rows, padded_distances = empty_result(rows.shape[0], k)
    padded_rows[:, :count] = rows
    padded_distances[:, :count] = distances
    return padded_rows, padded_distances


_LIVE_MARGIN = 16
"""Live candidates re-scored beyond k when a mask excludes rows: ScaNN's order is already exact
after its reorder, so a small margin only guards float rounding at the boundary."""


def rescore_candidates(vectors: np.ndarray, metric: str, queries: np.ndarray,
                       candidates: np.ndarray, k: int,
                       exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each query's candidate rows (q, c) by exact distance.

    Candidates equal to -1 and rows marked True in ``exclude`` are dropped; missing places are
    padded with -1 / +inf. Returns (rows int64 (q, k), distances float32 (q, k)).
    """
    num_queries, count = candidates.shape
    if count == 0:
        return empty_result(num_queries, k)
    missing = candidates < 0
    safe = np.where(missing, 0, candidates) if missing.any() else candidates
    if exclude is not None:
        missing |= exclude[safe]
        if count > k + _LIVE_MARGIN:
            # ScaNN returns candidates best first (exactly reordered): keep the first live
            # ones, so excluded rows' vectors are never gathered.
            first = np.argsort(missing, axis=1, kind="stable")[:, :k + _LIVE_MARGIN]
            candidates = np.take_along_axis(candidates, first, axis=1)
            missing = np.take_along_axis(missing, first, axis=1)
            safe = np.where(missing, 0, candidates)
            count = candidates.shape[1]
    distances = direct_distances(queries, vectors[safe], metric)
    has_missing = missing.any()
    if has_missing:
        distances[missing] = np.inf
    if count > k:
        keep = np.argpartition(distances, k - 1, axis=1)[:, :k]
        distances = np.take_along_axis(distances, keep, axis=1)
        candidates = np.take_along_axis(candidates, keep, axis=1)
    order = np.argsort(distances, axis=1, kind="stable")
    rows = np.take_along_axis(candidates, order, axis=1).astype(np.int64, copy=False)
    distances = np.take_along_axis(distances, order, axis=1)
    if has_missing:
        rows = np.where(np.isinf(distances), -1, rows)
    return pad_result(rows, distances, k)


def rescore_one(vectors: np.ndarray, metric: str, query: np.ndarray,
                found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``rescore_candidates`` for one query whose candidates are all real rows and all wanted
    (ScaNN returned exactly k): the same formula with a handful of numpy calls, since this
    runs once per single query (~6 us)."""
    distances = direct_distances(query[None, :], vectors[found][None, :, :], metric)[0]
    order = distances.argsort(kind="stable")
    return (found.take(order).astype(np.int64).reshape(1, -1),
            distances.take(order).reshape(1, -1))
