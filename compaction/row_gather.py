"""Row gathers in bounded blocks.

NumPy's fancy indexing (``vectors[rows]``) copies while holding the GIL: 100k x 384 rows is
tens of milliseconds in which no other thread (an event loop, a query) can run. Copying in
blocks of a few MiB bounds each hold at about a millisecond.

``fresh_rows`` is an array in plain pages, for rows written a little at a time (a memtable's):
NumPy advises transparent huge pages for its big arrays, and here a first touch of 512 MB so
advised took 1.4-1.6 s against 0.3 s in plain pages (three each, one process). A merge's
gathered rows keep NumPy's advice: training reads them at random, and 1M x 128 trains with
them in huge pages were no slower overall (median 33.9 s against 38.9 s, three each, noisy).
"""
from __future__ import annotations

import mmap
from typing import Iterable

import numpy as np

__all__ = ["BLOCK_BYTES", "gather_rows", "concat_rows", "fresh_rows"]

BLOCK_BYTES = 4 << 20
_PLAIN_PAGES_FROM = 4 << 20
"""Arrays from this size up get a mapping of their own (NumPy's huge-page advice starts at 4 MiB)."""


def fresh_rows(n: int, dim: int, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """An uninitialised, writable (n, dim) array; from _PLAIN_PAGES_FROM bytes up backed by an
    anonymous mapping without huge-page advice (freed with the array)."""
    dtype = np.dtype(dtype)
    nbytes = n * dim * dtype.itemsize
    if nbytes < _PLAIN_PAGES_FROM:
        return np.empty((n, dim), dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype).reshape(n, dim)


def _block_rows(dim: int, itemsize: int) -> int:
    return max(1, BLOCK_BYTES // max(1, dim * itemsize))


def gather_rows(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``vectors[rows]`` for a 2-D array, as a fresh C-contiguous array."""
    return concat_rows([(vectors, rows)], vectors.shape[1], vectors.dtype)


def concat_rows(parts: Iterable[tuple[np.ndarray, np.ndarray]], dim: int,
                dtype: np.dtype | type = np.float32) -> np.ndarray:
    """``np.concatenate([v[r] for v, r in parts])`` without one long GIL hold."""
    parts = [(vectors, np.asarray(rows, np.int64)) for vectors, rows in parts]
    for vectors, rows in parts:
        if rows.size and (rows.min() < 0 or rows.max() >= len(vectors)):
            raise IndexError(f"row out of range for {len(vectors)} rows")
    out = np.empty((sum(len(rows) for _v, rows in parts), dim), dtype)
    step = _block_rows(dim, out.itemsize)
    pos = 0
    for vectors, rows in parts:
        for start in range(0, len(rows), step):
            block = rows[start:start + step]
            np.take(vectors, block, axis=0, out=out[pos:pos + len(block)], mode="clip")
            pos += len(block)
    return out
