"""The store's batched item edits (StoreTxn.replace_many / carry_items, ItemValues.key_order /
locations_of / moved_many) against a plain dict of what each key should hold.

A flush puts its items with replace_many and learns the rows they supersede; a merge carries
items with carry_items, re-pointing only those the store still places at their old row. Both
walk their keys in key_order; the outcome must be the one a get and a put per item in any
order would give.
"""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lsmvec.disk.crypto import IndexCipher, generate_key
from lsmvec.disk.item_values import LOCATION, key_order
from lsmvec.disk.store import Store
from lsmvec.errors import CorruptionError


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path, IndexCipher(generate_key(), os.urandom(16)), create=True,
              initial={b"manifest": {"v": 1}})
    yield s
    s.close()


def _item(i: int) -> tuple[object, object]:
    """Contents and metadata of item i: a third bare, a third with metadata, a third both."""
    if i % 3 == 0:
        return None, None
    if i % 3 == 1:
        return None, {"i": i}
    return b"c%d" % i, {"i": i, "t": "x" * (i % 7)}


def _flush(store: Store, ids: list[str], segment: int):
    """Rows 0.. of `segment` as a flush writes them; returns what replace_many reported."""
    contents, metadata = zip(*(_item(int(i)) for i in ids)) if ids else ((), ())
    bare = store.values.bare_flags(list(contents), list(metadata))
    keys, values = store.values.prepare(ids, segment, list(contents), list(metadata), bare)
    order = key_order(keys)
    got = []
    store.commit(lambda txn: got.append(txn.replace_many([keys[i] for i in order],
                                                          [values[i] for i in order])))
    segments, rows, held = got[0]
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return segments[back], rows[back], held[back]


def _stored(store: Store, item_id: str):
    with store.env.begin(db=store._items) as txn:
        key = store._cipher.id_hash(item_id)
        value = txn.get(key)
    return None if value is None else store.values.open_item(key, value)


def test_key_order_is_lmdbs_bytewise_order_of_random_keys() -> None:
    keys = [os.urandom(16) for _ in range(2000)] + [bytes(16), b"\xff" * 16,
                                                    b"\x01" + bytes(15)]
    random.Random(1).shuffle(keys)
    assert [keys[i] for i in key_order(keys)] == sorted(keys)
    assert key_order([]).size == 0
    with pytest.raises(ValueError, match="one length"):
        key_order([bytes(16), bytes(24)])
    with pytest.raises(ValueError, match="multiple of 8"):
        key_order([b"abc", b"abd"])


def test_replace_many_reports_the_rows_it_supersedes(store: Store) -> None:
    ids = [str(i) for i in range(600)]
    segments, rows, held = _flush(store, ids, 3)
    assert not held.any()  # all new
    again = ids[::2] + [str(i) for i in range(600, 700)]
    segments, rows, held = _flush(store, again, 4)
    for pos, item_id in enumerate(again):
        if int(item_id) < 600:  # superseded its row of segment 3
            assert held[pos] and (segments[pos], rows[pos]) == (3, ids.index(item_id))
        else:
            assert not held[pos]
    for pos, item_id in enumerate(again):
        item = _stored(store, item_id)
        assert (item.segment, item.row) == (4, pos)
        contents, metadata = _item(int(item_id))
        if contents is None and metadata is None:
            assert item.id is None  # bare
        else:
            assert (item.id, item.contents, item.metadata) == (item_id, contents, metadata)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 700), data=st.data())
def test_carry_items_moves_exactly_the_items_still_at_their_old_row(tmp_path_factory, n,
                                                                       data) -> None:
    """Some items are superseded (a newer flush), some deleted, some never stored, before the
    merge commits: only those still placed at their origin move; the others are untouched."""
    folder = tmp_path_factory.mktemp("carry")
    store = Store(folder, IndexCipher(generate_key(), os.urandom(16)), create=True,
                  initial={b"manifest": {"v": 1}})
    try:
        ids = [str(i) for i in range(n)]
        _flush(store, ids, 1)
        fate = data.draw(st.lists(st.sampled_from(["stay", "newer", "deleted", "absent"]),
                                  min_size=n, max_size=n))
        newer = [i for i, f in zip(ids, fate) if f == "newer"]
        if newer:
            _flush(store, newer, 2)
        store.commit(lambda txn: [txn.delete_item(i) for i, f in zip(ids, fate)
                                  if f in ("deleted", "absent")])
        expected = {i: (_stored(store, i) if f != "absent" else None) for i, f in zip(ids, fate)}
        # the merge: new rows in a shuffled order, the carried ids as the merge lists them
        perm = data.draw(st.permutations(range(n)))
        carried_ids = [ids[p] for p in perm]
        keys = store.values.keys(carried_ids)
        order = key_order(keys)
        origin_seg = np.ones(n, np.int64)
        origin_row = np.asarray(perm, np.int64)
        out = []
        store.commit(lambda txn: out.append(txn.carry_items(
            [keys[i] for i in order], origin_seg[order], origin_row[order], 9, order)))
        carried = np.empty(n, bool)
        carried[order] = out[0]
        for new_row, item_id in enumerate(carried_ids):
            stays = fate[int(item_id)] == "stay"
            assert carried[new_row] == stays, (item_id, fate[int(item_id)])
            item = _stored(store, item_id)
            before = expected[item_id]
            if stays:
                assert (item.segment, item.row) == (9, new_row)
                assert (item.id, item.contents, item.metadata) == (before.id, before.contents,
                                                                   before.metadata)
            elif before is None:
                assert item is None
            else:
                assert item == before
    finally:
        store.close()


def test_a_value_too_short_for_a_location_is_corruption(store: Store) -> None:
    key = store._cipher.id_hash("x")
    store.commit(lambda txn: txn.put_many([key], [b"\x01\x02\x03"]))  # damage
    with pytest.raises(CorruptionError, match="too short"):
        store.commit(lambda txn: txn.carry_items([key], np.array([1]), np.array([0]), 2,
                                                 np.array([0])))
    with pytest.raises(CorruptionError, match="too short"):
        store.commit(lambda txn: txn.replace_many([key], [LOCATION.pack(2, 0)]))
    with store.env.begin(db=store._items) as txn:
        assert txn.get(key) == b"\x01\x02\x03"  # a refused edit wrote nothing
