"""Any filter over a segment's term index (db/filter_masks.py) against the independent oracle of
tests/filter_oracle.py: an exact mask equals the oracle's rows, an inexact one holds them all;
through pack/unpack, with pattern fields (n-grams) and hidden (filterable False) fields, and on
an index written before the kind terms (which must then say "inexact", never answer wrongly)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filter_oracle import FILTERS, METADATA, PATHS, SCALARS, TEXT, oracle_match

from lsmvec.db import filter_masks, ngrams
from lsmvec.db.filter_masks import segment_mask
from lsmvec.db.term_index import TermIndex
from lsmvec.request.filters import compile_filter
from lsmvec.request.schema import MetadataSchema

RANGE_AND_SET = st.dictionaries(
    PATHS, st.one_of(
        st.tuples(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
                  st.one_of(st.integers(-2, 3), st.floats(-3, 3), TEXT)).map(lambda p: {p[0]: p[1]}),
        st.lists(SCALARS, max_size=3).map(lambda m: {"$nin": m}),
        st.lists(SCALARS, max_size=2).map(lambda v: {"$eq": v}),  # whole-list equality
        st.just({"$eq": {"t": 1}})),
    min_size=1, max_size=2)
ANY_FILTER = st.one_of(FILTERS, RANGE_AND_SET,
                       st.tuples(FILTERS, RANGE_AND_SET).map(lambda t: {"$or": list(t)}))
SCHEMAS = st.sampled_from([None, {"s": {"pattern": True}}, {"t": {"filterable": False}},
                           {"s": {"pattern": True}, "n": {"filterable": False}}])


def _check(spec: dict, items: list, index: TermIndex) -> bool:
    mask, exact = segment_mask(compile_filter(spec).spec, index)
    want = np.array([oracle_match(spec, m) for m in items], bool)
    assert mask.shape == want.shape
    if exact:
        assert mask.tolist() == want.tolist(), spec
    else:
        assert not (want & ~mask).any(), spec  # a superset: candidates, checked by the caller
    return exact


@settings(max_examples=400, deadline=None)
@given(ANY_FILTER, st.lists(METADATA, min_size=1, max_size=8), SCHEMAS)
def test_masks_agree_with_the_oracle(spec: dict, items: list, schema) -> None:
    index = TermIndex.build(items, len(items), MetadataSchema.check(schema))
    _check(spec, items, index)
    _check(spec, items, TermIndex.unpack(index.pack(), len(items)))


def test_every_operator_is_decided_exactly_by_the_index_alone() -> None:
    items = [{"n": i, "s": f"str{i}", "tags": ["x", "y"] if i % 5 == 0 else ["z"],
              "o": {"k": i} if i % 2 else None, "f": i / 2} for i in range(30)]
    index = TermIndex.build(items, 30, MetadataSchema.check({"s": {"pattern": True}}))
    for spec in ({"s": {"$regex": "^str1"}}, {"s": {"$contains": "r2"}}, {"tags": {"$contains": "x"}},
                 {"o": {"$exists": True}}, {"o.k": {"$exists": False}}, {"s": {"$gt": "str5"}},
                 {"$nor": [{"n": {"$lt": 20}}]}, {"n": {"$not": {"$in": [1, 2]}}},
                 {"f": {"$lte": 2.5}, "s": {"$ne": "str1"}}, {"s": {"$regex": "(?i)STR2"}}):
        assert _check(spec, items, index), spec


def test_list_and_dict_operands_are_candidates_not_answers() -> None:
    items = [{"t": ["x"]}, {"t": ["x", "y"]}, {"t": "x"}, {}]
    index = TermIndex.build(items, 4)
    assert not _check({"t": ["x"]}, items, index)
    mask, _ = segment_mask({"t": ["x"]}, index)
    assert mask.tolist() == [True, True, True, False]  # rows where t is present


def test_hidden_fields_are_not_in_the_index_and_never_answered_from_it() -> None:
    items = [{"secret": {"pin": i}, "pub": i} for i in range(6)]
    index = TermIndex.build(items, 6, MetadataSchema.check({"secret": {"filterable": False}}))
    assert {path for (path, _), _ in index.rows.items()} == {"pub"}
    assert "secret.pin" not in index.ranges
    assert index.mask([[("secret.pin", b"i\x01")]]) is None  # plans on it: undecided
    assert not _check({"secret.pin": 3}, items, index)
    assert _check({"pub": {"$gte": 3}}, items, index)
    again = TermIndex.unpack(index.pack(), 6)
    assert again.hidden == ("secret",) and not _check({"secret.pin": 3}, items, again)


def test_an_index_without_kind_terms_never_answers_exists_or_contains() -> None:
    """Segments written before the kind terms: $exists / $contains give candidates only."""
    items = [{"t": []}, {"t": {}}, {"t": "ab"}, {}]
    raw = TermIndex.build(items, 4).pack()
    raw["t"] = [entry for entry in raw["t"] if entry[1] not in (b"[", b"{")]
    del raw["k"]
    old = TermIndex.unpack(raw, 4)
    assert not old.kinds
    for spec in ({"t": {"$exists": True}}, {"t": {"$contains": "a"}}, {"t": {"$exists": False}}):
        assert not _check(spec, items, old)
        assert _check(spec, items, TermIndex.build(items, 4))


def test_ngrams_test_only_the_values_holding_the_needle(monkeypatch) -> None:
    values = [f"item-{i:05d}-{'red' if i % 100 == 0 else 'blue'}" for i in range(2000)]
    items = [{"s": v} for v in values]
    plain = TermIndex.build(items, len(items))
    pattern = TermIndex.build(items, len(items), MetadataSchema.check({"s": {"pattern": True}}))
    assert set(pattern.grams) == {"s"} and not plain.grams
    tested: list[str] = []
    real = filter_masks._Test.__call__

    def counting(self, text: str) -> bool:
        tested.append(text)
        return real(self, text)

    monkeypatch.setattr(filter_masks._Test, "__call__", counting)
    for spec, at_most in (({"s": {"$contains": "red"}}, 20), ({"s": {"$regex": "-0+1.*red$"}}, 20),
                          ({"s": {"$contains": "00123"}}, 10)):
        for index, bound in ((plain, len(values)), (pattern, at_most)):
            tested.clear()
            assert _check(spec, items, index)
            assert 0 < len(tested) <= bound, (spec, len(tested))
    tested.clear()
    assert _check({"s": {"$regex": "red|blue"}}, items, pattern)  # no required literal: all
    assert len(tested) == len(values)


@pytest.mark.parametrize(("pattern", "literals"), [
    ("abc", ["abc"]), ("ab(c|d)ef", []), ("abcd(x|y)efg", ["abcd", "efg"]), ("abc|def", []),
    ("(?i)abc", []), ("^str1", ["str1"]), (r"x\d+yyy", ["yyy"]), ("a.bcd", ["bcd"]),
    (r"\Qabc\E", []), ("ab", []), ("(?s)a.bcde", ["bcde"]),
])
def test_required_literals_are_sound(pattern: str, literals: list[str]) -> None:
    assert ngrams.required_literals(pattern) == literals
