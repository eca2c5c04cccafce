"""$nor, $contains and $regex (issue 18) against the independent oracle of tests/filter_oracle.py,
the reference's table rows for them, the errors, and RE2's linear time (by counting)."""
from __future__ import annotations

import re
from typing import Any

import pytest
import re2
from hypothesis import given, settings
from hypothesis import strategies as st

from filter_oracle import FILTERS, METADATA, PATTERNS, oracle_match, reference_item

from lsmvec.errors import FilterError
from lsmvec.request import filters as filters_module
from lsmvec.request.filters import compile_filter
from lsmvec.request.terms import index_terms, term_for


# ------------------------------------------------------------------ property tests

@settings(max_examples=300, deadline=None)
@given(FILTERS, st.lists(METADATA, max_size=6))
def test_new_operators_agree_with_the_oracle(spec: dict, items: list) -> None:
    compiled = compile_filter(spec)
    expected = [oracle_match(spec, m) for m in items]
    assert [compiled.matches(m) for m in items] == expected, spec
    assert compiled.match_many(items).tolist() == expected


@settings(max_examples=200, deadline=None)
@given(FILTERS, st.lists(METADATA, max_size=6))
def test_no_term_plan_for_the_new_operators(spec: dict, items: list) -> None:
    """They cannot be answered from the term index: the exact plan must be absent (the engine
    then checks each candidate's metadata), and any narrowing terms must stay sound."""
    compiled = compile_filter(spec)
    text = repr(spec)
    if any(op in text for op in ("$nor", "$contains", "$regex")):
        assert compiled.plan is None, spec
    terms = compiled.equality_terms()
    if terms is not None:
        for metadata in items:
            if oracle_match(spec, metadata):
                assert set(terms) & index_terms(metadata), (spec, metadata)


# ------------------------------------------------------------------ by hand

