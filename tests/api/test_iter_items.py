"""iter_items (issue 18, deliverable 5) against a dict oracle: every live item exactly once, in
ascending id order, across a merged segment, a flushed segment, a frozen memtable and the live
memtable, after flush + compact and after reopen; filters (hand-written and hypothesis-drawn)
against the Python predicates of tests/filter_oracle.py; resumption from a cursor after a
reopen; damaged and foreign cursors refused before anything; a writer thread upserting and
deleting while the iteration runs; work per batch bounded by the batch, not the index (counted);
the async face under asyncio and trio."""
from __future__ import annotations

import random
import threading
import tracemalloc
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from filter_oracle import FILTERS, oracle_match, random_metadata
from lsmvec import AsyncClient, Client, ItemBatch, generate_key
from lsmvec.db import iteration, matching, reads
from lsmvec.db.row_ids import RowIds
from lsmvec.errors import FilterError, InvalidArgumentError, InvalidCursorError, InvalidTypeError

DIM = 4


def _metadata(rng: random.Random, i: int) -> dict | None:
    return random_metadata(rng, i, depth=1, list_p=0.2, dict_p=0.3, text_p=0.65, text_len=4,
                           none_every=13)


def freeze(index) -> None:
    """Hand the live memtable to the (stopped) flusher: a frozen memtable stays in memory."""
    core = index._core
    with core.rw.write():
        core.freeze()


class Layout:
    """Items in a merged segment, a flushed segment, a frozen memtable and the live memtable --
    with newer versions shadowing older rows and deletes in every layer -- and the dict model
    {id: (vector, contents, metadata)} of what is live."""

    def __init__(self, folder: Path, key: bytes):
        self.folder, self.key = folder, key
        self.model: dict[str, tuple[np.ndarray, bytes, dict | None]] = {}
        self.rng, self.vrng = random.Random(5), np.random.default_rng(5)
        self.client = Client(folder)
        self.index = self.client.create_index("it", key, dimension=DIM,
                                              background_compaction=False)
        self.put(range(0, 70), 0)
        self.index.flush()
        self.index.train()  # one merged segment
        self.put(range(50, 120), 1)
        self.delete(range(0, 120, 9))
        self.index.flush()
        self.put(range(100, 150), 2)
        self.delete(range(3, 150, 11))
        freeze(self.index)
        self.put(range(140, 180), 3)
        self.put(range(0, 180, 7), 4)  # the live memtable shadows rows of every other layer
        self.delete(range(5, 180, 17))
        stats = self.index.stats()
        assert len(stats["segments"]) == 2 and stats["frozen_memtables"] == 1, stats
        assert stats["memtable_live"] > 0, stats

    def put(self, ids, gen: int) -> None:
        items = []
        for i in ids:
            item_id = f"k{i}" if i % 3 else str(i)  # mixed spellings: str order, not numeric
            vector = self.vrng.standard_normal(DIM).astype(np.float32)
            meta = _metadata(self.rng, i)
            items.append({"id": item_id, "vector": vector, "contents": f"c{i}-{gen}",
                          "metadata": meta})
            self.model[item_id] = (vector, f"c{i}-{gen}".encode(), meta)
        self.index.upsert(items)

    def delete(self, ids) -> None:
        doomed = [f"k{i}" if i % 3 else str(i) for i in ids]
        self.index.delete(doomed)
        for item_id in doomed:
            self.model.pop(item_id, None)

    def reopen(self) -> None:
        self.client.close()
        self.client = Client(self.folder)
        self.index = self.client.load_index("it", self.key)

    def expected(self, spec: dict | None = None) -> list[str]:
        return sorted(i for i, (_v, _c, meta) in self.model.items()
                      if spec is None or oracle_match(spec, meta))


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[Layout]:
    built = Layout(tmp_path / "data", generate_key())
    try:
        yield built
    finally:
        built.client.close()


