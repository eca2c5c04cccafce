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

from lsmvec.db.ngrams import build_grams
from lsmvec.request.schema import MetadataSchema
from lsmvec.request.terms import MAX_EXACT_INT, index_terms

STRING_TAG, STRING_END = b"s", b"t"
"""A str's encoding is b"s" + its UTF-8 (request/terms.py): its terms lie in [b"s", b"t")."""

Term = tuple[str, bytes]
_SIDES = {"$gt": "right", "$gte": "left", "$lt": "left", "$lte": "right"}


LIST_MARK = b"["
DICT_MARK = b"{"
"""Kind terms: (path, LIST_MARK) for every row whose value at path is a list (empty too),
(path, DICT_MARK) for a dict. With them, the terms under a path are exactly the rows where the
path resolves ($exists), and a list's elements can be told from a scalar value ($contains).
No scalar's encoding (request/terms.py: z t f d i s) starts with either byte."""


def _structure(meta: dict, prefix: str, out: dict[str, list], rows_out: dict[str, list],
               row: int, unexact: set[str], marks: dict, hidden: tuple[str, ...]) -> None:
    """Numeric leaves and numeric list elements, by dotted path (the filter's addressing), and
    the kind terms of list and dict values. NaN is left out: it satisfies no comparison."""
    for key, value in meta.items():
        if not isinstance(key, str) or not key or "." in key or key.startswith("$"):
            continue
        path = prefix + key
        if hidden and not visible(path, hidden):
            continue
        if isinstance(value, dict):
            marks.setdefault((path, DICT_MARK), []).append(row)
            _structure(value, path + ".", out, rows_out, row, unexact, marks, hidden)
            continue
        if isinstance(value, list):
            marks.setdefault((path, LIST_MARK), []).append(row)
        for element in (value if isinstance(value, list) else (value,)):
            if isinstance(element, bool) or not isinstance(element, (int, float)):
                continue
            if isinstance(element, int) and abs(element) > MAX_EXACT_INT:
                unexact.add(path)
                continue
            if element != element:
                continue
            out.setdefault(path, []).append(float(element))
            rows_out.setdefault(path, []).append(row)


def visible(path: str, hidden: tuple[str, ...]) -> bool:
    """Whether `path` is outside every hidden (metadata_schema filterable: False) field."""
    return not any(path == h or path.startswith(h + ".") for h in hidden)


def _key(path: str, encoded: bytes) -> bytes:
    """A term as one sortable byte string: the path's length first keeps it injective (a path
    may hold any character, NUL too)."""
    raw = path.encode("utf-8")
    return len(raw).to_bytes(4, "big") + raw + encoded


