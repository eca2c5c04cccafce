"""The n-gram index of a pattern field (metadata_schema ``pattern: True``): which of a path's
distinct string values can hold a substring, without testing them all.

A segment's term index already holds each path's distinct string values, sorted (its terms);
for a pattern field it also keeps, per trigram (3 characters, UTF-8), the sorted ordinals of
the values containing it (db/term_index.py stores them as Postings keyed by the gram). A
``$contains`` needle of 3 or more characters, or the literal runs a ``$regex`` cannot match
without, narrow the values to those holding every gram; each candidate is then tested for
real (``in`` / RE2), so the index only has to be sound: it never drops a value that matches.
Shorter needles and patterns without a literal run of 3 test every value of the path -- still
values, never items: no item is read or decrypted either way.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Iterable

import numpy as np

GRAM = 3

_REGEX_FLAGS_KEPT = 8 | 16 | 32  # MULTILINE, DOTALL, UNICODE: none changes what a literal is


def grams_of(text: str) -> set[bytes]:
    return {text[i:i + GRAM].encode("utf-8", "surrogatepass") for i in range(len(text) - GRAM + 1)}


def build_grams(values: Iterable[str]) -> list[tuple[tuple[str, bytes], np.ndarray]]:
    """(("", gram), sorted ordinals of the values holding it) for every gram of `values`."""
    table: dict[bytes, list[int]] = {}
    for ordinal, value in enumerate(values):
        for gram in grams_of(value):
            table.setdefault(gram, []).append(ordinal)
    return [(("", gram), np.asarray(ordinals, np.int32)) for gram, ordinals in table.items()]


def candidates(lookup: Callable[[tuple[str, bytes]], np.ndarray | None],
               literals: list[str]) -> np.ndarray | None:
    """Sorted ordinals of the values holding every gram of every literal; None when the
    literals have no gram (every value is a candidate)."""
    grams = set().union(*(grams_of(text) for text in literals)) if literals else set()
    if not grams:
        return None
    found: np.ndarray | None = None
    for gram in sorted(grams, key=len):
        rows = lookup(("", gram))
        if rows is None:
            return np.empty(0, np.int32)
        found = rows if found is None else np.intersect1d(found, rows, assume_unique=True)
        if not found.size:
            break
    return found


def required_literals(pattern: str) -> list[str]:
    """Literal runs every match of `pattern` contains ([] when none can be found safely).

    Python's parser reads the pattern (RE2 already accepted it); only the top-level sequence
    is used: each maximal run of plain characters there is required, anything else (a class,
    a group, a repeat, an alternation) breaks a run. Case-folding or verbose patterns, and any
    pattern Python reads differently or not at all, give [] -- the caller then tests every
    value, which is always right."""
    try:
        import re._parser as sre_parse  # Python 3.11+
    except ImportError:  # pragma: no cover - older Pythons
        import sre_parse  # type: ignore[no-redef]
    try:
        parsed = sre_parse.parse(pattern)
    except Exception:  # noqa: BLE001 - any refusal just means "no literals"
        return []
    if parsed.state.flags & ~_REGEX_FLAGS_KEPT:
        return []
    runs, run = [], []
    for op, arg in parsed:
        if str(op) == "LITERAL":
            run.append(chr(arg))
            continue
        if run:
            runs.append("".join(run))
        run = []
    if run:
        runs.append("".join(run))
    return [text for text in runs if len(text) >= GRAM]
