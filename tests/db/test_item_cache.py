"""The cache of decrypted store values (db/item_cache.py) and the batched hydration of query
hits: bounded in bytes, never stale (checked against a dict oracle through overwrites,
deletes, flushes, merges and concurrent writers), one AES-GCM open per item and one store read
transaction per query, proved by counting."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from lsmvec import Client, generate_key
from lsmvec.compaction import scann_params
from lsmvec.db.item_cache import ENTRY_OVERHEAD, ItemCache, key

DIM = 8


# -- the cache alone -------------------------------------------------------------------------

def test_the_cache_keeps_its_byte_bound_and_drops_the_least_recently_used() -> None:
    body = b"x" * 100
    size = len(body) + ENTRY_OVERHEAD
    cache = ItemCache(max_bytes=3 * size)
    cache.put_many([(key(1, r), body) for r in range(3)])
    assert len(cache) == 3 and cache.nbytes == 3 * size
    assert cache.get_many([key(1, 0)]) == [body]  # row 0 is now the most recent
    cache.put_many([(key(2, 0), body)])
    assert cache.nbytes <= cache.max_bytes
    assert cache.get_many([key(1, 0), key(1, 1), key(1, 2), key(2, 0)]) == [body, None, body, body]
    cache.put_many([(key(3, r), b"y" * r) for r in range(50)])  # many at once: still bounded
    assert cache.nbytes <= cache.max_bytes and len(cache) == 3
    cache.put_many([(key(4, 0), b"z" * (4 * size))])  # larger than the whole cache: not kept
    assert cache.get_many([key(4, 0)]) == [None] and cache.nbytes <= cache.max_bytes
    off = ItemCache(max_bytes=0)
    off.put_many([(key(1, 0), body)])
    assert len(off) == 0 and off.get_many([key(1, 0)]) == [None]
    assert key(1, 0) != key(0, 1) and key(2 ** 20, 2 ** 31) >> 32 == 2 ** 20


def test_discard_and_forget_segment_drop_exactly_their_rows() -> None:
    cache = ItemCache()
    cache.put_many([(key(s, r), bytes([s, r])) for s in (1, 2) for r in range(4)])
    cache.discard(1, [0, 2, 9])
    assert cache.get_many([key(1, r) for r in range(4)]) == [None, b"\x01\x01", None, b"\x01\x03"]
    cache.forget_segment(2)
    assert cache.get_many([key(2, r) for r in range(4)]) == [None] * 4
    cache.forget_segment(2)  # twice, or a segment never cached: nothing happens
    cache.discard(7, [0])
    assert len(cache) == 2 and cache.nbytes == 2 * (2 + ENTRY_OVERHEAD)
    cache.put_many([(key(1, 1), b"other")])  # a row never changes: the first body stays
    assert cache.get_many([key(1, 1)]) == [b"\x01\x01"]


# -- the index against an oracle -------------------------------------------------------------

@pytest.fixture
def small_trees(monkeypatch: pytest.MonkeyPatch) -> None:
    """Segments of >= 1,000 rows are trained trees (ScaNN), so the single-query fast path and
    dead-row exclusion in trees are exercised; smaller ones stay exact."""
    monkeypatch.setattr(scann_params, "BRUTE_FORCE_MAX_ROWS", 1000)


def _check_hits(hits: list[dict], oracle: dict) -> None:
    for hit in hits:
        want = oracle[hit["id"]]  # KeyError: a deleted item came back
        assert hit["metadata"] == want[1], hit["id"]
        if "contents" in hit:
            assert hit["contents"] == want[2], hit["id"]
        hit["metadata"]["mutated"] = True  # a caller's change must never reach the index


def check(index, oracle: dict, rng: np.random.Generator, version: int) -> None:
    """Single and batched queries, a planned and a post-filtered query, and a get()."""
    include = ["distance", "metadata", "contents"]
    for query in rng.standard_normal((4, DIM)).astype(np.float32):
        _check_hits(index.query(query, top_k=10, include=include), oracle)
        _check_hits(index.query(query, top_k=10, include=["distance", "metadata"]), oracle)
    for hits in index.query(rng.standard_normal((3, DIM)).astype(np.float32), top_k=25,
                            include=include):
        _check_hits(hits, oracle)
    recent = {"v": {"$gte": version - 2}}  # a term-index plan, then a post-filter
    for spec in (recent, {"$or": [recent, {"id": "none"}]}):
        for hits in index.query(rng.standard_normal((2, DIM)).astype(np.float32), top_k=5,
                                include=include, filters=spec):
            _check_hits(hits, oracle)
            assert all(hit["metadata"]["v"] >= version - 2 for hit in hits)
    asked = [str(i) for i in rng.choice(1500, size=50, replace=False)]
    got = index.get(asked, include=["metadata", "contents"])
    assert [item["id"] for item in got] == [i for i in asked if i in oracle]
    _check_hits(got, oracle)


@pytest.mark.parametrize("cache_bytes", [0, 4 << 10, 32 << 20])
def test_query_and_get_hydration_match_an_oracle(tmp_path, small_trees, cache_bytes) -> None:
    """Overwrites change metadata and contents; deletes, flushes, merges and a train move rows;
    every hit and every get() must carry exactly the oracle's newest values (no cache, a
    cache forced to evict all the time, a cache holding everything)."""
    rng = np.random.default_rng(cache_bytes)
    oracle: dict[str, tuple[np.ndarray, dict, bytes]] = {}
    version = 0
    kinds: set[str] = set()
    with Client(tmp_path) as client:
        index = client.create_index("c", generate_key(), dimension=DIM, metric="euclidean",
                                    memtable_bytes=64 << 10, background_compaction=False)
        index._core.item_cache.max_bytes = cache_bytes
        for step in range(40):
            action = rng.random()
            if action < 0.55 or len(oracle) < 100:
                version += 1
                ids = [str(i) for i in rng.choice(1500, size=200, replace=False)]
                vectors = rng.standard_normal((len(ids), DIM)).astype(np.float32)
                items = []
                for item_id, vector in zip(ids, vectors):
                    meta = {"v": version, "id": item_id, "pad": "p" * int(rng.integers(0, 40))}
                    contents = f"{item_id}@{version}".encode()
                    oracle[item_id] = (vector, meta, contents)
                    items.append({"id": item_id, "vector": vector, "metadata": meta,
                                  "contents": contents})
                index.upsert(items)
            elif action < 0.7:
                gone = [str(i) for i in rng.choice(sorted(int(i) for i in oracle), size=60,
                                                   replace=False)]
                index.delete(gone)
                for item_id in gone:
                    oracle.pop(item_id)
            elif action < 0.8:
                index.flush()
            elif action < 0.9:
                index.compact()
            else:
                index.train()
            check(index, oracle, rng, version)
            kinds |= {s["kind"] for s in index.stats()["segments"]}
        index.train()
        check(index, oracle, rng, version)
        kinds |= {s["kind"] for s in index.stats()["segments"]}
        assert kinds == {"brute", "tree_ah"}, kinds
        cache = index._core.item_cache
        assert cache.nbytes <= max(cache_bytes, 0)
        if cache_bytes:
            assert cache.hits > 0
        # every cached row belongs to a live segment row
        live = {key(s.id, r) for s in index._core.segments for r in np.flatnonzero(~s.dead).tolist()}
        assert set(cache._entries) <= live


class _CountingAead:
    """Stands in for the store's Aead: counts opens."""

    def __init__(self, inner):
        self.inner = inner
        self.opens = 0

    def open(self, *args, **kwargs):
        self.opens += 1
        return self.inner.open(*args, **kwargs)

    def seal(self, *args, **kwargs):
        return self.inner.seal(*args, **kwargs)