def lower_bound(blob: bytes, ends, wanted: bytes) -> int:
    """Index of the first of the sorted keys packed in `blob` (key i is blob[ends[i]:ends[i +
    1]]) that is >= wanted: a binary search, ~17 probes at 100k keys."""
    lo, hi = 0, len(ends) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if blob[ends[mid]:ends[mid + 1]] < wanted:
            lo = mid + 1
        else:
            hi = mid
    return lo


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

    def _lower(self, wanted: bytes) -> int:
        """Index of the first term whose key is >= wanted."""
        return lower_bound(self._keys, self._key_ends, wanted)

    def get(self, term: Term) -> np.ndarray | None:
        wanted = _key(*term)
        lo = self._lower(wanted)
        keys, ends = self._keys, self._key_ends
        if lo < len(ends) - 1 and keys[ends[lo]:ends[lo + 1]] == wanted:
            return self._rows[self._row_ends[lo]:self._row_ends[lo + 1]]
        return None

    def span(self, path: str, low: bytes = b"", high: bytes | None = None) -> tuple[int, int]:
        """(first, end) term numbers of `path`'s terms whose encoding is in [low, high) (high
        None: no upper bound). A path's terms are adjacent, sorted by encoding: a scalar kind
        (one tag byte, request/terms.py) is one run, strings in code point order (UTF-8)."""
        first = self._lower(_key(path, low))
        if high is None:
            end = self._lower(_key(path, b"\xff"))  # no encoding starts with 0xff
        else:
            end = self._lower(_key(path, high))
        return first, max(first, end)

    def span_rows(self, first: int, end: int) -> np.ndarray:
        """The rows of terms first .. end - 1, concatenated (a row may repeat): one slice."""
        return self._rows[self._row_ends[first]:self._row_ends[end]]

    def paths(self) -> list[str]:
        """Every path with a term, in key order: one binary search per path."""
        out, i, count = [], 0, len(self._key_ends) - 1
        while i < count:
            key = self._keys[self._key_ends[i]:self._key_ends[i + 1]]
            path = key[4:4 + int.from_bytes(key[:4], "big")].decode("utf-8")
            out.append(path)
            i = self.span(path)[1]
        return out

    def span_terms(self, first: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, the term number of each) of terms first .. end - 1: two arrays, no loop."""
        ends = np.frombuffer(self._row_ends, np.uint64)[first:end + 1].astype(np.int64)
        numbers = np.repeat(np.arange(first, end, dtype=np.int64), np.diff(ends))
        return self._rows[ends[0]:ends[-1]] if end > first else self._rows[:0], numbers

    def term_rows(self, number: int) -> np.ndarray:
        return self._rows[self._row_ends[number]:self._row_ends[number + 1]]

    def encoding(self, number: int) -> bytes:
        """The encoded value of term `number` (its key without the path)."""
        key = self._keys[self._key_ends[number]:self._key_ends[number + 1]]
        return key[4 + int.from_bytes(key[:4], "big"):]

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
    __slots__ = ("rows", "ranges", "unexact", "n", "kinds", "grams", "hidden", "_masks")

    # Masks of recent plans: a segment is immutable, so a plan's mask never changes; users
    # repeat the same few filters, and a 90%-selective $in would otherwise cost a scatter of
    # most rows on every query.
    _MASK_CACHE = 64

    def __init__(self, rows: Postings | dict[Term, np.ndarray], n: int,
                 ranges: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                 unexact: set[str] | None = None, kinds: bool = False,
                 grams: dict[str, Postings] | None = None, hidden: tuple[str, ...] = ()):
        self.rows = rows if isinstance(rows, Postings) else Postings(rows.items())
        self.ranges = ranges or {}
        self.unexact = unexact or set()
        self.n = n
        self.kinds = kinds
        """Whether the kind terms (LIST_MARK, DICT_MARK) are in: segments written before them
        cannot decide $exists / $contains / ordering alone (db/filter_masks.py checks items)."""
        self.grams = grams or {}
        """Path -> its string values' n-gram postings (pattern fields: db/ngrams.py)."""
        self.hidden = tuple(hidden)
        """Fields (and the paths under them) left out: metadata_schema filterable False."""
        self._masks: dict[tuple, np.ndarray | None] = {}

    @classmethod
    def build(cls, metadata: Iterable[dict | None], n: int,
              schema: MetadataSchema | None = None) -> "TermIndex":
        """The index of rows 0 .. n - 1 holding `metadata`; fields the schema marks
        filterable False are left out, pattern fields get n-grams."""
        hidden = schema.unindexed if schema is not None else ()
        lists: dict[Term, list[int]] = {}
        values: dict[str, list] = {}
        value_rows: dict[str, list] = {}
        unexact: set[str] = set()
        for row, meta in enumerate(metadata):
            if meta:
                for term in index_terms(meta):
                    if not hidden or visible(term[0], hidden):
                        lists.setdefault(term, []).append(row)
                _structure(meta, "", values, value_rows, row, unexact, lists, hidden)
        rows = Postings(lists.items())
        return cls(rows, n, {p: _sorted(np.asarray(values[p]), np.asarray(value_rows[p], np.int32))
                             for p in values}, unexact, True,
                   _grams_of(rows, schema.patterns if schema is not None else ()), hidden)

    def remap(self, mapping: np.ndarray, n: int) -> "TermIndex":
        """This index as rows of a merged segment (mapping[old] = new, -1 dropped); without
        n-grams, which ``merge`` rebuilds."""
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
        return TermIndex(Postings(rows), n, ranges, set(self.unexact), self.kinds,
                         hidden=self.hidden)

    @classmethod
    def merge(cls, parts: list["TermIndex"], n: int, patterns: tuple[str, ...] = ()
              ) -> "TermIndex":
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
        rows = Postings((t, np.sort(np.concatenate(r))) for t, r in acc.items())
        return cls(rows, n,
                   {p: _sorted(np.concatenate(vals[p]), np.concatenate(rws[p])) for p in vals},
                   unexact, all(part.kinds for part in parts), _grams_of(rows, patterns),
                   tuple(sorted({h for part in parts for h in part.hidden})))

    def decides(self, path: str) -> bool:
        """Whether this index holds `path` at all (not under a filterable False field)."""
        return not self.hidden or visible(path, self.hidden)

    def range_rows(self, path: str, op: str, value: float) -> np.ndarray | None:
        """Rows (repeats possible) with a number at `path` satisfying `op value`, or None when
        this segment cannot tell (the path holds ints beyond float64's exact range, or is
        left out of the index)."""
        if path in self.unexact or not self.decides(path):
            return None
        entry = self.ranges.get(path)
        if entry is None or value != value:
            return np.empty(0, np.int32)
        vals, rows = entry
        stop = int(np.searchsorted(vals, np.inf, side="right"))  # NaN (older segments) sorts last
        cut = int(np.searchsorted(vals[:stop], value, side=_SIDES[op]))
        return rows[cut:stop] if op in ("$gt", "$gte") else rows[:cut]

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
                rows = self.range_rows(path, op, value)
                if rows is None:
                    return None
                hit[rows] = True
            else:
                if not all(self.decides(term[0]) for term in clause):
                    return None
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
                "u": sorted(self.unexact), "k": self.kinds, "h": list(self.hidden),
                "g": [[path, [[g, r.astype("<i4").tobytes()] for (_p, g), r in grams.items()]]
                      for path, grams in self.grams.items()]}

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
        grams = {}
        for path, entries in raw.get("g", []):
            grams[path] = Postings((("", g), data) for g, data in entries)
            first, end = rows.span(path, STRING_TAG, STRING_END)
            grams[path].check_rows(end - first)
        return cls(rows, n, ranges, set(raw["u"]), bool(raw.get("k", False)), grams,
                   tuple(raw.get("h", ())))


def _grams_of(rows: Postings, patterns: tuple[str, ...]) -> dict[str, Postings]:
    """N-gram postings of every path under a pattern field that holds strings."""
    if not patterns:
        return {}
    out = {}
    for path in rows.paths():
        if not visible(path, patterns):  # under a pattern field
            first, end = rows.span(path, STRING_TAG, STRING_END)
            if end > first:
                out[path] = Postings(build_grams(
                    rows.encoding(i)[1:].decode("utf-8", "surrogatepass")
                    for i in range(first, end)))
    return out


def _sorted(values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(values, kind="stable")
    return values[order].astype(np.float64), rows[order]


def _rows(data: bytes, n: int) -> np.ndarray:
    arr = np.frombuffer(data, "<i4")
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError("term rows out of range")
    return arr
