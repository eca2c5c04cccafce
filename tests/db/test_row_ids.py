"""RowIds (db/row_ids.py): a segment's ids packed into one buffer behave as the tuple of str
they replace -- checked against a list oracle on generated ids (ASCII and not) -- and cost a
fraction of its memory."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lsmvec.db.row_ids import RowIds

ids_strategy = st.one_of(
    st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=12), max_size=40),
    # all ASCII (the usual case): held as one str, read by slicing
    st.lists(st.text(st.characters(max_codepoint=127), max_size=12), max_size=40))


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
    assert [packed.id_bytes(i) for i in range(len(ids))] == [i.encode("utf-8") for i in ids]
    assert packed.take(tuple(np.int64(r) for r in rows)) == [ids[r] for r in rows]
    again = RowIds.unpack(packed.pack(), len(ids))
    assert again == ids and list(again) == ids and again.take(rows) == [ids[r] for r in rows]
    data_bytes, ends = packed.packed()
    assert bytes(data_bytes) == "".join(ids).encode("utf-8") and ends[-1] == len(data_bytes)
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
    assert packed.nbytes == 6 * len(ids) + 4 * (len(ids) + 1)  # 4-byte offsets
    assert packed.nbytes * 6 < as_tuple  # 10 bytes a row against ~63
    wide = ["é" * 3 + str(i) for i in range(1000)]  # the non-ASCII path: byte offsets
    assert list(RowIds(wide)) == wide


def test_pack_round_trips_through_msgpack_and_refuses_damage():
    import msgpack
    ids = ["a", "", "東京", "x" * 300, "7"]
    raw = msgpack.unpackb(msgpack.packb(RowIds(ids).pack()))
    assert RowIds.unpack(raw, len(ids)) == ids and list(RowIds.unpack(raw, 5)) == ids
    empty = msgpack.unpackb(msgpack.packb(RowIds([]).pack()))
    assert RowIds.unpack(empty, 0) == []
    ends = np.frombuffer(raw["ends"], "<u8")
    for bad in ({**raw, "format": 2}, {**raw, "extra": 1},
                {**raw, "data": raw["data"][:-1]},  # the last offset past the data
                {**raw, "ends": ends[::-1].astype("<u8").tobytes()},  # falling offsets
                {**raw, "ends": (ends + 1).astype("<u8").tobytes()}):  # not from 0
        with pytest.raises(ValueError):
            RowIds.unpack(bad, len(ids))
    with pytest.raises(ValueError):
        RowIds.unpack(raw, len(ids) + 1)  # another row count


@settings(max_examples=100, deadline=None)
@given(flags=st.lists(st.booleans(), max_size=70), data=st.data())
def test_bare_flags_ride_with_the_ids_and_read_back(flags: list[bool], data) -> None:
    ids = [str(i) for i in range(len(flags))]
    row_ids = RowIds(ids, np.array(flags, bool))
    back = RowIds.from_bytes(row_ids.to_bytes(), len(ids))
    assert back == ids and back.any_bare == any(flags)
    assert [back.is_bare(r) for r in range(len(ids))] == flags
    rows = np.array(data.draw(st.lists(st.integers(0, max(len(ids) - 1, 0)), max_size=20)
                              if ids else st.just([])), np.int64)
    assert back.bare_of(rows).tolist() == [flags[r] for r in rows.tolist()]
    if not any(flags):  # no flag set costs nothing and writes nothing
        assert "bare" not in row_ids.pack()


def test_bare_flags_that_do_not_fit_the_rows_are_refused() -> None:
    raw = RowIds(["a", "b", "c"], np.array([True, False, True])).pack()
    for bad in (b"", b"\x00\x00", 7):
        with pytest.raises(ValueError):
            RowIds.unpack({**raw, "bare": bad}, 3)
    with pytest.raises(ValueError):
        RowIds(["a", "b"], np.array([True]))


def test_segments_keep_their_ids_in_a_sealed_file_and_older_forms_still_read(tmp_path,
                                                                            monkeypatch):
    """New segments keep their ids packed in their folder (ids.bin, sealed, authenticated like
    the other files; no store value). A segment written before that file existed keeps them in
    the store -- packed, or older still a list of str -- and opens the same."""
    import msgpack

    import lsmvec.db.jobs as jobs
    from lsmvec import Client, generate_key
    from lsmvec.db.version import _rows_key, read_row_ids
    from lsmvec.errors import CorruptionError
    key = generate_key()
    want = [f"id-{i}" for i in range(50)]
    with Client(tmp_path) as client:
        index = client.create_index("r", key, dimension=4)
        index.upsert([(f"id-{i}", np.full(4, i, np.float32)) for i in range(50)])
        index.flush()
        core = index._core
        (source,) = core.segments
        assert core.store.get_meta(_rows_key(source.id)) is None
        folder = core.folder / "segments"
    (ids_file,) = folder.glob("*/ids.bin")
    assert b"id-7" not in ids_file.read_bytes()  # sealed
    with Client(tmp_path) as client:
        index = client.load_index("r", key)
        assert list(index._core.segments[0].ids) == want
    for form in ("packed", "list"):  # a segment without ids.bin: its ids in the store
        build = jobs.build_segment_folder
        monkeypatch.setattr(jobs, "build_segment_folder",
                            lambda core, seg_id, vectors, ids, **kw: build(core, seg_id, vectors,
                                                                           None, **kw))
        with Client(tmp_path / form) as client:
            index = client.create_index("r", key, dimension=4)
            index.upsert([(f"id-{i}", np.full(4, i, np.float32)) for i in range(50)])
            index.flush()
            core = index._core
            (source,) = core.segments
            stored = RowIds(want).pack() if form == "packed" else want
            with core.commit_lock:
                core.store.commit(lambda txn: txn.put_meta(_rows_key(source.id), stored))
            assert read_row_ids(core.store, source.id, 50) == want
            assert not list((core.folder / "segments").glob("*/ids.bin"))
        monkeypatch.undo()
        with Client(tmp_path / form) as client:
            index = client.load_index("r", key)
            assert sorted(index.list_ids()) == sorted(want)
            got = index.query(np.full(4, 7, np.float32), top_k=1, include=["distance"])
            assert got[0]["id"] == "id-7"
            index.upsert([("id-50", np.full(4, 50, np.float32))])
            old_id = index._core.segments[0].id
            index.train()  # one merged segment, with its ids.bin; the old store value goes
            (source,) = index._core.segments
            assert index._core.store.get_meta(_rows_key(old_id)) is None
            assert index._core.store.get_meta(_rows_key(source.id)) is None
            assert sorted(source.ids) == sorted([*want, "id-50"])
        with Client(tmp_path / form) as client:
            assert sorted(client.load_index("r", key).list_ids()) == sorted([*want, "id-50"])
    # ids.bin is authenticated: a file whose ids are not the segment's is refused
    raw = RowIds([f"x-{i}" for i in range(50)]).to_bytes()
    assert RowIds.from_bytes(raw, 50) == [f"x-{i}" for i in range(50)]
    with pytest.raises(ValueError):
        RowIds.from_bytes(raw, 49)
    with pytest.raises(ValueError):
        RowIds.from_bytes(msgpack.packb([1, 2]), 2)
    with pytest.raises(ValueError):
        RowIds.from_bytes(b"\xc1garbage", 2)
    ids_file.write_bytes(ids_file.read_bytes()[:-1] + bytes([ids_file.read_bytes()[-1] ^ 1]))
    with Client(tmp_path) as client:
        with pytest.raises(CorruptionError) as info:
            client.load_index("r", key)
    assert "ids.bin" in str(info.value.path)