SEMANTICS = [
    # $nor
    ({"$nor": [{"a": 1}]}, {"a": 2}, True),
    ({"$nor": [{"a": 1}]}, {"a": 1}, False),
    ({"$nor": [{"a": 1}, {"b": 1}]}, {"a": 0, "b": 1}, False),
    ({"$nor": [{"a": 1}, {"b": 1}]}, {"a": 0, "b": 0}, True),
    ({"$nor": [{"a": 1}]}, {}, True),
    ({"$nor": [{"a": 1}]}, None, True),
    ({"$nor": [{}]}, {"a": 1}, False),
    ({"$nor": [{"$nor": [{"a": 1}]}]}, {"a": 1}, True),
    ({"$nor": [{"a": {"$gt": 3}}], "b": "x"}, {"a": 1, "b": "x"}, True),
    ({"$nor": [{"a": {"$gt": 3}}], "b": "x"}, {"a": 1, "b": "y"}, False),
    ({"$and": [{"$nor": [{"a": 1}]}, {"$or": [{"b": 1}, {"c": 1}]}]}, {"a": 2, "c": 1}, True),
    # $contains: str values
    ({"s": {"$contains": "r1"}}, {"s": "str10"}, True),
    ({"s": {"$contains": "R1"}}, {"s": "str10"}, False),
    ({"s": {"$contains": ""}}, {"s": ""}, True),
    ({"s": {"$contains": "abc"}}, {"s": "ab"}, False),
    ({"s": {"$contains": "é"}}, {"s": "café"}, True),
    ({"s": {"$contains": 1}}, {"s": "a1"}, False),
    # $contains: list values (element equality, no substring inside elements)
    ({"tags": {"$contains": "x"}}, {"tags": ["x", "y"]}, True),
    ({"tags": {"$contains": "x"}}, {"tags": ["xy"]}, False),
    ({"tags": {"$contains": 1}}, {"tags": [1.0, 2]}, True),
    ({"tags": {"$contains": 1}}, {"tags": [True]}, False),
    ({"tags": {"$contains": True}}, {"tags": [1]}, False),
    ({"tags": {"$contains": None}}, {"tags": [None]}, True),
    ({"tags": {"$contains": float("nan")}}, {"tags": [float("nan")]}, False),
    ({"tags": {"$contains": "x"}}, {"tags": [["x"]]}, False),
    ({"tags": {"$contains": "x"}}, {"tags": []}, False),
    # $contains: anything else never matches
    ({"n": {"$contains": 1}}, {"n": 1}, False),
    ({"n": {"$contains": "1"}}, {"n": 1}, False),
    ({"o": {"$contains": "k"}}, {"o": {"k": 1}}, False),
    ({"n": {"$contains": "a"}}, {}, False),
    ({"n": {"$not": {"$contains": "a"}}}, {}, True),
    ({"n": {"$not": {"$contains": "a"}}}, {"n": "bab"}, False),
    ({"o.s": {"$contains": "b"}}, {"o": {"s": "abc"}}, True),
    ({"o.s": {"$contains": "b"}}, {"o": [{"s": "abc"}]}, False),
    # $regex
    ({"s": {"$regex": "^str1"}}, {"s": "str15"}, True),
    ({"s": {"$regex": "^str1"}}, {"s": "xstr15"}, False),
    ({"s": {"$regex": "r1"}}, {"s": "str15"}, True),
    ({"s": {"$regex": "STR1"}}, {"s": "str15"}, False),
    ({"s": {"$regex": "(?i)STR1"}}, {"s": "str15"}, True),
    ({"s": {"$regex": "^$"}}, {"s": ""}, True),
    ({"s": {"$regex": ""}}, {"s": "anything"}, True),
    ({"s": {"$regex": "^.$"}}, {"s": "é"}, True),
    ({"s": {"$regex": "a.b"}}, {"s": "a\nb"}, False),
    ({"s": {"$regex": "^b"}}, {"s": ["a", "bc"]}, True),
    ({"s": {"$regex": "^b"}}, {"s": ["a", 5, ["bc"]]}, False),
    ({"n": {"$regex": "1"}}, {"n": 1}, False),
    ({"n": {"$regex": "^True$"}}, {"n": True}, False),
    ({"n": {"$regex": "None"}}, {"n": None}, False),
    ({"o": {"$regex": "k"}}, {"o": {"k": "k"}}, False),
    ({"n": {"$regex": ""}}, {}, False),
    ({"n": {"$not": {"$regex": "a"}}}, {"n": 3}, True),
    ({"o.s": {"$regex": "c$"}}, {"o": {"s": "abc"}}, True),
    ({"s": {"$regex": "a", "$contains": "b"}}, {"s": "ab"}, True),
    ({"s": {"$regex": "a", "$contains": "b"}}, {"s": "a"}, False),
    ({"$or": [{"s": {"$regex": "^z"}}, {"t": {"$contains": "q"}}]}, {"s": "a", "t": ["q"]}, True),
]


@pytest.mark.parametrize(("spec", "metadata", "expected"), SEMANTICS)
def test_semantics_by_hand(spec: dict, metadata: dict | None, expected: bool) -> None:
    assert compile_filter(spec).matches(metadata) is expected
    assert oracle_match(spec, metadata) is expected  # the oracle reads the spec the same way


def test_regex_dollar_is_the_end_of_the_text() -> None:
    """RE2 without multi-line mode: ``$`` does not match before a final newline (Python's re
    and PCRE do); ``(?m)`` turns line anchors on."""
    assert not compile_filter({"s": {"$regex": "b$"}}).matches({"s": "b\n"})
    assert compile_filter({"s": {"$regex": "(?m)b$"}}).matches({"s": "b\nc"})
    assert compile_filter({"s": {"$regex": "b$"}}).matches({"s": "a\nb"})




REFERENCE_ROWS = [  # the new operators' rows of the reference's table, query() column
    ({"$nor": [{"n": {"$gt": 3}}]}, [0, 1, 2, 3]),
    ({"s": {"$regex": "^str1"}}, [1, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]),
    ({"s": {"$contains": "r1"}}, [1, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]),
    ({"tags": {"$contains": "x"}}, [0, 5, 10, 15]),
    ({"$nor": [{"grp": "odd"}, {"n": {"$lt": 10}}]}, [10, 12, 14, 16, 18]),
    ({"nested.t": {"$regex": "[13]$"}, "$nor": [{"n": {"$gt": 9}}]}, [1, 3, 5, 7, 9]),
]


