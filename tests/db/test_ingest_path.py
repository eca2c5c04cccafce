"""The ingest path of issue 17 (deliverable 4): what makes it fast must not make it weaker.

- The write queue runs a record's prepare (the memtable copy of its vectors, the lookup of its
  ids) in its stager thread while the leader seals, writes and syncs the group. A batch stays
  invisible to readers until that fdatasync has returned and the record is applied; one
  fdatasync per call (counted through the wal.fsio seam); a failed fdatasync leaves nothing
  of the batch in memory.
- Memtable.stage / upsert(staged=...): staged rows are only published by the upsert they were
  staged for, and only while they still fit; anything else copies again.
- The NumPy overload's cosine fast path gives byte for byte what the general path gives.
- A frozen memtable whose rows are all live hands its rows to the flush as a read-only view.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from lsmvec import Client
from lsmvec.db.memtable import Memtable
from lsmvec.db.write import STAGE_MIN_BYTES
from lsmvec.errors import InvalidVectorError, LogPoisonedError
from lsmvec.request.items import normalize_upsert
from lsmvec.wal import fsio

DIM = 16


def wait_until(predicate, timeout: float = 20.0) -> None:
    """Poll `predicate` until it holds, up to a deadline (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


class GatedSync(fsio.FileSystem):
    """Counts fdatasyncs; once armed, the next one waits for `release` (the device is slow)
    or fails with EIO."""

    def __init__(self) -> None:
        self.calls = 0
        self.armed = False
        self.fail = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def fdatasync(self, fd: int) -> None:
        self.calls += 1
        if self.armed:
            self.armed = False
            self.entered.set()
            assert self.release.wait(60), "the test never released the sync"
            if self.fail:
                raise OSError(5, "Input/output error")
        super().fdatasync(fd)


@pytest.fixture
def gated(monkeypatch) -> GatedSync:
    fs = GatedSync()
    monkeypatch.setattr(fsio, "FS", fs)
    return fs


def batch(start: int, stop: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed + start)
    return [str(i) for i in range(start, stop)], rng.standard_normal((stop - start, DIM)).astype(np.float32)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def stored(index, ids: list[str]) -> dict[str, np.ndarray]:
    return {h["id"]: np.asarray(h["vector"], np.float32) for h in index.get(ids, include=["vector"])}


@pytest.mark.parametrize("rows", [5000, 100])  # 320 KB: staged; 6.4 KB: under STAGE_MIN_BYTES
def test_a_batch_is_invisible_until_its_one_fdatasync_returns(tmp_path, key, gated, rows):
    staged_rows = rows if rows * DIM * 4 >= STAGE_MIN_BYTES else 0
    with Client(tmp_path, durability="fsync") as client:
        index = client.create_index("a", key, dimension=DIM, metric="cosine",
                                    background_compaction=False)
        index.upsert(*batch(0, 10))
        table = index._core.memtable
        new_ids, new_vectors = batch(10, 10 + rows)
        before = gated.calls
        gated.armed = True
        done = threading.Event()
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                index.upsert(new_ids, new_vectors)
            except BaseException as exc:  # handed to the test thread
                errors.append(exc)
            done.set()

        thread = threading.Thread(target=writer)
        thread.start()
        assert gated.entered.wait(30)
        # The stager copied the rows (before or during the sync): staged, not published.
        wait_until(lambda: table._staged_rows == staged_rows)
        assert table.n_rows == 10 and not done.is_set()
        assert index.get_num_vectors() == 10
        assert stored(index, new_ids) == {}
        hit = index.query(unit(new_vectors[:1])[0], top_k=1)[0]
        assert hit["id"] not in set(new_ids)
        assert index.stats() is not None  # other reads go on too
        gated.release.set()
        thread.join(30)
        assert not errors and done.is_set()
        assert gated.calls == before + 1  # one fdatasync for the call
        assert table.n_rows == 10 + rows and table._staged_rows == 0  # published
        got = stored(index, new_ids)
        assert set(got) == set(new_ids)
        expect = unit(new_vectors)
        for i, item_id in enumerate(new_ids):
            np.testing.assert_allclose(got[item_id], expect[i], rtol=1e-6, atol=1e-7)
        assert index.query(expect[0], top_k=1)[0]["id"] == new_ids[0]


def test_every_numpy_overload_call_is_one_fdatasync_before_it_returns(tmp_path, key, gated):
    with Client(tmp_path, durability="fsync") as client:
        index = client.create_index("a", key, dimension=DIM, metric="cosine",
                                    background_compaction=False)
        for call in range(20):
            before = gated.calls
            ids, vectors = batch(call * 50, call * 50 + 50)
            index.upsert(ids, vectors)  # the NumPy overload: list of str ids, float32 rows
            assert gated.calls == before + 1
        assert index.get_num_vectors() == 1000


def test_a_failed_fdatasync_leaves_nothing_of_the_batch_in_memory(tmp_path, key, gated):
    with Client(tmp_path, durability="fsync") as client:
        index = client.create_index("a", key, dimension=DIM, metric="cosine",
                                    background_compaction=False)
        acked_ids, acked = batch(0, 10)
        index.upsert(acked_ids, acked)
        gated.armed = gated.fail = True
        gated.release.set()
        lost_ids, lost = batch(10, 5010)  # big enough to be staged
        with pytest.raises(LogPoisonedError):
            index.upsert(lost_ids, lost)
        assert index._core.memtable.n_rows == 10  # staged rows were never published
        assert index.get_num_vectors() == 10 and stored(index, lost_ids) == {}
        with pytest.raises(LogPoisonedError):
            index.upsert(*batch(60, 61))
    with Client(tmp_path) as client:  # the record may or may not have reached the disk
        index = client.load_index("a", key)
        got = stored(index, acked_ids + lost_ids)
        for i, item_id in enumerate(acked_ids):
            np.testing.assert_allclose(got[item_id], unit(acked)[i], rtol=1e-6, atol=1e-7)
        assert len(got) in (10, 5010)


def test_the_stager_thread_ends_with_the_index(tmp_path, key):
    def stagers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("lsmvec-stage-")]

    before = len(stagers())
    with Client(tmp_path, durability="fsync") as client:
        index = client.create_index("a", key, dimension=DIM, background_compaction=False)
        index.upsert(*batch(0, 10))
        assert len(stagers()) == before  # a small batch: no stager
        index.upsert(*batch(10, 5010))
        index.upsert(*batch(5010, 10010))
        assert len(stagers()) == before + 1
    assert len(stagers()) == before