def collect(batches, batch_size: int, *, full: bool = True) -> list[dict]:
    """Every item of `batches`, checking each batch: an ItemBatch, never empty, at most
    batch_size items (exactly batch_size but the last one when `full`), a str cursor."""
    out: list[dict] = []
    batches = list(batches)
    for n, batch in enumerate(batches):
        assert isinstance(batch, ItemBatch) and isinstance(batch.cursor, str)
        assert 0 < len(batch.items) <= batch_size
        if full and n < len(batches) - 1:
            assert len(batch.items) == batch_size
        out.extend(batch.items)
    return out


def check_items(layout: Layout, items: list[dict], include: tuple[str, ...]) -> None:
    ids = [item["id"] for item in items]
    assert ids == layout.expected()  # ascending, each live id once, no dead one
    for item in items:
        vector, contents, meta = layout.model[item["id"]]
        assert list(item) == ["id", *include]
        if "vector" in include:
            np.testing.assert_array_equal(np.asarray(item["vector"], np.float32), vector)
        if "contents" in include:
            assert item["contents"] == contents
        if "metadata" in include:
            assert item["metadata"] == (meta or {})


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_every_live_item_once_in_every_layer(layout: Layout, batch_size: int) -> None:
    full = ("vector", "contents", "metadata")
    cache = layout.index._core.item_cache
    layout.index.query(np.ones(DIM, np.float32), top_k=5, include=["metadata"])
    cached = len(cache._entries)
    check_items(layout, collect(layout.index.iter_items(batch_size=batch_size), batch_size), full)
    assert len(cache._entries) == cached  # a scan does not evict the queries' hot items
    items = collect(layout.index.iter_items(batch_size, include=["metadata"]), batch_size)
    check_items(layout, items, ("metadata",))
    layout.index.flush()
    layout.index.compact()
    check_items(layout, collect(layout.index.iter_items(batch_size, include=None), batch_size), ())
    layout.reopen()
    layout.put(range(170, 200), 5)  # the reopened index answers from a memtable too
    layout.delete(range(1, 200, 23))
    check_items(layout, collect(layout.index.iter_items(batch_size), batch_size), full)


def test_empty_index_yields_no_batch(tmp_path: Path) -> None:
    with Client(tmp_path) as client:
        index = client.create_index("e", generate_key(), dimension=DIM)
        assert list(index.iter_items()) == []
        index.upsert([("a", [1.0, 0, 0, 0])])
        index.delete(["a"])
        assert list(index.iter_items(batch_size=1)) == []


HAND_FILTERS = [
    {"s": {"$exists": True}},
    {"t": {"$in": [True, 1, "a"]}},
    {"$or": [{"n": {"$gt": 0}}, {"s": {"$contains": "a"}}]},
    {"s": {"$regex": "^[aA]"}},
    {"$nor": [{"s": {"$exists": True}}]},
    {"n": "no such value"},
]


@pytest.mark.parametrize("spec", HAND_FILTERS)
def test_filters_equal_the_oracle(layout: Layout, spec: dict) -> None:
    for batch_size in (1, 5, 64):
        items = collect(layout.index.iter_items(batch_size, include=["metadata"], filters=spec),
                        batch_size)
        assert [item["id"] for item in items] == layout.expected(spec), (spec, batch_size)
        assert all(item["metadata"] == (layout.model[item["id"]][2] or {}) for item in items)
    layout.index.flush()
    layout.index.compact()
    items = collect(layout.index.iter_items(3, include=(), filters=spec), 3)
    assert [item["id"] for item in items] == layout.expected(spec), spec


@pytest.fixture(scope="module")
def drawn_layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Layout]:
    built = Layout(tmp_path_factory.mktemp("iter-drawn"), generate_key())
    try:
        yield built
    finally:
        built.client.close()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=FILTERS)
def test_drawn_filters_equal_the_oracle(drawn_layout: Layout, spec: dict) -> None:
    batches = drawn_layout.index.iter_items(4, include=(), filters=spec)
    assert [item["id"] for item in collect(batches, 4)] == drawn_layout.expected(spec), spec