@pytest.mark.parametrize(("spec", "expected"), REFERENCE_ROWS)
def test_reference_table_rows(spec: dict, expected: list[int]) -> None:
    compiled = compile_filter(spec)
    assert [i for i in range(20) if compiled.matches(reference_item(i))] == expected


# ------------------------------------------------------------------ refused before anything runs

ERRORS = [
    ({"s": {"$regex": "(?=a)"}}, ["$regex", "'s'", "'(?=a)'", "RE2"]),
    ({"s": {"$regex": "(?<=a)b"}}, ["$regex", "'s'", "(?<=a)b"]),
    ({"s": {"$regex": r"(a)\1"}}, ["$regex", "'s'", "(a)", "\\\\1"]),
    ({"s": {"$regex": "("}}, ["$regex", "'s'", "'('"]),
    ({"s": {"$regex": "a{1001}"}}, ["$regex", "'s'", "a{1001}"]),
    ({"s": {"$regex": "\ud800"}}, ["$regex", "'s'", "ud800"]),
    ({"o.s": {"$regex": "[z-a]"}}, ["$regex", "'o.s'", "[z-a]"]),
    ({"s": {"$regex": 1}}, ["$regex", "'s'", "str", "int", "1"]),
    ({"s": {"$regex": None}}, ["$regex", "'s'", "NoneType"]),
    ({"s": {"$regex": b"a"}}, ["$regex", "'s'", "bytes", "b'a'"]),
    ({"s": {"$regex": ["a"]}}, ["$regex", "'s'", "list"]),
    ({"s": {"$regex": "a", "$options": "i"}}, ["$options", "'s'", "unknown"]),
    ({"s": {"$not": {"$regex": "(?!a)"}}}, ["$regex", "'s'", "(?!a)"]),
    ({"$or": [{"a": 1}, {"s": {"$regex": "*"}}]}, ["$or[1]", "$regex", "'s'", "'*'"]),
    ({"$nor": [{"s": {"$regex": "(?P=x)"}}]}, ["$nor[0]", "$regex", "'s'"]),
    ({"s": {"$contains": ["x", "y"]}}, ["$contains", "'s'", "list", "$and"]),
    ({"s": {"$contains": {"k": 1}}}, ["$contains", "'s'", "dict"]),
    ({"s": {"$contains": b"x"}}, ["$contains", "'s'", "bytes"]),
    ({"$nor": []}, ["$nor", "non-empty"]),
    ({"$nor": {"a": 1}}, ["$nor", "list"]),
    ({"$nor": [{"a": 1}, 3]}, ["$nor[1]", "int"]),
    ({"$nor": [{"a": {"$bad": 1}}]}, ["$nor[0]", "$bad"]),
    ({"a": {"$nor": [{"b": 1}]}}, ["$nor", "'a'", "filter level"]),
    ({"$regex": "x"}, ["$regex", "inside a field"]),
    ({"$contains": "x"}, ["$contains", "inside a field"]),
]


@pytest.mark.parametrize(("spec", "fragments"), ERRORS)
def test_malformed_new_operators_raise_naming_the_fault(spec: Any, fragments: list[str]) -> None:
    with pytest.raises(FilterError) as caught:
        compile_filter(spec)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_invalid_pattern_leaves_stderr_quiet(capfd: pytest.CaptureFixture[str]) -> None:
    """RE2 logs refused patterns to stderr by default; a FilterError is the only report."""
    with pytest.raises(FilterError):
        compile_filter({"s": {"$regex": "(?=a)"}})
    assert capfd.readouterr().err == ""


