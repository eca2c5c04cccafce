"""The single-query fast path (Segment.search_one, run_query's one-segment branch) answers
exactly what the general path answers: same rows, same distances, same result dicts."""
from __future__ import annotations

import numpy as np
import pytest

from lsmvec import Client, generate_key
from lsmvec.compaction import scann_params
from lsmvec.compaction.segment import build_and_open_segment

KEY = bytes(range(32))


@pytest.mark.parametrize("metric", ["euclidean", "squared_euclidean", "cosine"])
def test_search_one_equals_search(tmp_path, metric: str) -> None:
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((3000, 16)).astype(np.float32)
    queries = rng.standard_normal((25, 16)).astype(np.float32)
    if metric == "cosine":
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    _files, segment = build_and_open_segment(tmp_path / "seg", rows, metric=metric, key=KEY,
                                             context=b"ctx", kind="tree_ah", leaves_to_search=12)
    assert segment.kind == "tree_ah"
    answered = 0
    for n_dead in (0, 1, 7, 40, 41, 400):  # 4 * k = 40: beyond it the general path answers
        exclude = np.zeros(len(rows), bool)
        exclude[rng.choice(len(rows), n_dead, replace=False)] = True
        for query in queries[:5]:  # the best rows of these queries are dead too
            exclude[segment.search(query, 2)[0][0]] = n_dead > 0
        n_excluded = int(exclude.sum())
        for k in (1, 10, 50):
            for n_probes in (None, 3, 10_000):
                for query in queries:
                    want = segment.search(query, k, n_probes=n_probes,
                                          exclude=exclude if n_excluded else None)
                    got = segment.search_one(query, k, n_probes, exclude if n_excluded else None,
                                             n_excluded)
                    if got is None:  # many excluded rows, or the leaves searched held < k
                        assert n_excluded > 4 * k or n_probes == 3
                        continue
                    answered += 1
                    assert got[0] == want[0][0].tolist()
                    assert got[1] == want[1][0].tolist()  # the float32 values, exactly
    assert answered >= 450  # (675 cases have few enough excluded rows)
    assert segment.search_one(queries[0], 3001) is None  # more than the segment holds
    segment.close()
    assert segment.search_one(queries[0], 3) is None  # closed: search() raises


def test_single_queries_equal_the_general_path(tmp_path, monkeypatch) -> None:
    """An index with one trained segment holding dead rows: each single query (fast path)
    returns exactly what the general path returns for it (a match-all filter {} takes that
    path), and a batched query (ScaNN's batched search) returns no dead row either."""
    monkeypatch.setattr(scann_params, "BRUTE_FORCE_MAX_ROWS", 1000)
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((2500, 8)).astype(np.float32)
    queries = rng.standard_normal((30, 8)).astype(np.float32)
    with Client(tmp_path) as client:
        index = client.create_index("f", generate_key(), dimension=8, metric="euclidean",
                                    background_compaction=False)
        index.upsert([{"id": f"i{i}", "vector": v, "metadata": {"i": i}, "contents": b"c%d" % i}
                      for i, v in enumerate(vectors)])
        index.train()
        assert [s["kind"] for s in index.stats()["segments"]] == ["tree_ah"]
        for dead in ([], [f"i{i}" for i in range(0, 2500, 250)]):
            index.delete(dead)
            index.flush()  # the deletes are now dead rows of the trained segment
            assert len(index.stats()["segments"]) == 1
            for include in (["distance"], ["distance", "metadata"], ["metadata", "contents"],
                            [], ["vector", "distance"]):
                singles = [index.query(q, top_k=10, include=include) for q in queries]
                general = [index.query(q, top_k=10, include=include, filters={}) for q in queries]
                assert singles == general
                batch = index.query(queries, top_k=10, include=include)
                for hits in (*singles, *batch):
                    assert len(hits) == 10 and not {hit["id"] for hit in hits} & set(dead)


def test_a_write_during_a_lock_free_search_sends_the_query_through_the_lock(
        tmp_path, monkeypatch) -> None:
    """Ids + distances of a lone trained segment are searched without the read lock
    (IndexCore.query_one, rwlock.py's epoch). A write that lands during that search -- here
    a delete of the best hit, and an upsert that makes a new best one -- must not leave its
    answer standing: the query is answered again under the lock, and sees the write."""
    from lsmvec.compaction.segment import Segment
    monkeypatch.setattr(scann_params, "BRUTE_FORCE_MAX_ROWS", 1000)
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((2000, 8)).astype(np.float32)
    query = rng.standard_normal(8).astype(np.float32)
    with Client(tmp_path) as client:
        index = client.create_index("w", generate_key(), dimension=8, metric="euclidean",
                                    background_compaction=False)
        index.upsert([(f"i{i}", v) for i, v in enumerate(vectors)])
        index.train()
        before = index.query(query, top_k=5)
        best = before[0]["id"]
        original, calls = Segment.search_one, []

        def search_then_write(self, *args):
            found = original(self, *args)
            if not calls:
                calls.append(found)
                index.delete([best])
                index.upsert([("new", query)])
            return found

        monkeypatch.setattr(Segment, "search_one", search_then_write)
        got = index.query(query, top_k=5)
        assert calls and calls[0] is not None  # the lock-free search ran, and answered
        assert got[0] == {"id": "new", "distance": 0.0}
        assert best not in {hit["id"] for hit in got}
        assert got == index.query(query, top_k=5, filters={})  # the general path agrees
