"""Any filter over one segment's term index: a row mask, and whether it is exact.

``segment_mask(spec, terms)`` walks a validated filter dict (request/filters.py has its rules)
and answers each part from the index, with no item read: equality and ``$in`` from the terms,
numeric ranges from the sorted numbers, string ranges from the sorted string terms,
``$exists`` from the terms under the path (kind terms included), ``$contains`` from the string
values (through the n-gram index on pattern fields) and the list kind terms, ``$regex`` from
the string values; ``$and``/``$or``/``$nor``/``$not``/``$ne``/``$nin`` combine masks.

A part the index cannot decide -- equality with a list or dict, a field left out by
metadata_schema, numbers beyond float64's exact range, a segment written before the kind terms
-- gives a superset marked inexact; a negation of an inexact part is everything, inexact. The
caller then checks only the candidate rows' metadata (db/matching.py), so the answer is always
the filter's own.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lsmvec.db.ngrams import candidates, required_literals
from lsmvec.db.term_index import LIST_MARK, STRING_END, STRING_TAG, TermIndex
from lsmvec.request.filters import regex_searcher
from lsmvec.request.terms import scalar_key, term_for

Mask = tuple[np.ndarray, bool]
_RANGES = ("$gt", "$gte", "$lt", "$lte")


def segment_mask(spec: Mapping[str, Any] | None, terms: TermIndex) -> Mask:
    """(rows matching or candidates, exact) over the segment's n rows."""
    return _Masks(terms).filter(spec or {})


class _Masks:
    def __init__(self, terms: TermIndex) -> None:
        self.t = terms
        self.n = terms.n

    # -- building blocks ----------------------------------------------------------------------

    def _of(self, rows: np.ndarray | None) -> np.ndarray:
        mask = np.zeros(self.n, bool)
        if rows is not None and len(rows):
            mask[rows] = True
        return mask

    def _everything(self) -> Mask:
        return np.ones(self.n, bool), False

    def present(self, path: str) -> Mask:
        """Rows where `path` resolves: every term under it, its kind terms included."""
        if not self.t.kinds:
            return self._everything()
        first, end = self.t.rows.span(path)
        return self._of(self.t.rows.span_rows(first, end)), True

    def _kind(self, path: str, mark: bytes) -> np.ndarray:
        return self._of(self.t.rows.get((path, mark)))

    def equal(self, path: str, value: Any) -> Mask:
        key = scalar_key(value)
        if key is None:  # a list or dict operand: compared whole, which terms do not hold
            return self.present(path)[0], False
        if key[0] == "x":  # NaN equals nothing
            return np.zeros(self.n, bool), True
        return self._of(self.t.rows.get(term_for(path, value))), True

    def _strings(self, path: str, test) -> np.ndarray:
        """Mask of the rows holding (as a value or a list element) a str passing `test`; the
        str values are visited once each, through the n-gram index where one narrows them."""
        rows, grams = self.t.rows, self.t.grams.get(path)
        first, end = rows.span(path, STRING_TAG, STRING_END)
        ordinals = range(end - first)
        literals = getattr(test, "literals", None)
        if grams is not None and literals:
            found = candidates(grams.get, literals)
            if found is not None:
                ordinals = found.tolist()
        hit = [first + i for i in ordinals
               if test(rows.encoding(first + i)[1:].decode("utf-8", "surrogatepass"))]
        mask = np.zeros(self.n, bool)
        for number in hit:
            mask[rows.term_rows(number)] = True
        return mask

    def compare(self, path: str, op: str, bound: Any) -> Mask:
        if isinstance(bound, str):
            enc = term_for(path, bound)[1]
            low, high = {"$gt": (enc + b"\0", STRING_END), "$gte": (enc, STRING_END),
                         "$lt": (STRING_TAG, enc), "$lte": (STRING_TAG, enc + b"\0")}[op]
            first, end = self.t.rows.span(path, low, high)
            return self._of(self.t.rows.span_rows(first, end)), True
        rows = self.t.range_rows(path, op, float(bound))
        if rows is None:
            return self.present(path)[0], False
        return self._of(rows), True

    def contains(self, path: str, needle: Any) -> Mask:
        if not self.t.kinds:
            return self._everything()
        lists = self._kind(path, LIST_MARK)
        element = self.equal(path, needle)[0] & lists
        if not isinstance(needle, str):
            return element, True
        substring = _Test(lambda text: needle in text, [needle])
        return element | (self._strings(path, substring) & ~lists), True

    def regex(self, path: str, pattern: str) -> Mask:
        return self._strings(path, _Test(regex_searcher(pattern), required_literals(pattern))), True

    # -- the filter tree ----------------------------------------------------------------------

    def filter(self, spec: Mapping[str, Any]) -> Mask:
        parts = []
        for key, value in spec.items():
            if key == "$and":
                parts.append(self._all([self.filter(sub) for sub in value]))
            elif key == "$or":
                parts.append(self._any([self.filter(sub) for sub in value]))
            elif key == "$nor":
                parts.append(self._not(self._any([self.filter(sub) for sub in value])))
            elif key == "$not":
                parts.append(self._not(self.filter(value)))
            else:
                parts.append(self.field(key, value))
        return self._all(parts)

    def field(self, path: str, condition: Any) -> Mask:
        if not self.t.decides(path):
            return self._everything()
        if isinstance(condition, Mapping) and any(
                isinstance(k, str) and k.startswith("$") for k in condition):
            return self._all([self.operator(path, op, operand) for op, operand in condition.items()])
        return self.equal(path, condition)

    def operator(self, path: str, op: str, operand: Any) -> Mask:
        if op == "$eq":
            return self.equal(path, operand)
        if op == "$ne":
            return self._not(self.equal(path, operand))
        if op in ("$in", "$nin"):
            found = self._any([self.equal(path, member) for member in operand])
            return found if op == "$in" else self._not(found)
        if op in _RANGES:
            return self.compare(path, op, operand)
        if op == "$exists":
            return self.present(path) if operand else self._not(self.present(path))
        if op == "$not":
            return self._not(self.field(path, operand))
        if op == "$contains":
            return self.contains(path, operand)
        if op == "$regex":
            return self.regex(path, operand)
        return self._everything()  # pragma: no cover - compile_filter refuses the rest

    def _all(self, parts: list[Mask]) -> Mask:
        if not parts:
            return np.ones(self.n, bool), True
        mask, exact = parts[0][0].copy(), parts[0][1]
        for part, part_exact in parts[1:]:
            mask &= part
            exact = exact and part_exact
        return mask, exact

    def _any(self, parts: list[Mask]) -> Mask:
        if not parts:
            return np.zeros(self.n, bool), True
        mask, exact = parts[0][0].copy(), parts[0][1]
        for part, part_exact in parts[1:]:
            mask |= part
            exact = exact and part_exact
        return mask, exact

    def _not(self, part: Mask) -> Mask:
        mask, exact = part
        return (~mask, True) if exact else self._everything()


class _Test:
    """A str test that knows the literals every passing str contains (for the n-grams)."""

    __slots__ = ("test", "literals")

    def __init__(self, test, literals: list[str]) -> None:
        self.test, self.literals = test, literals

    def __call__(self, text: str) -> bool:
        return self.test(text)

