"""Postings (db/term_index.py): the packed term -> rows table behaves as the dict it replaced
(checked against a dict oracle on generated terms, paths with NUL and non-ASCII too), survives
pack/unpack through TermIndex, and costs a fraction of a dict of arrays."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lsmvec.db.term_index import Postings, TermIndex

paths = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)
terms = st.tuples(paths, st.binary(max_size=6))
tables = st.dictionaries(terms, st.lists(st.integers(0, 99), min_size=1, max_size=8, unique=True),
                         max_size=30)


@settings(max_examples=200, deadline=None)
@given(table=tables, probes=st.lists(terms, max_size=10))
def test_postings_answer_as_a_dict_of_sorted_rows(table, probes) -> None:
    oracle = {term: np.array(sorted(rows), np.int32) for term, rows in table.items()}
    packed = Postings(oracle.items())
    assert len(packed) == len(oracle)
    for term in [*oracle, *probes]:
        got = packed.get(term)
        if term in oracle:
            np.testing.assert_array_equal(got, oracle[term])
        else:
            assert got is None
    listed = dict(packed.items())
    assert listed.keys() == oracle.keys()
    for term, rows in listed.items():
        np.testing.assert_array_equal(rows, oracle[term])
    index = TermIndex(packed, 100)
    again = TermIndex.unpack(index.pack(), 100)
    assert {t: r.tolist() for t, r in again.rows.items()} == {t: r.tolist() for t, r in oracle.items()}


def test_paths_holding_nul_do_not_collide() -> None:
    """"a" + b"\\0b" and "a\\0" + b"b" join to the same bytes without the length prefix."""
    packed = Postings([(("a", b"\x00b"), np.array([1], np.int32)),
                       (("a\x00", b"b"), np.array([2], np.int32))])
    assert packed.get(("a", b"\x00b")).tolist() == [1]
    assert packed.get(("a\x00", b"b")).tolist() == [2]


def test_rows_out_of_range_are_refused_at_unpack() -> None:
    raw = TermIndex({("k", b"v"): np.array([0, 5], np.int32)}, 10).pack()
    with pytest.raises(ValueError):
        TermIndex.unpack(raw, 5)


def test_packed_postings_cost_a_tenth_of_a_dict_of_arrays() -> None:
    metadata = [{"title": f"document {i}", "n": i} for i in range(20_000)]
    index = TermIndex.build(metadata, len(metadata))
    assert len(index.rows) == 40_000
    as_dict = sum(r.nbytes + 112 + 64 + 40 for _, r in index.rows.items())  # array + tuple + bytes
    assert index.rows.nbytes * 5 < as_dict
