"""The secondary index of one segment: (metadata path, value) term -> sorted row numbers, and
per path, the numeric values sorted with their rows (for $gt / $gte / $lt / $lte).

Built when a segment is written (from the metadata the flush or merge already holds), stored
sealed in LMDB beside the segment's row ids, loaded at open. A planned filter then becomes a
row mask without reading, let alone decrypting, a single item.
"""
from __future__ import annotations

from array import array
from itertools import accumulate
from operator import itemgetter
from typing import Iterable, Iterator

import numpy as np

from lsmvec.request.terms import MAX_EXACT_INT, index_terms

Term = tuple[str, bytes]
_SIDES = {"$gt": "right", "$gte": "left", "$lt": "left", "$lte": "right"}


def _numbers(meta: dict, prefix: str, out: dict[str, list], rows_out: dict[str, list], row: int,
             unexact: set[str]) -> None:
    """Numeric leaves and numeric list elements, by dotted path (the filter's addressing)."""
    for key, value in meta.items():
        if not isinstance(key, str) or not key or "." in key or key.startswith("$"):
            continue
        path = prefix + key
        if isinstance(value, dict):
            _numbers(value, path + ".", out, rows_out, row, unexact)
            continue
        for element in (value if isinstance(value, list) else (value,)):
            if isinstance(element, bool) or not isinstance(element, (int, float)):
                continue
            if isinstance(element, int) and abs(element) > MAX_EXACT_INT:
                unexact.add(path)
                continue
            out.setdefault(path, []).append(float(element))
            rows_out.setdefault(path, []).append(row)


def _key(path: str, encoded: bytes) -> bytes:
    """A term as one sortable byte string: the path's length first keeps it injective (a path
    may hold any character, NUL too)."""
    raw = path.encode("utf-8")
    return len(raw).to_bytes(4, "big") + raw + encoded


class Postings:
    """Term -> its sorted int32 rows, immutable and packed: the terms' keys in one sorted byte
    buffer with offsets, every row list in one int32 array with offsets. A dict of one numpy
    array per term cost ~400 bytes a term (60k items with a unique title and number each: 50 MB
    resident for a 92 MB trained MiniLM index); packed, a term costs its key bytes + 20.
    A lookup is a binary search (~17 probes at 100k terms, a few us); ``get`` returns a view
    of the shared array, which callers must not modify."""

    __slots__ = ("_keys", "_key_ends", "_rows", "_row_ends")

    def __init__(self, entries: Iterable[tuple[Term, np.ndarray | bytes]] = ()) -> None:
        pairs = sorted(((_key(path, encoded), rows) for (path, encoded), rows in entries),
                       key=itemgetter(0))
        self._keys = b"".join(key for key, _ in pairs)
        self._key_ends = array("Q", [0])
        self._key_ends.extend(accumulate(len(key) for key, _ in pairs))
        lists = [np.frombuffer(rows, "<i4") if isinstance(rows, (bytes, bytearray))
                 else np.asarray(rows, np.int32) for _, rows in pairs]
        self._rows = np.concatenate(lists) if lists else np.empty(0, np.int32)
        self._row_ends = array("Q", [0])
        self._row_ends.extend(accumulate(len(rows) for rows in lists))

    def __len__(self) -> int:
        return len(self._key_ends) - 1

    def get(self, term: Term) -> np.ndarray | None:
        wanted = _key(*term)
        keys, ends = self._keys, self._key_ends
        lo, hi = 0, len(ends) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if keys[ends[mid]:ends[mid + 1]] < wanted:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(ends) - 1 and keys[ends[lo]:ends[lo + 1]] == wanted:
            return self._rows[self._row_ends[lo]:self._row_ends[lo + 1]]
        return None

    def items(self) -> Iterator[tuple[Term, np.ndarray]]:
        keys, ends, rows, row_ends = self._keys, self._key_ends, self._rows, self._row_ends
        for i in range(len(ends) - 1):
            key = keys[ends[i]:ends[i + 1]]
            size = int.from_bytes(key[:4], "big")
            yield ((key[4:4 + size].decode("utf-8"), key[4 + size:]),
                   rows[row_ends[i]:row_ends[i + 1]])

    def check_rows(self, n: int) -> None:
        """Raises ValueError when a row is outside 0 .. n - 1 (a damaged or foreign index)."""
        if self._rows.size and (int(self._rows.min()) < 0 or int(self._rows.max()) >= n):
            raise ValueError("term rows out of range")

    @property
    def nbytes(self) -> int:
        return (len(self._keys) + self._rows.nbytes
                + 8 * (len(self._key_ends) + len(self._row_ends)))


