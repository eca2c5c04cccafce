"""Row gathers in bounded blocks.

NumPy's fancy indexing (``vectors[rows]``) copies while holding the GIL: 100k x 384 rows is
tens of milliseconds in which no other thread (an event loop, a query) can run. Copying in
blocks of a few MiB bounds each hold at about a millisecond.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

__all__ = ["BLOCK_BYTES", "gather_rows", "concat_rows"]

BLOCK_BYTES = 4 << 20


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
