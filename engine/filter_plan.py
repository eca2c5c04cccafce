"""Exact index plans for equality filters: which secondary-index terms decide a filter alone.

A filter that is a conjunction of ``field == scalar`` / ``$eq`` / ``$in`` clauses (also inside
``$and``) is decided exactly by the (path, value) term index: an item matches iff, for every
clause, it holds one of the clause's terms (index_terms emits one term per scalar leaf and per
scalar list element, with the same numeric normalisation the filter's equality uses). Such a
filter never needs an item's metadata to be decrypted and read. Anything else returns None and
the caller falls back to checking metadata.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .filters import term_for

Term = tuple[str, bytes]
Plan = list[list[Term]]  # AND over clauses, OR within a clause


def _scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (str, int, bool))


def _clause(path: str, cond: Any) -> list[Term] | None:
    if isinstance(cond, Mapping):
        if len(cond) != 1:
            return None
        (op, operand), = cond.items()
        if op == "$eq" and _scalar(operand):
            return [term_for(path, operand)]
        if op == "$in" and isinstance(operand, list) and all(_scalar(v) for v in operand):
            return sorted({term_for(path, v) for v in operand})
        return None
    if _scalar(cond):
        return [term_for(path, cond)]
    return None


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
            clause = _clause(key, cond)
            if clause is None:
                return None
            plan.append(clause)
    return plan