class TermIndex:
    __slots__ = ("rows", "ranges", "unexact", "n", "_masks")

    # Masks of recent plans: a segment is immutable, so a plan's mask never changes; users
    # repeat the same few filters, and a 90%-selective $in would otherwise cost a scatter of
    # most rows on every query.
    _MASK_CACHE = 64

    def __init__(self, rows: Postings | dict[Term, np.ndarray], n: int,
                 ranges: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                 unexact: set[str] | None = None):
        self.rows = rows if isinstance(rows, Postings) else Postings(rows.items())
        self.ranges = ranges or {}
        self.unexact = unexact or set()
        self.n = n
        self._masks: dict[tuple, np.ndarray | None] = {}

    @classmethod
    def build(cls, metadata: Iterable[dict | None], n: int) -> "TermIndex":
        lists: dict[Term, list[int]] = {}
        values: dict[str, list] = {}
        value_rows: dict[str, list] = {}
        unexact: set[str] = set()
        for row, meta in enumerate(metadata):
            if meta:
                for term in index_terms(meta):
                    lists.setdefault(term, []).append(row)
                _numbers(meta, "", values, value_rows, row, unexact)
        return cls(Postings(lists.items()), n,
                   {p: _sorted(np.asarray(values[p]), np.asarray(value_rows[p], np.int32))
                    for p in values}, unexact)

    def remap(self, mapping: np.ndarray, n: int) -> "TermIndex":
        """This index as rows of a merged segment (mapping[old] = new, -1 dropped)."""
        rows = []
        for term, old in self.rows.items():
            moved = mapping[old]
            moved = moved[moved >= 0]
            if moved.size:
                rows.append((term, moved.astype(np.int32)))
        ranges = {}
        for path, (vals, old) in self.ranges.items():
            moved = mapping[old]
            keep = moved >= 0
            if keep.any():
                ranges[path] = (vals[keep], moved[keep].astype(np.int32))
        return TermIndex(Postings(rows), n, ranges, set(self.unexact))

    @classmethod
    def merge(cls, parts: list["TermIndex"], n: int) -> "TermIndex":
        acc: dict[Term, list[np.ndarray]] = {}
        vals: dict[str, list] = {}
        rws: dict[str, list] = {}
        unexact: set[str] = set()
        for part in parts:
            for term, rows in part.rows.items():
                acc.setdefault(term, []).append(rows)
            for path, (v, r) in part.ranges.items():
                vals.setdefault(path, []).append(v)
                rws.setdefault(path, []).append(r)
            unexact |= part.unexact
        return cls(Postings((t, np.sort(np.concatenate(r))) for t, r in acc.items()), n,
                   {p: _sorted(np.concatenate(vals[p]), np.concatenate(rws[p])) for p in vals},
                   unexact)

    def mask(self, plan: list) -> np.ndarray | None:
        """Rows matching an exact plan (AND over clauses; OR over a clause's terms), or None
        when this segment cannot decide it (a path holding ints too large for float64).
        The array is shared (cached): callers must not modify it."""
        key = tuple(tuple(c) if isinstance(c, list) else c for c in plan)
        if key in self._masks:
            return self._masks[key]
        result = self._compute(plan)
        if result is not None:
            result.setflags(write=False)
        if len(self._masks) >= self._MASK_CACHE:
            self._masks.pop(next(iter(self._masks)))
        self._masks[key] = result
        return result

    def _compute(self, plan: list) -> np.ndarray | None:
        result = None
        for clause in plan:
            hit = np.zeros(self.n, bool)
            if isinstance(clause, tuple):
                _kind, path, op, value = clause
                if path in self.unexact:
                    return None
                entry = self.ranges.get(path)
                if entry is not None:
                    vals, rows = entry
                    cut = int(np.searchsorted(vals, value, side=_SIDES[op]))
                    hit[rows[cut:] if op in ("$gt", "$gte") else rows[:cut]] = True
            else:
                for term in clause:
                    rows = self.rows.get(term)
                    if rows is not None:
                        hit[rows] = True
            result = hit if result is None else (result & hit)
            if not result.any():
                break
        return result if result is not None else np.ones(self.n, bool)

    def pack(self) -> dict:
        return {"t": [[p, e, r.astype("<i4").tobytes()] for (p, e), r in self.rows.items()],
                "r": [[p, v.astype("<f8").tobytes(), r.astype("<i4").tobytes()]
                      for p, (v, r) in self.ranges.items()],
                "u": sorted(self.unexact)}

    @classmethod
    def unpack(cls, raw: dict, n: int) -> "TermIndex":
        rows = Postings(((p, e), data) for p, e, data in raw["t"])
        rows.check_rows(n)
        ranges = {}
        for path, vdata, rdata in raw["r"]:
            vals, rws = np.frombuffer(vdata, "<f8"), _rows(rdata, n)
            if len(vals) != len(rws):
                raise ValueError("range index lengths differ")
            ranges[path] = (vals, rws)
        return cls(rows, n, ranges, set(raw["u"]))


def _sorted(values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(values, kind="stable")
    return values[order].astype(np.float64), rows[order]


def _rows(data: bytes, n: int) -> np.ndarray:
    arr = np.frombuffer(data, "<i4")
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError("term rows out of range")
    return arr
