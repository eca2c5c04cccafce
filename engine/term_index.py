"""The secondary index of one segment: (metadata path, value) term -> sorted row numbers.

Built when a segment is written (from the metadata the flush or merge already holds), stored
sealed in LMDB beside the segment's row ids, loaded at open. A selective equality filter then
becomes a row mask without reading, let alone decrypting, a single item.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from .filters import index_terms

Term = tuple[str, bytes]


class TermIndex:
    __slots__ = ("rows", "n", "_masks")

    # Masks of recent plans: a segment is immutable, so a plan's mask never changes; users
    # repeat the same few filters, and a 90%-selective $in would otherwise cost a scatter of
    # most rows on every query.
    _MASK_CACHE = 64

    def __init__(self, rows: dict[Term, np.ndarray], n: int):
        self.rows = rows
        self.n = n
        self._masks: dict[tuple, np.ndarray] = {}

    @classmethod
    def build(cls, metadata: Iterable[dict | None], n: int) -> "TermIndex":
        lists: dict[Term, list[int]] = {}
        for row, meta in enumerate(metadata):
            if meta:
                for term in index_terms(meta):
                    lists.setdefault(term, []).append(row)
        return cls({t: np.asarray(r, np.int32) for t, r in lists.items()}, n)

    def remap(self, mapping: np.ndarray, n: int) -> dict[Term, np.ndarray]:
        """Rows of this index as rows of a merged segment (mapping[old] = new, -1 dropped)."""
        out = {}
        for term, rows in self.rows.items():
            moved = mapping[rows]
            moved = moved[moved >= 0]
            if moved.size:
                out[term] = moved.astype(np.int32)
        return out

    @classmethod
    def merge(cls, parts: list[dict[Term, np.ndarray]], n: int) -> "TermIndex":
        acc: dict[Term, list[np.ndarray]] = {}
        for part in parts:
            for term, rows in part.items():
                acc.setdefault(term, []).append(rows)
        return cls({t: np.sort(np.concatenate(r)) for t, r in acc.items()}, n)

    def mask(self, plan: list[list[Term]]) -> np.ndarray:
        """Rows matching an exact plan: AND over clauses of OR over each clause's terms.
        The array is shared (cached): callers must not modify it."""
        key = tuple(tuple(clause) for clause in plan)
        cached = self._masks.get(key)
        if cached is None:
            cached = self._compute(plan)
            cached.setflags(write=False)
            if len(self._masks) >= self._MASK_CACHE:
                self._masks.pop(next(iter(self._masks)))
            self._masks[key] = cached
        return cached

    def _compute(self, plan: list[list[Term]]) -> np.ndarray:
        result = None
        for clause in plan:
            hit = np.zeros(self.n, bool)
            for term in clause:
                rows = self.rows.get(term)
                if rows is not None:
                    hit[rows] = True
            result = hit if result is None else (result & hit)
            if not result.any():
                break
        return result if result is not None else np.ones(self.n, bool)

    def pack(self) -> list:
        return [[path, enc, rows.astype("<i4").tobytes()] for (path, enc), rows in self.rows.items()]

    @classmethod
    def unpack(cls, raw: list, n: int) -> "TermIndex":
        rows = {}
        for path, enc, data in raw:
            arr = np.frombuffer(data, "<i4")
            if arr.size and (arr.min() < 0 or arr.max() >= n):
                raise ValueError("term rows out of range")
            rows[(path, enc)] = arr
        return cls(rows, n)