def test_resume_from_a_cursor_after_reopen(layout: Layout) -> None:
    expected = layout.expected()
    batches = layout.index.iter_items(batch_size=10, include=["metadata"])
    first = [next(batches) for _ in range(3)]
    cursor = first[-1].cursor
    seen = [item["id"] for batch in first for item in batch.items]
    assert seen == expected[:30]
    layout.reopen()  # a cursor outlives the process that issued it
    rest = collect(layout.index.iter_items(batch_size=10, include=["metadata"], cursor=cursor), 10)
    assert seen + [item["id"] for item in rest] == expected
    # any batch's cursor resumes right after that batch, whatever the batch size then
    batches = list(layout.index.iter_items(batch_size=13, include=()))
    for at, batch in enumerate(batches):
        after = collect(layout.index.iter_items(batch_size=4, include=(), cursor=batch.cursor), 4)
        before = [item["id"] for b in batches[:at + 1] for item in b.items]
        assert before + [item["id"] for item in after] == expected
    assert list(layout.index.iter_items(cursor=batches[-1].cursor)) == []


def test_bad_arguments_and_cursors_are_refused_before_anything(layout: Layout, tmp_path: Path
                                                               ) -> None:
    index = layout.index
    cursor = next(index.iter_items(batch_size=5)).cursor
    flipped = cursor[:10] + ("A" if cursor[10] != "A" else "B") + cursor[11:]
    for bad in (flipped, cursor[:-2], cursor + "AA", "", "not base64 !", "AAAA" * 20):
        with pytest.raises(InvalidCursorError, match="cursor"):
            index.iter_items(cursor=bad)  # raised by the call, not by the first next()
    with pytest.raises(InvalidCursorError):
        index.iter_items(cursor=cursor.encode())
    # another index's cursor -- same key, same ids -- does not open here
    other = layout.client.create_index("other", layout.key, dimension=DIM)
    other.upsert([(item_id, [1.0, 2.0, 3.0, 4.0]) for item_id in layout.expected()[:20]])
    foreign = next(other.iter_items(batch_size=5)).cursor
    with pytest.raises(InvalidCursorError, match="another index"):
        index.iter_items(cursor=foreign)
    for size in (0, -1, True, 1.5, "10", None, iteration.MAX_BATCH_SIZE + 1):
        with pytest.raises(InvalidArgumentError, match="batch_size"):
            index.iter_items(batch_size=size)
    with pytest.raises(InvalidArgumentError, match="distance"):
        index.iter_items(include=["distance"])
    with pytest.raises(FilterError):
        index.iter_items(filters={"n": {"$bogus": 1}})
    with pytest.raises(InvalidTypeError):
        index.iter_items(index_key="not a key")
    batches = index.iter_items(batch_size=1)
    next(batches)
    index.close()
    with pytest.raises(Exception, match="closed"):
        next(batches)


def test_ids_sort_in_str_order() -> None:
    """The segment scan's permutation (NumPy radix on UTF-8 bytes) is Python's str order,
    including ids that are prefixes of others, NULs, multi-byte characters and shared prefixes
    longer than a chunk."""
    rng = random.Random(3)
    alphabet = ["a", "b", "\x00", "é", "€", "😀", "0", "z" * 9]
    for _ in range(500):
        ids = list({"".join(rng.choice(alphabet)
                            for _ in range(rng.randint(1, rng.choice([2, 9, 30]))))
                    for _ in range(rng.randint(1, 40))})
        order = iteration.id_order(RowIds(ids))
        assert [ids[r] for r in order] == sorted(ids)
    assert len(iteration.id_order(RowIds([]))) == 0


# ----------------------------------------------------------------------------- concurrent writes

