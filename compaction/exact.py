"""Exact k-nearest search over a float32 matrix: one matrix product, argpartition, re-scoring.

Shared by the memtable and by brute-force segments, so both return distances that agree with a
plain NumPy computation: the matrix product picks candidates (fast, but its expansion
|q|^2 - 2 q.x + |x|^2 loses digits), then the candidates are re-scored with the direct formula.
"""
from __future__ import annotations

import numpy as np

# Queries x rows scored per block: bounds the temporary distance matrix to ~64 MiB.
_BLOCK_CELLS = 16 << 20
# Extra candidates re-scored beyond k, so expansion rounding cannot push a true neighbour out.
_RESCORE_MARGIN = 16


def direct_distances(queries: np.ndarray, rows: np.ndarray, metric: str) -> np.ndarray:
    """Distances between queries[i] and rows[i, j] (rows: (q, m, d)) by the direct formula."""
    if metric == "cosine":
        # Clamped: rounding can push 1 - cos a hair below zero for a vector and itself.
        return np.maximum(1.0 - np.einsum("qd,qmd->qm", queries, rows), 0.0).astype(np.float32)
    diff = rows - queries[:, None, :]
    sq = np.einsum("qmd,qmd->qm", diff, diff)
    return (np.sqrt(sq) if metric == "euclidean" else sq).astype(np.float32)


def search_exact(vectors: np.ndarray, queries: np.ndarray, k: int, metric: str, *,
                 sqnorms: np.ndarray | None = None, dead: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of `vectors` for each query, ascending distance; dead rows never returned.

    Returns (rows int64 (q, k'), distances float32 (q, k')), k' = min(k, live rows); callers pad.
    Cosine assumes unit-normalised rows and queries (the engine normalises on the way in).
    """
    n = vectors.shape[0]
    nq = queries.shape[0]
    live = n - (int(np.count_nonzero(dead)) if dead is not None else 0)
    kk = min(k, live)
    if kk <= 0 or nq == 0:
        return np.zeros((nq, 0), np.int64), np.zeros((nq, 0), np.float32)
    cand = min(n, kk + _RESCORE_MARGIN)
    out_rows = np.empty((nq, kk), np.int64)
    out_dist = np.empty((nq, kk), np.float32)
    if metric != "cosine" and sqnorms is None:
        sqnorms = np.einsum("nd,nd->n", vectors, vectors)
    step = max(1, _BLOCK_CELLS // max(n, 1))
    for start in range(0, nq, step):
        q = queries[start:start + step]
        scores = q @ vectors.T  # (b, n)
        if metric == "cosine":
            np.negative(scores, out=scores)
        else:
            scores *= -2.0
            scores += sqnorms[None, :]
        if dead is not None:
            scores[:, dead] = np.inf
        if cand < n:
            part = np.argpartition(scores, cand - 1, axis=1)[:, :cand]
        else:
            part = np.broadcast_to(np.arange(n), (q.shape[0], n))
        exact = direct_distances(q, vectors[part], metric)
        if dead is not None:
            exact[dead[part]] = np.inf
        order = np.argsort(exact, axis=1, kind="stable")[:, :kk]
        out_rows[start:start + step] = np.take_along_axis(part, order, axis=1)
        out_dist[start:start + step] = np.take_along_axis(exact, order, axis=1)
    return out_rows, out_dist
