"""The oracle and hypothesis strategies of the filter operators added in issue 18 ($nor,
$contains, $regex), shared by tests/request/test_filter_operators.py and
tests/api/test_filter_operators_index.py. Written from api.md / reference-0.18.md, not from
lsmvec.request.filters: a plain recursive reading of the spec evaluated per item, with Python's
``re`` standing in for RE2 on the small, non-pathological patterns drawn here."""
from __future__ import annotations

import math
import random
import re
from typing import Any

from hypothesis import strategies as st

# ------------------------------------------------------------------ the oracle

_ABSENT = object()


def value_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def oracle_equal(a: Any, b: Any) -> bool:
    if a is _ABSENT or b is _ABSENT or value_kind(a) != value_kind(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(oracle_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return set(a) == set(b) and all(oracle_equal(a[k], b[k]) for k in a)
    if value_kind(a) == "number" and (math.isnan(a) or math.isnan(b)):
        return False
    return a == b


def oracle_lookup(metadata: dict | None, path: str) -> Any:
    node: Any = metadata or {}
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _equals(value: Any, operand: Any) -> bool:
    return oracle_equal(value, operand) or (isinstance(value, list)
                                      and any(oracle_equal(e, operand) for e in value))


def oracle_contains(value: Any, operand: Any) -> bool:
    """Substring of a str value; element of a list value; nothing else."""
    if isinstance(value, str):
        return isinstance(operand, str) and operand in value
    if isinstance(value, list):
        return any(oracle_equal(element, operand) for element in value)
    return False


def oracle_regex(value: Any, pattern: str) -> bool:
    """Unanchored search of a str value, or of any str element of a list value."""
    strings = [value] if isinstance(value, str) else (
        [e for e in value if isinstance(e, str)] if isinstance(value, list) else [])
    return any(re.search(pattern, s) is not None for s in strings)


_ORDER = {"$gt": lambda a, b: a > b, "$gte": lambda a, b: a >= b,
          "$lt": lambda a, b: a < b, "$lte": lambda a, b: a <= b}


def _operator(value: Any, op: str, operand: Any) -> bool:
    if op == "$eq":
        return _equals(value, operand)
    if op == "$ne":
        return not _equals(value, operand)
    if op == "$in":
        return any(_equals(value, m) for m in operand)
    if op == "$nin":
        return not any(_equals(value, m) for m in operand)
    if op in _ORDER:
        def one(v: Any) -> bool:  # numbers with numbers, strings with strings
            return (value_kind(v) == value_kind(operand) and value_kind(v) in ("number", "str")
                    and _ORDER[op](v, operand))
        return value is not _ABSENT and (one(value) or (isinstance(value, list)
                                                        and any(map(one, value))))
    if op == "$exists":
        return (value is not _ABSENT) == operand
    if op == "$contains":
        return oracle_contains(value, operand)
    if op == "$regex":
        return oracle_regex(value, operand)
    if op == "$not":
        return not all(_operator(value, o, a) for o, a in operand.items())
    raise AssertionError(op)


def oracle_match(spec: dict, metadata: dict | None) -> bool:
    for key, cond in spec.items():
        if key == "$and":
            ok = all(oracle_match(c, metadata) for c in cond)
        elif key == "$or":
            ok = any(oracle_match(c, metadata) for c in cond)
        elif key == "$nor":
            ok = not any(oracle_match(c, metadata) for c in cond)
        elif key == "$not":
            ok = not oracle_match(cond, metadata)
        else:
            value = oracle_lookup(metadata, key)
            if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond):
                ok = all(_operator(value, op, arg) for op, arg in cond.items())
            else:
                ok = _equals(value, cond)
        if not ok:
            return False
    return True


# ------------------------------------------------------------------ strategies

TEXT = st.text(alphabet="abAB é", max_size=5)
SCALARS = st.one_of(st.sampled_from([None, True, False, 0, 1, 1.0, 2, 2.5, "", "a", "ab", "B"]),
                    TEXT, st.integers(-2, 2))
KEYS = st.sampled_from(["s", "t", "n"])
PATHS = st.sampled_from(["s", "t", "n", "s.t", "t.s"])
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(KEYS, inner, max_size=2), max_leaves=6)
METADATA = st.one_of(st.none(), st.dictionaries(KEYS, VALUES, max_size=3))
# Patterns whose meaning is the same under Python's re and RE2.
PATTERNS = st.sampled_from(["a", "^a", "b$", "^$", "", "a+b", "(?i)ab", "[aA]b?", "^(a|b)+$",
                            "é", "A.B", "\\s", "b{2}", "^[^a]*$", "x"])