def test_concurrent_writes_each_stable_id_once(tmp_path: Path) -> None:
    """A writer thread adds new ids, deletes ids for good and deletes-then-rewrites others,
    while small batches are read -- with a tiny memtable and flushes / compactions from the
    writer, so the sources change under the iteration. Each batch waits (on a condition, with
    a deadline) until the writer has written again, so writes land between every two batches.
    Ids live throughout: exactly once; deleted before: never; new ids acknowledged before a
    step that sort after its cursor: seen; none twice."""
    rng = random.Random(11)
    vrng = np.random.default_rng(11)
    with Client(tmp_path) as client:
        index = client.create_index("cw", generate_key(), dimension=DIM, memtable_bytes=8 << 10)
        initial = [f"i{n:05d}" for n in range(1500)]
        index.upsert([{"id": i, "vector": vrng.standard_normal(DIM).tolist(),
                       "metadata": {"v": 0}} for i in initial])
        gone_before = set(rng.sample(initial, 150))
        index.delete(sorted(gone_before))
        rest = [i for i in initial if i not in gone_before]
        churn = set(rng.sample(rest, 300))  # deleted and rewritten during the iteration
        doomed = set(rng.sample(sorted(set(rest) - churn), 150))  # deleted during it for good
        stable = set(rest) - churn - doomed
        written: set[str] = set()
        progress = threading.Condition()
        writes = [0]
        stop = threading.Event()
        errors: list[BaseException] = []

        def writer() -> None:
            wrng = random.Random(12)
            pending_doom = sorted(doomed)
            n = 0
            try:
                while not stop.is_set():
                    new = [f"{wrng.choice('ai~')}{n:05d}-new" for _ in range(3)]
                    n += 1
                    victim = wrng.choice(sorted(churn))
                    index.upsert([{"id": i, "vector": vrng.standard_normal(DIM).tolist(),
                                   "metadata": {"v": 1}} for i in new])
                    with progress:
                        written.update(new)
                    index.delete([victim])
                    index.upsert([{"id": victim, "vector": [1.0, 0, 0, 0], "metadata": {"v": 2}}])
                    if pending_doom:
                        index.delete([pending_doom.pop()])
                    if n % 15 == 0:  # the sources change under the iteration, for sure
                        index.flush() if n % 45 else index.compact()
                    with progress:
                        writes[0] += 1
                        progress.notify_all()
            except BaseException as exc:  # surfaced by the test thread
                errors.append(exc)
                with progress:
                    progress.notify_all()

        thread = threading.Thread(target=writer)
        thread.start()
        seen: list[str] = []
        owed: set[str] = set()  # new ids acknowledged before a step, after its cursor
        try:
            for batch in index.iter_items(batch_size=17, include=["metadata"]):
                seen.extend(item["id"] for item in batch.items)
                with progress:
                    owed.update(i for i in written if i > seen[-1])
                for item in batch.items:
                    if item["id"] in stable:
                        assert item["metadata"] == {"v": 0}
                with progress:
                    target = writes[0] + 1
                    assert progress.wait_for(lambda: writes[0] >= target or errors, timeout=30)
                assert not errors, errors
        finally:
            stop.set()
            thread.join(timeout=60)
        assert not errors, errors
        assert writes[0] > 50  # the writes really interleaved with the batches
        assert len(seen) == len(set(seen)), "an id was yielded twice"
        assert seen == sorted(seen)
        assert stable <= set(seen), sorted(stable - set(seen))[:5]
        assert owed and owed <= set(seen), sorted(owed - set(seen))[:5]  # new ids after the cursor
        assert not (gone_before & set(seen))
        assert set(seen) <= set(initial) | written


# ----------------------------------------------------------------------------- bounded work

def _one_segment_index(folder: Path, n: int):
    client = Client(folder)
    index = client.create_index("mem", generate_key(), dimension=DIM, background_compaction=False)
    vectors = np.random.default_rng(1).standard_normal((n, DIM)).astype(np.float32)
    index.upsert([{"id": f"id{i:07d}", "vector": vector, "metadata": {"g": i % 100}}
                  for i, vector in enumerate(vectors)])
    index.flush()
    return client, index


