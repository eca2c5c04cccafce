"""query_metadata: the ids of the live items matching a filter, ordered by a field, from the
term indexes and the memtables -- no item of a segment is read unless a part of the filter or
the order cannot be decided by its index (matching.py / filter_masks.py say when).

Order (as the reference product, observed: reference-0.18.md): numbers, then strings (code
point order), then booleans (false first); items whose value at the field is anything else --
missing, null, a list, a dict, NaN -- come last. ``ascending=False`` reverses the first three
groups (booleans first, then strings, then numbers, each descending); the last group stays
last. Ties, and the last group, go by id, so equal calls answer alike. Without order_by the
order is the sources' (memtables, then segments): no promise, no sorting cost.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lsmvec.db.matching import matching_rows
from lsmvec.db.segments import SegmentSource, segment_items
from lsmvec.db.term_index import LIST_MARK, STRING_END, STRING_TAG
from lsmvec.request.filters import get_path
from lsmvec.request.metadata_query import Order

_NUMBER, _STRING, _BOOL, _OTHER = 0, 1, 2, 3


def select_ids(core: Any, flt, order: Order | None, limit: int | None) -> list[dict[str, str]]:
    """[{"id"}] of the matching live items, ordered, at most `limit` (None: all)."""
    with core.read_lock():
        tables = [core.memtable, *reversed(core.frozen)]
        found = matching_rows(tables, core.segments, flt, core.store, core.item_cache)
        if order is None:
            ids: list[str] = []
            for source, rows in found:
                ids.extend(_ids_of(source, rows))
                if limit is not None and len(ids) >= limit:
                    break
            return [{"id": item_id} for item_id in ids[:limit]]
        keyed = [_keys(source, rows, order.path, core.store, core.item_cache)
                 for source, rows in found]
        rank = np.concatenate([part[0] for part in keyed]) if keyed else np.empty(0, np.int8)
        num = np.concatenate([part[1] for part in keyed]) if keyed else np.empty(0)
        text: dict[int, str] = {}
        starts = np.cumsum([0, *(len(rows) for _source, rows in found)])
        for start, part in zip(starts.tolist(), keyed):
            text.update((start + i, value) for i, value in part[2].items())
        # Only the candidates' ids are decoded (under the lock: a memtable's ids list grows):
        # with top_k=10 on 500k matches, 10-odd ids instead of 500k (1.1 s of 1.5 s at 1M).
        groups = [(group, at, _names(found, starts, at))
                  for group, at in _candidates(rank, num, order.ascending, limit)]
    picked = _ordered(groups, num, text, order.ascending)
    return [{"id": item_id} for item_id in picked[:limit]]


def _candidates(rank: np.ndarray, num: np.ndarray, ascending: bool, limit: int | None
                ) -> list[tuple[int, np.ndarray]]:
    """(group, its positions, ascending) per group in order, as far as `limit` reaches: in a
    number or bool group larger than what is still wanted, only the values up to the wanted
    one's (ties kept: the id decides among them)."""
    out: list[tuple[int, np.ndarray]] = []
    need = len(rank) if limit is None else limit
    groups = (_NUMBER, _STRING, _BOOL) if ascending else (_BOOL, _STRING, _NUMBER)
    for group in (*groups, _OTHER):
        if need <= 0:
            break
        at = np.flatnonzero(rank == group)
        if not at.size:
            continue
        if group in (_NUMBER, _BOOL) and at.size > need:
            key = num[at] if ascending else -num[at]
            at = at[key <= np.partition(key, need - 1)[need - 1]]
        out.append((group, at))
        need -= at.size
    return out


def _names(found: list[tuple[Any, np.ndarray]], starts: np.ndarray, at: np.ndarray) -> list[str]:
    """The ids at positions `at` (ascending) of the sources' rows laid end to end."""
    out: list[str] = []
    part = np.searchsorted(starts, at, side="right") - 1
    for p in np.unique(part).tolist():
        source, rows = found[p]
        out.extend(_ids_of(source, rows[at[part == p] - starts[p]]))
    return out


def _ordered(groups: list[tuple[int, np.ndarray, list[str]]], num: np.ndarray,
             text: dict[int, str], ascending: bool) -> list[str]:
    """The ids of the groups' items in their order (see the module docstring)."""
    out: list[str] = []
    for group, at, names in groups:
        by_id = sorted(range(len(names)), key=names.__getitem__)  # tie-break; sorts are stable
        if group == _STRING:
            where = at.tolist()
            by_id.sort(key=lambda j: text[where[j]], reverse=not ascending)
        elif group != _OTHER:
            values = num[at][by_id]
            order = np.argsort(values if ascending else -values, kind="stable")
            by_id = [by_id[i] for i in order.tolist()]
        out.extend(names[j] for j in by_id)
    return out


def _ids_of(source: Any, rows: np.ndarray) -> list[str]:
    if type(source) is SegmentSource:
        return source.ids.take(rows)
    return [source.ids[r] for r in rows.tolist()]


def _keys(source: Any, rows: np.ndarray, path: str, store: Any, cache: Any
          ) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """(rank, number, {position: str}) of `rows` of one source, by the value at `path`."""
    if type(source) is not SegmentSource:
        return _from_metadata([source.metadata[r] for r in rows.tolist()], path)
    terms = source.terms
    if not terms.kinds or path in terms.unexact or not terms.decides(path):
        items = segment_items(store, cache, [(source, int(r)) for r in rows])
        return _from_metadata([item[2] for item in items], path)
    n = terms.n
    rank = np.full(n, _OTHER, np.int8)
    num = np.zeros(n)
    lists = np.zeros(n, bool)
    marked = terms.rows.get((path, LIST_MARK))
    if marked is not None:
        lists[marked] = True
    entry = terms.ranges.get(path)
    if entry is not None:
        values, value_rows = entry
        keep = ~lists[value_rows] & (values == values)
        rank[value_rows[keep]] = _NUMBER
        num[value_rows[keep]] = values[keep]
    for encoded, flag in ((b"f", 0.0), (b"t", 1.0)):
        found = terms.rows.get((path, encoded))
        if found is not None:
            found = found[~lists[found]]
            rank[found], num[found] = _BOOL, flag
    first, end = terms.rows.span(path, STRING_TAG, STRING_END)
    string_rows, numbers = terms.rows.span_terms(first, end)
    keep = ~lists[string_rows]
    term_of = np.full(n, -1, np.int64)
    term_of[string_rows[keep]] = numbers[keep]
    rank[string_rows[keep]] = _STRING
    rank, num = rank[rows], num[rows]
    at = np.flatnonzero(rank == _STRING)  # not a Python test per row: 0.3 s of 500k rows
    text = {i: terms.rows.encoding(t)[1:].decode("utf-8", "surrogatepass")
            for i, t in zip(at.tolist(), term_of[rows[at]].tolist())}
    return rank, num, text


def _from_metadata(metadatas: list, path: str) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    rank = np.full(len(metadatas), _OTHER, np.int8)
    num = np.zeros(len(metadatas))
    text: dict[int, str] = {}
    for i, meta in enumerate(metadatas):
        value = get_path(meta, path)
        if isinstance(value, bool):
            rank[i], num[i] = _BOOL, float(value)
        elif isinstance(value, (int, float)) and value == value:
            rank[i], num[i] = _NUMBER, float(value)
        elif isinstance(value, str):
            rank[i] = _STRING
            text[i] = value
    return rank, num, text
