"""Exact index plans for equality filters: which secondary-index terms decide a filter alone.

A filter that is a conjunction of ``field == scalar`` / ``$eq`` / ``$in`` clauses and numeric
``$gt $gte $lt $lte`` comparisons (also inside ``$and``) is decided exactly by the (path, value)
term index and the per-path sorted numeric index: an item matches iff, for every
clause, it holds one of the clause's terms (index_terms emits one term per scalar leaf and per
scalar list element, with the same numeric normalisation the filter's equality uses). Such a
filter never needs an item's metadata to be decrypted and read. Anything else returns None and
the caller falls back to checking metadata.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from lsmvec.request.terms import MAX_EXACT_INT, term_for

Term = tuple[str, bytes]
Plan = list  # AND over clauses; a clause is a list of terms (OR) or a ("range", ...) tuple


def _scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (str, int, bool))


RANGE_OPS = ("$gt", "$gte", "$lt", "$lte")
"""Numbers are range-indexed as float64: ints beyond 2^53 would compare inexactly."""


def _number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) <= MAX_EXACT_INT
    return isinstance(value, float) and math.isfinite(value)


def _clauses(path: str, cond: Any) -> list | None:
    """One clause per operator (a field dict's operators are ANDed): a list of terms (OR) for
    equality / $in, a ("range", path, op, number) tuple for a numeric comparison."""
    if not isinstance(cond, Mapping):
        return [[term_for(path, cond)]] if _scalar(cond) else None
    out: list = []
    for op, operand in cond.items():
        if op == "$eq" and _scalar(operand):
            out.append([term_for(path, operand)])
        elif op == "$in" and isinstance(operand, list) and all(_scalar(v) for v in operand):
            out.append(sorted({term_for(path, v) for v in operand}))
        elif op in RANGE_OPS and _number(operand):
            out.append(("range", path, op, float(operand)))
        else:
            return None
    return out or None


def plan_terms(spec: Mapping[str, Any] | None) -> Plan | None:
    """The exact term plan of an (already validated) filter dict, or None."""
    if not spec:
        return None
    plan: Plan = []
    for key, cond in spec.items():
        if key == "$and":
            if not isinstance(cond, list):
                return None
            for sub in cond:
                inner = plan_terms(sub) if isinstance(sub, Mapping) and sub else None
                if inner is None:
                    return None
                plan.extend(inner)
        elif key.startswith("$"):
            return None
        else:
            clauses = _clauses(key, cond)
            if clauses is None:
                return None
            plan.extend(clauses)
    return plan