# -- Memtable.stage -------------------------------------------------------------------------------

def rows_of(table: Memtable, ids: list[str]) -> np.ndarray:
    return np.stack([table.vector(table.lookup(i)) for i in ids])


def test_staged_rows_are_published_only_by_the_upsert_they_were_staged_for():
    rng = np.random.default_rng(1)
    v = [rng.standard_normal((n, 4)).astype(np.float32) for n in (3, 2, 5, 4, 600)]
    ids = [[f"{k}-{i}" for i in range(len(part))] for k, part in enumerate(v)]
    table = Memtable(4, "euclidean", 1)
    table.upsert(1, ids[0], v[0], [None] * 3, [None] * 3)
    # Staged, then another upsert takes the rows: the token dies and the upsert copies again.
    token = table.stage(v[1])
    table.upsert(2, ids[2], v[2], [None] * 5, [None] * 5)
    table.upsert(3, ids[1], v[1], [None] * 2, [None] * 2, staged=token)
    # Two staged back to back (the second one grows the arrays past their capacity): both
    # published in order, the first staged rows carried over by the growth.
    first, second = table.stage(v[3]), table.stage(v[4])
    table.upsert(4, ids[3], v[3], [None] * 4, [None] * 4, staged=first)
    table.upsert(5, ids[4], v[4], [None] * 600, [None] * 600, staged=second)
    assert table.n_rows == 614 and table._staged_rows == 0
    for part, part_ids in zip(v, ids):
        np.testing.assert_array_equal(rows_of(table, part_ids), part)
    # Squared norms of staged rows are right: exact search finds each row at distance 0.
    all_ids = sum(ids, [])
    all_v = np.concatenate(v)
    found, dist = table.search(all_v, 1)
    assert [table.ids[r] for r in found[:, 0]] == all_ids
    np.testing.assert_allclose(dist[:, 0], 0, atol=1e-4)
    # A token of another table, or for other rows, is ignored.
    other = Memtable(4, "euclidean", 1)
    foreign = other.stage(v[0]) if other.dimension else None
    table.upsert(6, ["z"], v[0][:1], [None], [None], staged=foreign)
    stale = table.stage(v[2])
    table.upsert(7, ["y"], v[0][1:2], [None], [None], staged=stale)  # n differs: copied
    np.testing.assert_array_equal(rows_of(table, ["z", "y"]), v[0][:2])
    # A frozen table stages nothing.
    table.frozen = True
    assert table.stage(v[0]) is None