NEEDLES = st.one_of(TEXT, st.sampled_from([None, True, 1, 1.0, 2, 0, float("nan")]))


def operator_dicts(inner: st.SearchStrategy) -> st.SearchStrategy:
    pair = st.one_of(
        st.tuples(st.just("$contains"), NEEDLES),
        st.tuples(st.just("$regex"), PATTERNS),
        st.tuples(st.sampled_from(["$eq", "$ne"]), SCALARS),
        st.tuples(st.just("$in"), st.lists(SCALARS, max_size=3)),
        st.tuples(st.just("$gt"), st.one_of(st.integers(-1, 2), TEXT)),
        st.tuples(st.just("$exists"), st.booleans()),
        st.tuples(st.just("$not"), inner),
    )
    return st.lists(pair, min_size=1, max_size=2, unique_by=lambda p: p[0]).map(dict)


OPERATORS = st.recursive(st.one_of(NEEDLES.map(lambda n: {"$contains": n}),
                                    PATTERNS.map(lambda p: {"$regex": p})),
                          operator_dicts, max_leaves=3)
FIELD_FILTERS = st.dictionaries(PATHS, st.one_of(SCALARS, OPERATORS), min_size=1, max_size=2)
FILTERS = st.recursive(
    FIELD_FILTERS,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda cs: {"$and": cs}),
        st.lists(inner, min_size=1, max_size=3).map(lambda cs: {"$or": cs}),
        st.lists(inner, min_size=1, max_size=3).map(lambda cs: {"$nor": cs}),
        inner.map(lambda c: {"$not": c}),
        st.tuples(FIELD_FILTERS, inner).map(lambda t: {**t[0], "$nor": [t[1]]}),
    ),
    max_leaves=5,
)


# ------------------------------------------------------------------ items

ALPHABET = "abAB é"


def random_metadata(rng: random.Random, i: int, *, depth: int, list_p: float, dict_p: float,
                    text_p: float, text_len: int, none_every: int) -> dict | None:
    """Metadata over the strategies' alphabet (keys s/t/n: short strs, small numbers, bools,
    None, lists and nested dicts up to `depth`), so drawn filters match some items and miss
    others; every `none_every`-th item has none."""
    def value(level: int) -> Any:
        r = rng.random()
        if level < depth and r < list_p:
            return [value(level + 1) for _ in range(rng.randint(0, 3))]
        if level < depth and r < dict_p:
            return {k: value(level + 1) for k in rng.sample(["s", "t", "n"], rng.randint(0, 2))}
        if r < text_p:
            return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, text_len)))
        return rng.choice([None, True, False, rng.randint(-2, 2), 2.5, 1.0])

    if i % none_every == 0:
        return None
    return {k: value(0) for k in rng.sample(["s", "t", "n"], rng.randint(1, 3))}


def reference_item(i: int) -> dict:
    """Item i of reference-0.18.md section 5 (its filter table's data)."""
    item = {"n": i, "s": f"str{i}", "grp": "odd" if i % 2 else "even", "f": i / 2,
            "flag": i % 3 == 0, "nested": {"k": i, "t": f"t{i % 4}"}}
    if i % 5 == 0:
        item["tags"] = ["x", "y"]
    if i % 4 == 0:
        item["opt"] = "present"
    return item
