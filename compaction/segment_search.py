"""Selecting a trained segment's results from ScaNN's candidates. ScaNN re-scores its
candidates exactly (its reorder step, over its own float32 copy of the rows), so its distances
are used as they are; the segment keeps no second copy of the rows in memory. Brute-force
segments use ``compaction.exact``.

Conventions: rows are int64 segment row numbers, -1 means "no row"; distances are float32 in
the lsmvec metric, +inf pairs with -1; each result row is sorted ascending by distance.
Queries under "cosine" must be unit vectors (the engine normalises them once per query).
"""
from __future__ import annotations

import numpy as np


__all__ = ["empty_result", "pad_result", "select_live"]


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


def select_live(rows: np.ndarray, distances: np.ndarray, k: int,
                exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each query's candidates (q, c), already sorted best first with exact
    distances (ScaNN's reorder), dropping -1 padding and rows marked True in ``exclude``.
    Returns (rows int64 (q, k), distances float32 (q, k)), -1 / +inf padded."""
    if rows.shape[1] == 0:
        return empty_result(rows.shape[0], k)
    missing = rows < 0
    if exclude is not None:
        missing |= exclude[np.where(missing, 0, rows)]
    if missing.any():
        first = np.argsort(missing, axis=1, kind="stable")[:, :k]
        rows = np.take_along_axis(rows, first, axis=1)
        distances = np.take_along_axis(distances, first, axis=1)
        gone = np.take_along_axis(missing, first, axis=1)
        rows = np.where(gone, -1, rows)
        distances = np.where(gone, np.inf, distances).astype(np.float32)
    return pad_result(rows[:, :k].astype(np.int64), distances[:, :k].astype(np.float32), k)
