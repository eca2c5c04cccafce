"""Filtered queries equal the oracle's exact filtered top-k, through every planner path:
memtable scan, term-index pre-filter, term-index mask over ANN, and metadata post-filter."""
from __future__ import annotations

import numpy as np
import pytest

from lsmvec import Client, generate_key
from lsmvec.request.filters import compile_filter

DIM = 8
N = 3000

FILTERS = [
    {"color": "red"},                                   # plan: one clause
    {"color": {"$in": ["red", "blue"]}, "size": 3},     # plan: two clauses
    {"$and": [{"tags": "t1"}, {"size": {"$eq": 1}}]},   # plan: list element + $and
    {"rare": True},                                     # plan: very selective
    {"size": {"$gt": 2}},                               # plan: numeric range
    {"size": {"$gte": 1, "$lt": 3}, "color": "red"},    # plan: range + equality
    {"score": {"$lte": 0.25}},                          # plan: float range
    {"size": {"$gt": "a"}},                             # no plan: string comparison
    {"$or": [{"color": "green"}, {"size": 0}]},         # no plan: post-filter
    {"owner.name": "ann"},                              # plan: dotted path
    {"color": "nope"},                                  # plan: matches nothing
    {"big": {"$gt": 2 ** 60}},                          # no plan: beyond float64 exactness
    {"big": {"$lt": 100}},                              # plan, undecidable where big ints live
    {"color": {"$ne": "red"}},                          # no plan: exact mask (filter_masks)
    {"$nor": [{"color": "red"}, {"size": {"$lt": 2}}]}, # no plan: exact mask
    {"$or": [{"rare": True}, {"size": 4, "color": "white"}]},  # no plan: selective mask
    {"tags": {"$nin": ["t1"]}, "owner": {"$exists": True}},    # no plan: mask, kind terms
    {"owner.name": {"$regex": "^a"}},                   # no plan, no mask: post-filter
    {"big": {"$ne": 5}},                                # mask undecidable: post-filter
]


def _metadata(rng: np.random.Generator, i: int) -> dict:
    return {"color": ["red", "blue", "green", "white"][int(rng.integers(4))],
            "size": int(rng.integers(5)), "tags": [f"t{int(t)}" for t in rng.integers(0, 4, 2)],
            "rare": bool(i % 331 == 0), "owner": {"name": ["ann", "bob"][i % 2]},
            "score": float(rng.random()) if i % 5 else [float(rng.random()), 0.9],
            "big": 2 ** 60 + i if i % 97 == 0 else i}


def _oracle(vectors: dict, metas: dict, query: np.ndarray, spec: dict, k: int) -> list[str]:
    flt = compile_filter(spec)
    ids = [i for i in vectors if flt.matches(metas[i])]
    if not ids:
        return []
    mat = np.stack([vectors[i] for i in ids])
    dist = np.linalg.norm(mat - query, axis=1)
    order = np.argsort(dist, kind="stable")[:k]
    return [ids[j] for j in order]


@pytest.mark.parametrize("layout", ["memtable", "segments", "merged", "mixed"])
def test_filtered_results_equal_the_oracle(tmp_path, layout: str) -> None:
    rng = np.random.default_rng(7)
    vectors, metas = {}, {}
    with Client(tmp_path) as client:
        ix = client.create_index("f", generate_key(), dimension=DIM, background_compaction=False)
        for start in range(0, N, 500):
            batch = []
            for i in range(start, start + 500):
                vec = rng.standard_normal(DIM).astype(np.float32)
                meta = _metadata(rng, i)
                vectors[str(i)], metas[str(i)] = vec, meta
                batch.append({"id": str(i), "vector": vec, "metadata": meta})
            ix.upsert(batch)
            if layout in ("segments", "merged", "mixed"):
                ix.flush()
        # overwrite and delete some, so dead rows and shadowed rows are in play
        for i in range(0, N, 7):
            vec = rng.standard_normal(DIM).astype(np.float32)
            meta = _metadata(rng, i + 1)
            vectors[str(i)], metas[str(i)] = vec, meta
            ix.upsert([{"id": str(i), "vector": vec, "metadata": meta}])
        doomed = [str(i) for i in range(3, N, 11)]
        ix.delete(doomed)
        for i in doomed:
            vectors.pop(i, None)
            metas.pop(i, None)
        if layout == "merged":
            ix.train()
        elif layout == "segments":
            ix.flush()
        queries = rng.standard_normal((12, DIM)).astype(np.float32)
        for spec in FILTERS:
            for k in (1, 10, 60):
                got = ix.query(queries, top_k=k, filters=spec)
                for q, hits in zip(queries, got):
                    want = _oracle(vectors, metas, q, spec, k)
                    assert [h["id"] for h in hits] == want, (spec, k)
        check_metadata_hits(ix, metas)