class _CountingEnv:
    """Stands in for the LMDB environment: counts read transactions."""

    def __init__(self, inner):
        self.inner = inner
        self.reads = 0

    def begin(self, *args, **kwargs):
        if not kwargs.get("write"):
            self.reads += 1
        return self.inner.begin(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_one_decryption_per_item_and_one_store_read_per_query(tmp_path, small_trees) -> None:
    rng = np.random.default_rng(5)
    n = 3000
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    with Client(tmp_path) as client:
        index = client.create_index("c", generate_key(), dimension=DIM, metric="euclidean",
                                    background_compaction=False)  # no other store reads
        index.upsert([{"id": str(i), "vector": vectors[i], "metadata": {"i": i, "even": i % 2 == 0}}
                      for i in range(n)])
        index.train()
        core = index._core
        aead = core.store._cipher.store = _CountingAead(core.store._cipher.store)
        env = core.store.env = _CountingEnv(core.store.env)
        queries = rng.standard_normal((20, DIM)).astype(np.float32)
        include = ["distance", "metadata"]

        seen: set[str] = set()
        for query in queries:  # one query at a time: one read, one open per new item
            before_reads, before_opens = env.reads, aead.opens
            hits = index.query(query, top_k=10, include=include)
            new = {hit["id"] for hit in hits} - seen
            seen |= {hit["id"] for hit in hits}
            assert env.reads - before_reads == (1 if new else 0)
            assert aead.opens - before_opens == len(new)
            assert all(hit["metadata"]["i"] == int(hit["id"]) for hit in hits)

        opens = aead.opens  # the same queries again: everything is cached
        index.query(queries[0], top_k=10, include=include)
        assert aead.opens == opens
        batch = index.query(queries, top_k=10, include=include)  # (ScaNN's batched search
        new = {hit["id"] for hits in batch for hit in hits} - seen  # may rank a row apart)
        assert aead.opens - opens == len(new)

        core.item_cache.clear()  # a batch whose queries share hits: each item opened once
        before_reads, opens = env.reads, aead.opens
        batch = index.query(np.repeat(queries[:3], 4, axis=0), top_k=10, include=include)
        distinct = {hit["id"] for hits in batch for hit in hits}
        assert aead.opens - opens == len(distinct) and env.reads - before_reads == 1

        core.item_cache.clear()  # a post-filter reads metadata once, for the verdict and the hit
        opens = aead.opens
        hits = index.query(queries[5], top_k=10, include=include,
                           filters={"$or": [{"even": True}, {"i": -1}]})
        assert len(hits) == 10 and all(hit["metadata"]["even"] for hit in hits)
        checked = aead.opens - opens
        assert checked >= 10
        assert len(core.item_cache) == checked  # every opened item was kept, none opened twice

        opens = aead.opens  # get() shares the cache
        assert [item["metadata"] for item in index.get([hit["id"] for hit in hits],
                                                       include=["metadata"])] == \
            [hit["metadata"] for hit in hits]
        assert aead.opens == opens
        core.store._cipher.store, core.store.env = aead.inner, env.inner


def test_concurrent_writers_never_make_a_query_see_older_metadata(tmp_path, small_trees) -> None:
    """A writer bumps every item's version, in batches, while flushes and merges run in the
    background; a reader's hit must carry at least the version acknowledged before its query
    started (never a stale cached one) and at most the newest one written."""
    rng = np.random.default_rng(9)
    n, rounds = 1200, 12
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    acked = np.zeros(n, np.int64)   # version of each item acknowledged (upsert returned)
    started = np.zeros(n, np.int64)  # newest version an upsert has started writing
    done = threading.Event()
    errors: list[BaseException] = []
    with Client(tmp_path) as client:
        index = client.create_index("c", generate_key(), dimension=DIM, metric="euclidean",
                                    memtable_bytes=48 << 10)

        def write(version: int) -> None:
            for lo in range(0, n, 300):
                rows = np.arange(lo, min(n, lo + 300))
                started[rows] = version
                index.upsert([{"id": str(i), "vector": vectors[i], "metadata": {"v": version}}
                              for i in rows])
                acked[rows] = version

        write(1)
        index.train()

        def writer() -> None:
            try:
                for version in range(2, rounds + 2):
                    write(version)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=writer)
        thread.start()
        checked = 0
        try:
            while not done.is_set() or checked == 0:
                query = rng.standard_normal(DIM).astype(np.float32)
                floor = acked.copy()
                hits = index.query(query, top_k=20, include=["metadata"])
                ceiling = started.copy()
                for hit in hits:
                    i = int(hit["id"])
                    assert floor[i] <= hit["metadata"]["v"] <= ceiling[i], (i, hit, floor[i])
                    checked += 1
        finally:
            thread.join()
        assert not errors, errors
        index.flush()  # the newest versions move into a segment: cached older rows are dead
        for query in rng.standard_normal((20, DIM)).astype(np.float32):
            assert {hit["metadata"]["v"] for hit in index.query(query, top_k=50,
                                                                  include=["metadata"])} == {rounds + 1}
        assert checked > 0