def test_huge_pattern_is_refused_not_built() -> None:
    """RE2 bounds a program's memory (8 MiB): a pattern past it is refused at compile time."""
    with pytest.raises(FilterError, match="RE2"):
        compile_filter({"s": {"$regex": "((a{100}){100}){100}"}})


# ------------------------------------------------------------------ linear time, by counting

class _CountingRe2:
    """Stands in for the re2 module inside lsmvec.request.filters: counts compilations and
    the searches made through the compiled pattern's public face."""

    def __init__(self) -> None:
        self.compiled = 0
        self.searches = 0
        self.error = re2.error
        self.Options = re2.Options

    def compile(self, pattern: str, options: Any = None) -> Any:
        self.compiled += 1
        real = re2.compile(pattern, options)
        counter = self

        class Counted:  # no _regexp: the filter must go through the public search
            def search(self, text: str) -> Any:
                counter.searches += 1
                return real.search(text)

        return Counted()


def test_pathological_regex_runs_through_re2_once_per_value(monkeypatch) -> None:
    """``(a+)+$`` on 'a' * n + 'b' backtracks exponentially in Python's re; RE2 scans once.
    The compiled filter must be RE2's (counted *before* the hostile value is searched, so a
    backtracking engine fails here instead of hanging), searched once per value."""
    fake = _CountingRe2()
    monkeypatch.setattr(filters_module, "re2", fake)
    compiled = compile_filter({"s": {"$regex": "(a+)+$"}})
    assert fake.compiled == 1
    values = [{"s": "a" * n + "b"} for n in (100_000, 200_000)] + [{"s": "a" * 1000}]
    assert compiled.match_many(values).tolist() == [False, False, True]
    assert fake.searches == 3
    listed = compile_filter({"s": {"$regex": "(a+)+$"}})
    assert not listed.matches({"s": ["a" * 100_000 + "b", "b", 5]})
    assert fake.searches == 5  # two str elements, the int is not searched


class _SpyRe2(_CountingRe2):
    """Counts compilations but hands back RE2's own compiled object (the fast path)."""

    def compile(self, pattern: str, options: Any = None) -> Any:
        self.compiled += 1
        return re2.compile(pattern, options)


def test_pathological_regex_on_the_fast_path_returns(monkeypatch) -> None:
    """The same hostile input through the real binding path simply returns."""
    spy = _SpyRe2()
    monkeypatch.setattr(filters_module, "re2", spy)
    compiled = compile_filter({"s": {"$regex": "(a+)+$"}})
    assert spy.compiled == 1  # RE2 it is: checked before the hostile value is searched
    assert not compiled.matches({"s": "a" * 100_000 + "b"})
    assert compiled.matches({"s": "b" + "a" * 100_000})


@settings(max_examples=200, deadline=None)
@given(PATTERNS, st.text(alphabet="abAB é", max_size=8))
def test_fast_search_agrees_with_the_public_search(pattern: str, text: str) -> None:
    """The filter calls RE2 through its binding's Match (2 us, not 11 us per value); it must
    answer what re2's public search and Python's re answer."""
    real = re2.compile(pattern, filters_module._RE2_OPTIONS)
    fast = filters_module._searcher(real)
    assert fast(text) == (real.search(text) is not None) == (re.search(pattern, text) is not None)


def test_term_plans_exclude_the_new_operators() -> None:
    assert compile_filter({"a": 1}).plan is not None  # the control: a plannable filter
    for spec in ({"a": 1, "s": {"$regex": "x"}}, {"a": 1, "s": {"$contains": "x"}},
                 {"$and": [{"a": 1}, {"$nor": [{"b": 2}]}]}, {"$nor": [{"a": 1}]},
                 {"a": {"$eq": 1, "$contains": 1}}):
        compiled = compile_filter(spec)
        assert compiled.plan is None, spec
    narrowing = compile_filter({"a": 1, "s": {"$regex": "x"}})
    assert narrowing.equality_terms() == [term_for("a", 1)]
    assert compile_filter({"$nor": [{"a": 1}]}).equality_terms() is None
    assert compile_filter({"tags": {"$contains": "x"}}).equality_terms() is None