def check_metadata_hits(ix, metas: dict) -> None:
    hits = ix.query(np.zeros(DIM, np.float32) + 0.1, top_k=20, filters={"color": "blue"},
                    include=["metadata"])
    assert hits and all(h["metadata"] == metas[h["id"]] for h in hits)
    assert all(h["metadata"]["color"] == "blue" for h in hits)


def test_term_index_survives_reopen_and_merge(tmp_path) -> None:
    rng = np.random.default_rng(3)
    key = generate_key()
    with Client(tmp_path) as client:
        ix = client.create_index("f", key, dimension=DIM, background_compaction=False)
        for start in range(0, 2000, 400):
            ix.upsert([{"id": str(i), "vector": rng.standard_normal(DIM),
                        "metadata": {"g": i % 10}} for i in range(start, start + 400)])
            ix.flush()
        before = ix.query(np.ones(DIM, np.float32), top_k=50, filters={"g": 3})
    with Client(tmp_path) as client:
        ix = client.load_index("f", key)
        assert ix.query(np.ones(DIM, np.float32), top_k=50, filters={"g": 3}) == before
        ix.train()
        after = ix.query(np.ones(DIM, np.float32), top_k=50, filters={"g": 3})
        assert [h["id"] for h in after] == [h["id"] for h in before]
        assert all(int(h["id"]) % 10 == 3 for h in after)


def test_trained_segment_gathers_a_filters_rows_only_when_worth_caching(tmp_path,
                                                                         monkeypatch) -> None:
    """A trained segment holds no rows: the rows of a filter spread over more than
    _GATHER_MAX_CHUNKS chunks are not decrypted for a one-off filter (ScaNN answers with the
    other rows excluded); a filter asked again is gathered and cached while the cache has
    room; filters cycling through more entries than it holds never evict one asked as often."""
    import lsmvec.db.segments as segments
    from lsmvec.compaction.segment import Segment
    monkeypatch.setattr(segments, "_GATHER_MAX_CHUNKS", 0)
    gathers = []
    real_gather = Segment.gather
    monkeypatch.setattr(Segment, "gather", lambda s, rows: gathers.append(len(rows)) or
                        real_gather(s, rows))
    rng = np.random.default_rng(9)
    n, dim = 20_000, 32
    centres = rng.standard_normal((40, dim)).astype(np.float32) * 4
    vectors = (centres[rng.integers(0, 40, n)] + rng.standard_normal((n, dim))).astype(np.float32)
    groups = np.arange(n) % 10
    with Client(tmp_path) as client:
        ix = client.create_index("t", generate_key(), dimension=dim, metric="euclidean",
                                 background_compaction=False)
        ix.upsert([{"id": str(i), "vector": vectors[i], "metadata": {"g": int(groups[i])}}
                   for i in range(n)])
        ix.train()
        assert ix.stats()["segments"][0]["kind"] == "tree_ah"
        queries = (centres[rng.integers(0, 40, 10)] + rng.standard_normal((10, dim))).astype(
            np.float32)

        def recall_of_a_cycle() -> float:
            found = 0
            for g, q in enumerate(queries):
                hits = ix.query(q, top_k=10, filters={"g": g})
                assert len(hits) == 10 and all(int(h["id"]) % 10 == g for h in hits)
                rows = np.flatnonzero(groups == g)
                truth = rows[np.argsort(np.linalg.norm(vectors[rows] - q, axis=1))[:10]]
                found += len({int(h["id"]) for h in hits} & set(truth.tolist()))
            return found / (10 * len(queries))

        assert recall_of_a_cycle() >= 0.9 and gathers == []  # each filter once: ScaNN
        assert recall_of_a_cycle() >= 0.9  # asked again: the first 8 gathered and cached
        assert gathers == [2000] * segments._SUBMATRIX_CACHE
        for _ in range(2):  # the last two never evict an entry asked as often
            assert recall_of_a_cycle() >= 0.9
        assert len(gathers) == segments._SUBMATRIX_CACHE