def _one_segment(client: Client, vectors: np.ndarray):
    """An index whose items str(i) -> (vectors[i], {"i": i}) are all in one flushed segment."""
    index = client.create_index("c", generate_key(), dimension=DIM, metric="euclidean",
                                background_compaction=False)
    index.upsert([{"id": str(i), "vector": v, "metadata": {"i": i}} for i, v in enumerate(vectors)])
    index.flush()
    return index


def test_a_store_that_lost_or_moved_a_live_item_is_corruption_not_an_answer(tmp_path) -> None:
    """The store and the segments must agree on a hit: a missing store value, or one placed
    at another row, is a CorruptionError for a query that reads metadata (never silently
    another version), also for a row cached before (its cached body is still right)."""
    from lsmvec.errors import CorruptionError
    vectors = np.random.default_rng(2).standard_normal((300, DIM)).astype(np.float32)
    with Client(tmp_path) as client:
        index = _one_segment(client, vectors)
        core = index._core
        (source,) = core.segments
        hits = index.query(vectors[7], top_k=3, include=["metadata"])
        assert hits[0] == {"id": "7", "metadata": {"i": 7}}
        core.store.commit(lambda txn: txn.delete_item("7"))  # damage: the entry is gone
        assert index.query(vectors[7], top_k=3, include=["metadata"]) == hits  # cached: right
        core.item_cache.clear()
        with pytest.raises(CorruptionError, match="has no item in the store"):
            index.query(vectors[7], top_k=3, include=["metadata"])
        assert index.query(vectors[7], top_k=3)[0]["id"] == "7"  # ids alone need no store read
        row = source.ids.index("8")  # damage: "8"'s entry now says it lives at row 0
        core.store.commit(lambda txn: txn.carry_items(
            [core.store._cipher.id_hash("8")], np.array([source.id]), np.array([row]),
            source.id, np.array([0 if row else 1])))
        with pytest.raises(CorruptionError, match="places its item at"):
            index.query(vectors[8], top_k=1, include=["metadata"])


def test_a_store_value_holding_another_id_is_refused_again_not_served_from_the_cache(
        tmp_path) -> None:
    """A store value at the right place whose body names another item (a damaged store) is a
    CorruptionError on every query that reads it: the body that failed the check is not
    cached, so the next query does not answer it as a hit of the other item."""
    from lsmvec.errors import CorruptionError
    vectors = np.random.default_rng(3).standard_normal((300, DIM)).astype(np.float32)
    with Client(tmp_path) as client:
        index = _one_segment(client, vectors)
        core = index._core
        (source,) = core.segments
        store, row = core.store, source.ids.index("8")
        forged_key = store._cipher.id_hash("8")  # damage: "8"'s value now holds item "9"
        forged = store.values.sealed(forged_key, "9", source.id, row, None, {"i": 9})
        store.commit(lambda txn: txn.replace_many([forged_key], [forged]))
        for include, fltr in ((["metadata"], None), (["metadata"], None),
                              (["distance", "metadata"], None), (["metadata"], {"i": 8})):
            with pytest.raises(CorruptionError, match="holds another id"):
                index.query(vectors[8], top_k=1, include=include, filters=fltr)
        assert len(core.item_cache) == 0
