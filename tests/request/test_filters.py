"""lsmvec.filters against an independent oracle: a plain recursive reading of the filter spec,
evaluated at match time (no compilation, no shared helpers with the module under test)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsmvec.errors import FilterError, InvalidMetadataError, InvalidTypeError
from lsmvec.request.filters import MAX_FILTER_DEPTH, Filter, compile_filter
from lsmvec.request.terms import index_terms, term_for

from filter_oracle import oracle_equal, oracle_lookup, oracle_match, value_kind

# ------------------------------------------------------------------ the oracle

_ORDER_OPS = {
    "$gt": lambda a, b: a > b, "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b, "$lte": lambda a, b: a <= b,
}


# The matching itself: the one oracle of tests/filter_oracle.py (the new operators too).


# ------------------------------------------------------------------ strategies

NAN = float("nan")
SCALARS = st.one_of(
    st.sampled_from([None, True, False, 0, 1, -1, 2, 0.0, -0.0, 1.0, 2.0, 2.5, NAN,
                     float("inf"), "", "a", "b", "ab", "1", "True"]),
    st.integers(-3, 3),
    st.text(alphabet="ab", max_size=2),
)
KEYS = st.sampled_from(["a", "b", "c"])
PATHS = st.sampled_from(["a", "b", "c", "a.b", "a.c", "b.a", "a.b.c"])
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=8,
)
METADATA = st.one_of(st.none(), st.dictionaries(KEYS, VALUES, max_size=3))
BOUNDS = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, 1.0, 2.5, NAN, float("-inf")]),
                   st.text(alphabet="ab", max_size=2))


def _operator_pairs(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(
        st.tuples(st.sampled_from(["$eq", "$ne"]), VALUES),
        st.tuples(st.sampled_from(["$in", "$nin"]), st.lists(VALUES, max_size=3)),
        st.tuples(st.sampled_from(list(_ORDER_OPS)), BOUNDS),
        st.tuples(st.just("$exists"), st.booleans()),
        st.tuples(st.just("$not"), inner),
    )


OPERATOR_DICTS = st.recursive(
    st.lists(st.tuples(st.sampled_from(["$eq", "$ne"]), SCALARS), min_size=1, max_size=1).map(dict),
    lambda inner: st.lists(_operator_pairs(inner), min_size=1, max_size=2,
                           unique_by=lambda pair: pair[0]).map(dict),
    max_leaves=4,
)
CONDITIONS = st.one_of(VALUES, OPERATOR_DICTS)
FIELD_FILTERS = st.dictionaries(PATHS, CONDITIONS, max_size=3)
FILTERS = st.recursive(
    FIELD_FILTERS,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda cs: {"$and": cs}),
        st.lists(inner, min_size=1, max_size=3).map(lambda cs: {"$or": cs}),
        inner.map(lambda c: {"$not": c}),
        st.tuples(FIELD_FILTERS, inner).map(lambda t: {**t[0], "$or": [t[1]]}),
    ),
    max_leaves=6,
)

# Filters built so that equality_terms is always expressible (never None).
NARROWING_LEAVES = st.one_of(
    st.builds(lambda p, v: {p: v}, PATHS, SCALARS),
    st.builds(lambda p, v: {p: {"$eq": v}}, PATHS, SCALARS),
    st.builds(lambda p, vs: {p: {"$in": vs}}, PATHS, st.lists(SCALARS, max_size=3)),
    st.builds(lambda p, v, q, c: {q: c, p: {"$in": [v]}}, PATHS, SCALARS, PATHS, CONDITIONS),
)
NARROWING_FILTERS = st.recursive(
    NARROWING_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda cs: {"$or": cs}),
        st.tuples(inner, st.lists(FILTERS, max_size=2)).map(lambda t: {"$and": [t[0], *t[1]]}),
        st.tuples(inner, FIELD_FILTERS).map(lambda t: {**t[1], "$and": [t[0]]}),
    ),
    max_leaves=6,
)

MODERATE = settings(max_examples=200, deadline=None)


# ------------------------------------------------------------------ property tests

@MODERATE
@given(FILTERS, st.lists(METADATA, max_size=6))
def test_matches_agrees_with_oracle(spec: dict, items: list) -> None:
    compiled = compile_filter(spec)
    expected = [oracle_match(spec, m) for m in items]
    assert [compiled.matches(m) for m in items] == expected
    batch = compiled.match_many(items)
    assert batch.dtype == np.bool_ and batch.shape == (len(items),)
    assert batch.tolist() == expected


@MODERATE
@given(FILTERS, st.lists(METADATA, max_size=6))
def test_equality_terms_never_exclude_a_match(spec: dict, items: list) -> None:
    _assert_terms_sound(compile_filter(spec), spec, items)


@MODERATE
@given(NARROWING_FILTERS, st.lists(METADATA, min_size=1, max_size=8))
def test_equality_terms_of_narrowing_filters_are_sound(spec: dict, items: list) -> None:
    compiled = compile_filter(spec)
    assert compiled.equality_terms() is not None
    _assert_terms_sound(compiled, spec, items)


def _assert_terms_sound(compiled: Filter, spec: dict, items: list) -> None:
    terms = compiled.equality_terms()
    if terms is None:
        return
    for metadata in items:
        if oracle_match(spec, metadata):
            assert set(terms) & index_terms(metadata), (spec, metadata, terms)


@MODERATE
@given(st.one_of(SCALARS, st.integers(), st.floats()), st.one_of(SCALARS, st.integers(), st.floats()))
def test_term_identity_is_filter_equality(x: Any, y: Any) -> None:
    if value_kind(x) == "number" and math.isnan(x):
        return  # NaN: same encoding, never equal; harmless (candidates are re-checked)
    assert (term_for("p", x) == term_for("p", y)) == oracle_equal(x, y)


@MODERATE
@given(METADATA)
def test_scalar_equality_filter_selects_by_index_term(metadata: dict | None) -> None:
    """Every indexed term of an item is the equality term of a filter that matches it."""
    for path, encoded in index_terms(metadata):
        leaf = oracle_lookup(metadata, path)
        candidates = leaf if isinstance(leaf, list) else [leaf]
        values = [v for v in candidates if value_kind(v) not in ("list", "dict")
                  and term_for(path, v) == (path, encoded)]
        assert values, (path, encoded)
        if value_kind(values[0]) == "number" and math.isnan(values[0]):
            continue
        compiled = compile_filter({path: values[0]})
        assert compiled.matches(metadata)
        assert compiled.equality_terms() == [(path, encoded)]


# ------------------------------------------------------------------ semantics, by hand

SEMANTICS = [
    # implicit equality, numbers, bool, None
    ({"t": "dog"}, {"t": "dog"}, True),
    ({"t": "dog"}, {"t": "cat"}, False),
    ({"n": 1}, {"n": 1.0}, True),
    ({"n": 0}, {"n": -0.0}, True),
    ({"n": 1}, {"n": True}, False),
    ({"n": True}, {"n": 1}, False),
    ({"n": False}, {"n": 0}, False),
    ({"n": True}, {"n": True}, True),
    ({"n": None}, {"n": None}, True),
    ({"n": None}, {}, False),
    ({"n": None}, {"n": 0}, False),
    ({"n": 2 ** 53 + 1}, {"n": float(2 ** 53)}, False),
    ({"n": NAN}, {"n": NAN}, False),
    ({"n": {"$in": [NAN]}}, {"n": NAN}, False),
    ({"n": {"$ne": NAN}}, {"n": NAN}, True),
    # missing fields
    ({"n": {"$eq": 1}}, {}, False),
    ({"n": {"$ne": 1}}, {}, True),
    ({"n": {"$nin": [1]}}, {}, True),
    ({"n": {"$in": [1, None]}}, {}, False),
    ({"n": {"$gt": 0}}, {}, False),
    ({"n": {"$not": {"$gt": 2}}}, {}, True),
    ({"n": {"$exists": False}}, {}, True),
    ({"n": {"$exists": True}}, {"n": None}, True),
    ({"n": 1}, None, False),
    ({"n": {"$ne": 1}}, None, True),
    # comparisons
    ({"n": {"$gt": 2}}, {"n": 3}, True),
    ({"n": {"$gt": 2}}, {"n": 2}, False),
    ({"n": {"$gte": 2}}, {"n": 2.0}, True),
    ({"n": {"$lt": 2.5}}, {"n": 2}, True),
    ({"n": {"$lte": -1}}, {"n": -1}, True),
    ({"n": {"$gt": 3}}, {"n": "4"}, False),
    ({"n": {"$gt": 0}}, {"n": True}, False),
    ({"n": {"$lt": "b"}}, {"n": "abc"}, True),
    ({"n": {"$gt": "b"}}, {"n": 5}, False),
    ({"n": {"$gt": 2, "$lt": 5}}, {"n": 4}, True),
    ({"n": {"$gt": 2, "$lt": 5}}, {"n": 5}, False),
    ({"n": {"$not": {"$gt": 2}}}, {"n": 3}, False),
    ({"n": {"$not": {"$gt": 2}}}, {"n": "x"}, True),
    # arrays
    ({"tags": "a"}, {"tags": ["a", "b"]}, True),
    ({"tags": ["a", "b"]}, {"tags": ["a", "b"]}, True),
    ({"tags": ["b", "a"]}, {"tags": ["a", "b"]}, False),
    ({"tags": ["a"]}, {"tags": [["a"], "b"]}, True),
    ({"tags": "a"}, {"tags": [["a"]]}, False),
    ({"tags": {"$ne": "a"}}, {"tags": ["a", "b"]}, False),
    ({"tags": {"$in": ["x", "b"]}}, {"tags": ["a", "b"]}, True),
    ({"tags": {"$nin": ["x", "b"]}}, {"tags": ["a", "b"]}, False),
    ({"tags": {"$in": [["a", "b"]]}}, {"tags": ["a", "b"]}, True),
    ({"tags": {"$gt": 5}}, {"tags": [1, 7]}, True),
    ({"tags": {"$gt": 5, "$lt": 2}}, {"tags": [1, 7]}, True),
    ({"tags": {"$gt": 5}}, {"tags": [1, [7]]}, False),
    ({"tags": 1}, {"tags": [True]}, False),
    # dicts and dotted paths
    ({"o": {"name": "x", "age": 3}}, {"o": {"age": 3, "name": "x"}}, True),
    ({"o": {"name": "x"}}, {"o": {"age": 3, "name": "x"}}, False),
    ({"o": {}}, {"o": {}}, True),
    ({"o.name": "x"}, {"o": {"name": "x"}}, True),
    ({"o.name": "x"}, {"o": [{"name": "x"}]}, False),
    ({"o.name": "x"}, {"o.name": "x"}, False),
    ({"o.name.first": {"$exists": True}}, {"o": {"name": "x"}}, False),
    ({"o": {"$eq": {"$gt": 1}}}, {"o": {"$gt": 1}}, True),
    # logic
    ({"a": 1, "b": 2}, {"a": 1, "b": 2}, True),
    ({"a": 1, "b": 2}, {"a": 1, "b": 3}, False),
    ({"$and": [{"a": 1}, {"b": 2}]}, {"a": 1, "b": 2}, True),
    ({"$or": [{"a": 1}, {"b": 2}]}, {"a": 0, "b": 2}, True),
    ({"$or": [{"a": 1}, {"b": 2}]}, {"a": 0, "b": 0}, False),
    ({"$not": {"a": 1}}, {"a": 2}, True),
    ({"$not": {"a": 1}}, {"a": 1}, False),
    ({"$not": {}}, {"a": 1}, False),
    ({"a": 1, "$or": [{"b": 1}, {"c": 1}]}, {"a": 1, "c": 1}, True),
    ({"a": {"$in": []}}, {"a": 1}, False),
    ({"a": {"$nin": []}}, {}, True),
    ({}, {"anything": 1}, True),
    ({}, None, True),
]


@pytest.mark.parametrize(("spec", "metadata", "expected"), SEMANTICS)
def test_semantics_by_hand(spec: dict, metadata: dict | None, expected: bool) -> None:
    assert compile_filter(spec).matches(metadata) is expected
    assert oracle_match(spec, metadata) is expected  # the oracle reads the spec the same way


# ------------------------------------------------------------------ errors

ERRORS = [
    ({"a": {"$all": ["x"]}}, ["$all", "'a'", "unknown"]),
    ({"a": {"$foo": 1}}, ["$foo", "'a'"]),
    ({"$foo": [{"a": 1}]}, ["$foo", "unknown"]),
    ({"$eq": 1}, ["$eq", "inside a field"]),
    ({"$in": [1]}, ["$in", "inside a field"]),
    ({"a": {"$and": [{"b": 1}]}}, ["$and", "'a'", "filter level"]),
    ({"a": {"$or": [{"b": 1}]}}, ["$or", "'a'"]),
    ({"a": {"$in": 3}}, ["$in", "'a'", "list"]),
    ({"a": {"$nin": "xy"}}, ["$nin", "'a'", "list"]),
    ({"a": {"$in": (1, 2)}}, ["$in", "list", "tuple"]),
    ({"a": {"$exists": 1}}, ["$exists", "'a'"]),
    ({"a": {"$exists": "yes"}}, ["$exists", "'a'"]),
    ({"a": {"$gt": None}}, ["$gt", "'a'"]),
    ({"a": {"$lt": True}}, ["$lt", "'a'", "bool"]),
    ({"a": {"$gte": [1]}}, ["$gte", "'a'"]),
    ({"a": {"$lte": {"x": 1}}}, ["$lte", "'a'"]),
    ({"$and": []}, ["$and", "non-empty"]),
    ({"$or": []}, ["$or", "non-empty"]),
    ({"$and": {"a": 1}}, ["$and", "list"]),
    ({"$or": [{"a": 1}, 3]}, ["$or[1]", "int"]),
    ({"$and": [["a", 1]]}, ["$and[0]", "list"]),
    ({"$not": [{"a": 1}]}, ["$not", "list"]),
    ({"$not": 1}, ["$not", "int"]),
    ({"a": {"$not": 3}}, ["$not", "'a'"]),
    ({"a": {"$not": {}}}, ["$not", "'a'"]),
    ({"a": {"$not": {"b": 1}}}, ["$not", "'b'"]),
    ({"a": {"$not": {"$regex": 1}}}, ["$regex", "'a'", "str"]),
    ({"": 1}, ["''", "empty"]),
    ({"a..b": 1}, ["'a..b'", "empty"]),
    ({".a": 1}, ["'.a'"]),
    ({"a.": 1}, ["'a.'"]),
    ({"a.$b": 1}, ["'a.$b'", "$"]),
    ({1: "x"}, ["1", "str"]),
    ({("a",): "x"}, ["('a',)", "str"]),
    ({"a": {"b": 1, "$eq": 1}}, ["'a'", "'b'"]),
    ({"a": {"$eq": 1, 2: 1}}, ["'a'", "2"]),
    ({"a": (1, 2)}, ["'a'", "tuple"]),
    ({"a": {1, 2}}, ["'a'", "set"]),
    ({"a": b"x"}, ["'a'", "bytes"]),
    ({"a": {"$eq": object()}}, ["$eq", "object"]),
    ({"a": {"$in": [1, {2: 3}]}}, ["$in", "2"]),
    ({"$or": [{"a": 1}, {"b": {"$bad": 1}}]}, ["$or[1]", "'b'", "$bad"]),
    ({"$and": [{"$not": {"c": {"$in": 5}}}]}, ["$and[0].$not", "'c'", "$in"]),
]


@pytest.mark.parametrize(("spec", "fragments"), ERRORS)
def test_malformed_filter_raises_naming_the_fault(spec: Any, fragments: list[str]) -> None:
    with pytest.raises(FilterError) as caught:
        compile_filter(spec)
    assert isinstance(caught.value, ValueError)
    for fragment in fragments:
        assert fragment in str(caught.value), (fragment, str(caught.value))


@pytest.mark.parametrize("spec", [[{"a": 1}], "a == 1", 3, ("a", 1), True])
def test_non_dict_filter_raises(spec: Any) -> None:
    with pytest.raises(FilterError, match=type(spec).__name__):
        compile_filter(spec)


def test_deep_nesting_is_refused_not_recursed() -> None:
    spec: dict = {"a": 1}
    for _ in range(MAX_FILTER_DEPTH + 5):
        spec = {"$not": spec}
    with pytest.raises(FilterError, match="deeper"):
        compile_filter(spec)
    value: Any = 1
    for _ in range(MAX_FILTER_DEPTH + 5):
        value = [value]
    with pytest.raises(FilterError, match="deeper"):
        compile_filter({"a": value})


def test_depth_within_limit_compiles() -> None:
    spec: dict = {"a": 1}
    for _ in range(20):
        spec = {"$not": {"$not": spec}}
    assert compile_filter(spec).matches({"a": 1}) and not compile_filter(spec).matches({"a": 2})


# ------------------------------------------------------------------ the Filter object

@pytest.mark.parametrize("spec", [None, {}, {"$and": [{}]}, {"$or": [{}, {"a": 1}]},
                                  {"$not": {"$not": {}}}, {"$and": [{}, {"$and": [{}]}]}])
def test_match_all_forms(spec: dict | None) -> None:
    compiled = compile_filter(spec)
    assert compiled.is_match_all
    assert compiled.equality_terms() is None
    assert compiled.match_many([None, {}, {"a": 2}]).tolist() == [True, True, True]


@pytest.mark.parametrize("spec", [{"a": 1}, {"$not": {}}, {"a": {"$exists": False}},
                                  {"$or": [{"a": 1}, {"$not": {}}]}])
def test_not_match_all(spec: dict) -> None:
    assert not compile_filter(spec).is_match_all


def test_compiled_filter_ignores_later_mutation_of_the_spec() -> None:
    spec = {"a": {"$in": [1, 2]}, "b": {"c": [1]}}
    compiled = compile_filter(spec)
    spec["a"]["$in"].append(3)
    spec["b"]["c"].append(2)
    spec["z"] = 1
    assert compiled.matches({"a": 2, "b": {"c": [1]}})
    assert not compiled.matches({"a": 3, "b": {"c": [1]}})
    assert not compiled.matches({"a": 1, "b": {"c": [1, 2]}})


def test_compile_filter_returns_a_compiled_filter_unchanged() -> None:
    compiled = compile_filter({"a": 1})
    assert compile_filter(compiled) is compiled
    assert "'a'" in repr(compiled)


def test_numpy_operands_behave_as_python_values() -> None:
    compiled = compile_filter({"n": {"$gt": np.int64(2), "$lt": np.float32(4.5)},
                               "f": np.bool_(True), "k": {"$in": [np.int32(7)]}})
    assert compiled.matches({"n": 3, "f": True, "k": 7.0})
    assert not compiled.matches({"n": 3, "f": 1, "k": 7})
    assert compiled.equality_terms() in ([term_for("f", True)], [term_for("k", 7)])


def test_matches_rejects_non_dict_metadata() -> None:
    with pytest.raises(InvalidMetadataError, match="list"):
        compile_filter({"a": 1}).matches([("a", 1)])  # type: ignore[arg-type]


def test_match_many_accepts_any_iterable_and_empty_input() -> None:
    compiled = compile_filter({"a": {"$gte": 2}})
    out = compiled.match_many({"a": i} for i in range(4))
    assert out.tolist() == [False, False, True, True]
    empty = compiled.match_many([])
    assert empty.shape == (0,) and empty.dtype == np.bool_
    assert compile_filter(None).match_many(iter([{}, None])).tolist() == [True, True]


# ------------------------------------------------------------------ equality_terms, by hand

EQUALITY_TERMS = [
    ({"a": 1}, [("a", 1)]),
    ({"a": 1.0}, [("a", 1)]),
    ({"a": {"$eq": "x"}}, [("a", "x")]),
    ({"a": {"$in": [1, 1.0, True, None]}}, [("a", 1), ("a", True), ("a", None)]),
    ({"a": {"$in": []}}, []),
    ({"a": NAN}, []),
    ({"a": {"$in": [NAN, 2]}}, [("a", 2)]),
    ({"o.name": "x"}, [("o.name", "x")]),
    ({"a": {"$in": [1, 2]}, "b": 3}, [("b", 3)]),
    ({"a": {"$gt": 1}, "b": {"$in": [1, 2]}}, [("b", 1), ("b", 2)]),
    ({"a": {"$gt": 0, "$in": [5]}}, [("a", 5)]),
    ({"$and": [{"a": {"$ne": 1}}, {"b": "y"}]}, [("b", "y")]),
    ({"$or": [{"a": 1}, {"b": "y"}]}, [("a", 1), ("b", "y")]),
    ({"$or": [{"a": 1}, {"b": {"$gt": 1}}]}, None),
    ({"$or": [{"a": 1}, {}]}, None),
    ({"$or": [{"a": 1}, {"$not": {}}]}, [("a", 1)]),
    ({"$not": {"a": 1}}, None),
    ({"a": {"$not": {"$ne": 1}}}, None),
    ({"a": {"$ne": 1}}, None),
    ({"a": {"$nin": [1]}}, None),
    ({"a": {"$exists": True}}, None),
    ({"a": [1, 2]}, None),
    ({"a": {"b": 1}}, None),
    ({"a": {"$in": [1, [2]]}}, None),
]


@pytest.mark.parametrize(("spec", "expected"), EQUALITY_TERMS)
def test_equality_terms_by_hand(spec: dict, expected: list | None) -> None:
    terms = compile_filter(spec).equality_terms()
    if expected is None:
        assert terms is None
    else:
        assert terms is not None
        assert sorted(terms) == sorted({term_for(p, v) for p, v in expected})


# ------------------------------------------------------------------ index terms and encoding

def test_index_terms_cover_scalar_leaves_and_list_elements() -> None:
    metadata = {"t": "dog", "n": 2.0, "flag": True, "none": None,
                "tags": ["a", 1, True, ["nested"], {"d": 1}],
                "o": {"name": "x", "deep": {"k": -1}, "empty": {}},
                "odd.key": 1, "": 2, "$dollar": 3}
    assert index_terms(metadata) == {
        term_for("t", "dog"), term_for("n", 2), term_for("flag", True),
        term_for("none", None), term_for("tags", "a"), term_for("tags", 1),
        term_for("tags", True), term_for("o.name", "x"), term_for("o.deep.k", -1),
    }
    assert index_terms(None) == set() and index_terms({}) == set()


@pytest.mark.parametrize(("x", "y", "same"), [
    (1, 1.0, True), (0, -0.0, True), (True, 1, False), (False, 0, False), (None, 0, False),
    (None, "", False), ("1", 1, False), (2 ** 53 + 1, float(2 ** 53), False),
    (10 ** 400, 10 ** 400, True), (1.5, 1.5, True), (float("inf"), float("inf"), True),
    (float("inf"), float("-inf"), False), (-1, 1, False), (255, -1, False),
])
def test_term_normalisation(x: Any, y: Any, same: bool) -> None:
    assert (term_for("p", x) == term_for("p", y)) is same


def test_term_encoding_is_pinned() -> None:
    """The encoding is persisted in the secondary index: changing it breaks stored indexes."""
    assert term_for("a", None) == ("a", b"z")
    assert term_for("a", True) == ("a", b"t")
    assert term_for("a", False) == ("a", b"f")
    assert term_for("a", 1) == ("a", b"i\x01")
    assert term_for("a", 255.0) == ("a", b"i\x00\xff")
    assert term_for("a", -1) == ("a", b"i\xff")
    assert term_for("a", 0.5) == ("a", b"d?\xe0\x00\x00\x00\x00\x00\x00")
    assert term_for("a", "é") == ("a", b"s\xc3\xa9")


@pytest.mark.parametrize("value", [[1], {"a": 1}, (1,), b"x", object()])
def test_term_for_refuses_non_scalars(value: Any) -> None:
    with pytest.raises(InvalidTypeError, match=type(value).__name__):
        term_for("p", value)


@pytest.mark.parametrize("metadata", [{1: "x"}, {"a": {2: "x"}}, {"a": (1, 2)},
                                      {"a": [b"x"]}, {"a": {"b": object()}}])
def test_index_terms_refuses_non_json_metadata(metadata: dict) -> None:
    with pytest.raises(InvalidMetadataError):
        index_terms(metadata)