def test_a_staged_lookup_of_older_rows_is_used_only_while_no_write_came_between():
    rng = np.random.default_rng(3)
    first, second = (rng.standard_normal((3, 4)).astype(np.float32) for _ in range(2))
    table = Memtable(4, "euclidean", 1)
    table.upsert(1, ["a", "b", "c"], first, [None] * 3, [None] * 3)
    token = table.stage(second, ["a", "b", "x"])
    assert table.staged_older(token) == {"a", "b"}
    table.delete(2, ["a"])  # a write between stage and publish: the lookup is stale
    assert table.staged_older(token) is None
    table.upsert(3, ["a", "b", "x"], second, [None] * 3, [None] * 3, staged=token,
                 older=table.staged_older(token))
    assert table.n_rows == 6 and table.n_live == 4  # c, and the new a, b, x
    assert [table.lookup(i) for i in ("a", "b", "c", "x")] == [3, 4, 2, 5]
    assert table._dead[:6].tolist() == [True, True, False, False, False, False]
    np.testing.assert_array_equal(rows_of(table, ["a", "b", "x"]), second)
    # Unchanged in between: the staged lookup and row map are what the upsert uses.
    third = rng.standard_normal((2, 4)).astype(np.float32)
    token = table.stage(third, ["b", "y"])
    assert table.staged_older(token) == {"b"}
    table.upsert(4, ["b", "y"], third, [None] * 2, [None] * 2, staged=token,
                 older=table.staged_older(token))
    assert table.lookup("b") == 6 and table.lookup("y") == 7 and table._dead[4]
    assert table.n_live == 5


def test_a_fully_live_frozen_table_gives_its_rows_as_a_read_only_view():
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((50, 4)).astype(np.float32)
    ids = [f"i{k}" for k in range(50)]
    table = Memtable(4, "cosine", 1)
    table.upsert(1, ids[:30], vectors[:30], [b"c"] * 30, [{"k": 1}] * 30)
    table.upsert(2, ids[30:], vectors[30:], [None] * 20, [None] * 20)
    table.frozen = True
    table.seal_lists()
    got_ids, got, contents, metadata = table.live_arrays()
    assert got_ids == ids and contents == [b"c"] * 30 + [None] * 20
    assert metadata == [{"k": 1}] * 30 + [None] * 20
    np.testing.assert_array_equal(got, vectors)
    assert not got.flags.writeable
    # With an overwritten row the rows are gathered: a fresh array of the live versions.
    table2 = Memtable(4, "cosine", 1)
    table2.upsert(1, ids[:3], vectors[:3], [None] * 3, [None] * 3)
    table2.upsert(2, ids[1:2], vectors[10:11], [None], [None])
    got_ids, got, _c, _m = table2.live_arrays()
    assert got_ids == [ids[0], ids[2], ids[1]]
    np.testing.assert_array_equal(got, vectors[[0, 2, 10]])


# -- the NumPy overload's fast path -----------------------------------------------------------------

@pytest.mark.parametrize("scale", [1e-12, 1e-3, 1.0, 1e6, 1e15])
def test_the_cosine_fast_path_is_byte_identical_to_the_general_one(scale):
    rng = np.random.default_rng(int(np.log10(scale)) + 20)
    vectors = (rng.standard_normal((257, 384)) * scale).astype(np.float32)
    ids = [str(i) for i in range(257)]
    fast = normalize_upsert(ids, vectors=vectors, dimension=384, metric="cosine", embeds=False)
    general = normalize_upsert(ids, vectors=np.asfortranarray(vectors), dimension=384,
                               metric="cosine", embeds=False)  # not C-contiguous: general path
    assert fast.vectors.tobytes() == general.vectors.tobytes()
    assert fast.vectors.flags.c_contiguous and fast.vectors.flags.owndata
    assert not np.shares_memory(fast.vectors, vectors)


@pytest.mark.parametrize("bad, problem", [(0.0, "zero vector"), (np.nan, "NaN"), (np.inf, "NaN")])
def test_the_cosine_fast_path_names_a_bad_row_like_the_general_one(bad, problem):
    vectors = np.ones((5, 8), np.float32)
    vectors[3] = bad
    with pytest.raises(InvalidVectorError, match=f"vectors row 3 .*{problem}"):
        normalize_upsert([str(i) for i in range(5)], vectors=vectors, dimension=8,
                         metric="cosine", embeds=False)


def test_a_tiny_row_takes_the_careful_path_and_comes_out_unit():
    vectors = np.ones((3, 8), np.float32)
    vectors[1] = 1e-30  # its float32 sum of squares underflows
    out = normalize_upsert(["a", "b", "c"], vectors=vectors, dimension=8, metric="cosine",
                           embeds=False).vectors
    np.testing.assert_allclose(np.linalg.norm(out.astype(np.float64), axis=1), 1, rtol=1e-6)