def test_work_per_batch_is_bounded_by_the_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    """Never the whole id list: live_ids / matching_live are not called, each source offers at
    most batch_size candidates per step and each step hydrates at most batch_size items
    (counted), a selective filter with an exact plan takes a step per batch of matches, not of
    items; and the bytes allocated to read one batch do not grow with the index
    (tracemalloc peak of a step at 4k and 40k items, the sort permutation built before)."""
    def refuse(*args, **kwargs):
        raise AssertionError("iter_items must not list every id")

    monkeypatch.setattr(reads, "live_ids", refuse)
    monkeypatch.setattr(matching, "matching_live", refuse)
    offered: list[int] = []
    hydrated: list[int] = []
    real_segment, real_hits = iteration._segment_after, iteration.hits_of

    def counting_segment(source, order, after, limit, mask=None):
        out = real_segment(source, order, after, limit, mask)
        offered.append(len(out))
        assert len(out) <= limit
        return out

    def counting_hits(picked, include, store, cache):
        hydrated.append(len(picked))
        return real_hits(picked, include, store, cache)

    monkeypatch.setattr(iteration, "_segment_after", counting_segment)
    monkeypatch.setattr(iteration, "hits_of", counting_hits)
    peaks = []
    for n in (4_000, 40_000):
        client, index = _one_segment_index(tmp_path / str(n), n)
        try:
            offered.clear()
            hydrated.clear()
            every = {"$nor": [{"x": {"$exists": True}}]}  # matches all, through the filter path
            batches = index.iter_items(batch_size=50, include=["metadata"], filters=every)
            assert [len(b.items) for b in batches][:2] == [50, 50]  # every item matches
            assert max(hydrated) <= 50 and max(offered) <= 50
            assert len(offered) == n // 50 + 1  # one source, one step a batch (the last: empty)
            offered.clear()
            rare = [item["id"] for b in index.iter_items(50, include=(), filters={"g": 7})
                    for item in b.items]
            assert rare == [f"id{i:07d}" for i in range(7, n, 100)]
            # the term index's mask skips non-matching rows: steps follow the matches (n/100),
            # not the items (a step per 50 items would be n/50)
            assert len(offered) == len(rare) // 50 + 1, (len(offered), len(rare))
            batches = index.iter_items(batch_size=50, include=["vector", "metadata"])
            next(batches)  # the segment's permutation is built once, outside the measure
            tracemalloc.start()
            try:
                next(batches)
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
        finally:
            client.close()
    assert peaks[1] < 2 * peaks[0] + (64 << 10), peaks  # 10x the items, not 10x the bytes


# ----------------------------------------------------------------------------- async face

@pytest.mark.anyio
async def test_async_iterator(tmp_path: Path, anyio_backend: str, monkeypatch: pytest.MonkeyPatch
                              ) -> None:
    key = generate_key()
    async with AsyncClient(tmp_path) as client:
        index = await client.create_index("a", key, dimension=DIM, background_compaction=False)
        items = [{"id": f"x{i:03d}", "vector": [float(i), 1.0, 0.0, 0.0], "metadata": {"i": i}}
                 for i in range(95)]
        await index.upsert(items[:60])
        await index.flush()
        await index.upsert(items[60:])
        await index.delete(["x010", "x070"])
        expected = sorted(item["id"] for item in items if item["id"] not in ("x010", "x070"))
        threads: set[int] = set()
        real = index.sync.iter_items

        def recording(*args, **kwargs):
            def steps():
                for batch in real(*args, **kwargs):
                    threads.add(threading.get_ident())
                    yield batch
            return steps()

        monkeypatch.setattr(index.sync, "iter_items", recording)
        got, cursors = [], []
        async for batch in index.iter_items(batch_size=10, include=["metadata"]):
            assert isinstance(batch, ItemBatch) and 0 < len(batch.items) <= 10
            got.extend(item["id"] for item in batch.items)
            cursors.append(batch.cursor)
        assert got == expected
        assert threads and threading.get_ident() not in threads  # steps ran in worker threads
        rest = [item["id"] async for batch in index.iter_items(10, [], {"i": {"$gte": 50}},
                                                               cursor=cursors[2])
                for item in batch.items]
        assert rest == [i for i in expected[30:] if int(i[1:]) >= 50]
        with pytest.raises(InvalidCursorError):
            async for _ in index.iter_items(cursor=cursors[0][:-3]):
                pass
        early = index.iter_items(batch_size=5)
        assert len((await early.__anext__()).items) == 5
        await early.aclose()
        with pytest.raises(StopAsyncIteration):
            await early.__anext__()
