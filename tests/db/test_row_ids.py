"""RowIds (db/row_ids.py): a segment's ids packed into one buffer behave as the tuple of str
they replace -- checked against a list oracle on generated ids (ASCII and not) -- and cost a
fraction of its memory."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lsmvec.db.row_ids import RowIds

ids_strategy = st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
                        max_size=40)


@settings(max_examples=200, deadline=None)
@given(ids=ids_strategy, data=st.data())
def test_row_ids_read_back_as_the_list_they_were_made_from(ids: list[str], data) -> None:
    packed = RowIds(ids)
    assert len(packed) == len(ids)
    assert list(packed) == ids and packed == ids and packed == tuple(ids)
    assert [packed[i] for i in range(len(ids))] == ids
    assert [packed[-i] for i in range(1, len(ids) + 1)] == [ids[-i] for i in range(1, len(ids) + 1)]
    rows = data.draw(st.lists(st.integers(0, max(0, len(ids) - 1)), max_size=20)) if ids else []
    assert packed.take(rows) == [ids[r] for r in rows]
    assert packed.take(np.asarray(rows, np.int64)) == [ids[r] for r in rows]
    if ids:  # past _GATHER_FROM rows an array takes its offsets in vectorised gathers
        many = data.draw(st.lists(st.integers(0, len(ids) - 1), min_size=300, max_size=400))
        assert packed.take(np.asarray(many, np.int32)) == [ids[r] for r in many]
    start, stop, step = data.draw(st.tuples(st.integers(-50, 50), st.integers(-50, 50),
                                            st.sampled_from([1, 2, -1, 3])))
    assert packed[start:stop:step] == ids[start:stop:step]
    for value in ids[:5]:
        assert packed.index(value) == ids.index(value) and value in packed
    if "absent\x00" not in ids:
        assert "absent\x00" not in packed
        with pytest.raises(ValueError):
            packed.index("absent\x00")
    assert RowIds(iter(ids)) == packed  # any iterable
    assert packed != [*ids, "x"] and (not ids or packed != ids[:-1])


def test_out_of_range_rows_raise_index_error() -> None:
    packed = RowIds(["a", "b"])
    for bad in (2, -3, 10):
        with pytest.raises(IndexError):
            packed[bad]
    assert RowIds() == [] and len(RowIds()) == 0


def test_packed_ids_cost_a_fraction_of_a_tuple_of_str() -> None:
    ids = [str(i) for i in range(100_000, 200_000)]
    packed = RowIds(ids)
    as_tuple = sys.getsizeof(tuple(ids)) + sum(sys.getsizeof(i) for i in ids)
    assert packed.nbytes == 6 * len(ids) + 8 * (len(ids) + 1)
    assert packed.nbytes * 4 < as_tuple  # 14 bytes a row against ~63
    wide = ["é" * 3 + str(i) for i in range(1000)]  # the non-ASCII path: byte offsets
    assert list(RowIds(wide)) == wide
