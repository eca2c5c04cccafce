"""Queries against a NumPy brute-force oracle (ids AND distances), for the three metrics: single
and batch queries, top_k below and above the item count, overwrites, deletes, every upsert form,
`include` variants, read-your-writes, reopen, and a randomized operation sequence against a dict
model with a reopen in the middle."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import (METRICS, assert_matches_oracle, by_id, random_vectors, stored_form,
                      vector_list)

DIM = 16


def _fill(index, rng: np.random.Generator, n: int, prefix: str = "v") -> dict[str, np.ndarray]:
    vecs = random_vectors(rng, n, DIM)
    ids = [f"{prefix}{i}" for i in range(n)]
    index.upsert([{"id": i, "vector": v.tolist()} for i, v in zip(ids, vecs)])
    return dict(zip(ids, vecs))


def _check_get_vectors(index, model: dict[str, np.ndarray], metric: str) -> None:
    got = by_id(index.get(list(model), include=["vector"]))
    assert set(got) == set(model)
    for item_id, raw in model.items():
        np.testing.assert_allclose(vector_list(got[item_id]["vector"]), stored_form(raw, metric),
                                   rtol=1e-5, atol=1e-6, err_msg=f"get vector of {item_id}")


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("top_k", [1, 7, 150, 151, 1000])
def test_single_query_matches_oracle(client, key, metric, top_k):
    rng = np.random.default_rng(11)
    index = client.create_index("ix", key, dimension=DIM, metric=metric)
    model = _fill(index, rng, 150)
    for qi, q in enumerate(random_vectors(rng, 6, DIM)):
        res = index.query(query_vectors=q, top_k=top_k)
        assert_matches_oracle(res, model, q, metric, top_k, context=f"query {qi}")
    # A query equal to a stored vector finds it first, at distance ~0.
    some = "v42"
    res = index.query(query_vectors=model[some].tolist(), top_k=top_k)
    assert res[0]["id"] == some
    assert_matches_oracle(res, model, model[some], metric, top_k)


@pytest.mark.parametrize("metric", METRICS)
def test_batch_query_matches_oracle(client, key, metric):
    rng = np.random.default_rng(12)
    index = client.create_index("ix", key, dimension=DIM, metric=metric)
    model = _fill(index, rng, 120)
    queries = random_vectors(rng, 5, DIM)
    for form in (queries, queries.tolist(), list(queries), queries.astype(np.float64)):
        res = index.query(query_vectors=form, top_k=9)
        assert isinstance(res, list) and len(res) == 5
        for qi, (q, one) in enumerate(zip(queries, res)):
            assert_matches_oracle(one, model, q, metric, 9, context=f"batch query {qi}")
    # A 2-D input with one row is still a batch: a list of one list.
    res = index.query(query_vectors=queries[:1], top_k=3)
    assert len(res) == 1 and isinstance(res[0], list)
    assert_matches_oracle(res[0], model, queries[0], metric, 3)
    # top_k larger than the item count: every item, once.
    res = index.query(query_vectors=queries, top_k=500)
    for q, one in zip(queries, res):
        assert_matches_oracle(one, model, q, metric, 500)


@pytest.mark.parametrize("metric", METRICS)
def test_overwrites_only_new_vector_counts(client, key, metric):
    rng = np.random.default_rng(13)
    index = client.create_index("ix", key, dimension=DIM, metric=metric)
    model = _fill(index, rng, 100)
    queries = random_vectors(rng, 4, DIM)
    # Overwrite 30 ids, each moved right next to a query, so a stale copy would surface.
    moved = [f"v{i}" for i in range(0, 90, 3)]
    new_vecs = {}
    for j, item_id in enumerate(moved):
        new_vecs[item_id] = (queries[j % 4] + 0.05 * random_vectors(rng, 1, DIM)[0]).astype(np.float32)
    dict_part, tuple_part = moved[:15], moved[15:]
    index.upsert([{"id": i, "vector": new_vecs[i].tolist()} for i in dict_part])
    index.upsert([(i, new_vecs[i]) for i in tuple_part])
    model.update(new_vecs)
    assert index.get_num_vectors() == 100
    for q in queries:
        assert_matches_oracle(index.query(query_vectors=q, top_k=20), model, q, metric, 20)
        assert_matches_oracle(index.query(query_vectors=q, top_k=200), model, q, metric, 200)
    _check_get_vectors(index, model, metric)


@pytest.mark.parametrize("metric", METRICS)
def test_deleted_items_never_returned(client, key, metric):
    rng = np.random.default_rng(14)
    index = client.create_index("ix", key, dimension=DIM, metric=metric)
    model = _fill(index, rng, 100)
    doomed = [f"v{i}" for i in range(1, 100, 2)][:40]
    index.delete(doomed[:20])
    index.delete(doomed[20:] + ["never-existed", "v1"])  # unknown / already-deleted are ignored
    for d in doomed:
        del model[d]
    assert index.get_num_vectors() == 60
    assert sorted(index.list_ids()) == sorted(model)
    assert index.get(doomed) == []
    queries = random_vectors(rng, 4, DIM)
    for top_k in (5, 60, 100):
        res = index.query(query_vectors=queries, top_k=top_k)
        for q, one in zip(queries, res):
            assert_matches_oracle(one, model, q, metric, top_k)
            assert not set(doomed) & {h["id"] for h in one}
    # Querying with a deleted item's own vector does not resurrect it.
    old = random_vectors(np.random.default_rng(14), 100, DIM)[1]
    res = index.query(query_vectors=old, top_k=100)
    assert "v1" not in {h["id"] for h in res}
    # Delete then re-upsert: the id is back with the new vector only.
    fresh = random_vectors(rng, 1, DIM)[0]
    index.upsert([{"id": "v1", "vector": fresh}])
    model["v1"] = fresh
    assert_matches_oracle(index.query(query_vectors=fresh, top_k=10), model, fresh, metric, 10)


@pytest.mark.parametrize("metric", METRICS)
def test_mixed_upsert_forms(client, key, metric):
    rng = np.random.default_rng(15)
    index = client.create_index("ix", key, dimension=DIM, metric=metric)
    v = random_vectors(rng, 60, DIM)
    model: dict[str, np.ndarray] = {}
    # dicts and tuples mixed in one batch; list, tuple and ndarray vectors
    index.upsert([{"id": "d0", "vector": v[0].tolist()}, ("t1", v[1]), ("t2", tuple(v[2].tolist())),
                  {"id": "d3", "vector": v[3], "contents": b"c3", "metadata": {"k": 3}},
                  ("t4", v[4].tolist(), "c4", {"k": 4})])
    model.update({"d0": v[0], "t1": v[1], "t2": v[2], "d3": v[3], "t4": v[4]})
    # NumPy overload, keyword, integer ids and float64 vectors
    index.upsert(ids=np.arange(1000, 1010), vectors=v[5:15].astype(np.float64))
    model.update({str(1000 + j): v[5 + j] for j in range(10)})
    # NumPy overload, positional, str ids
    index.upsert(np.array([f"s{j}" for j in range(10)]), v[15:25])
    model.update({f"s{j}": v[15 + j] for j in range(10)})
    # NumPy overload with a list of str ids
    index.upsert(ids=[f"l{j}" for j in range(5)], vectors=v[25:30])
    model.update({f"l{j}": v[25 + j] for j in range(5)})
    # duplicate ids inside one batch: the last one wins
    index.upsert([{"id": "dup", "vector": v[30]}, ("dup", v[31]), {"id": "dup", "vector": v[32]}])
    model["dup"] = v[32]
    index.upsert(ids=np.array([7, 7]), vectors=v[33:35])
    model["7"] = v[34]

    assert sorted(index.list_ids()) == sorted(model)
    assert index.get_num_vectors() == len(model)
    _check_get_vectors(index, model, metric)
    t4 = index.get(["t4", "d3"], include=["contents", "metadata"])
    assert [(i["id"], i["contents"], i["metadata"]) for i in t4] == [
        ("t4", b"c4", {"k": 4}), ("d3", b"c3", {"k": 3})]
    for q in list(random_vectors(rng, 4, DIM)) + [v[31], v[33]]:
        assert_matches_oracle(index.query(query_vectors=q, top_k=15), model, q, metric, 15)


@pytest.mark.parametrize("metric", METRICS)
def test_include_variants(client, key, metric):
    rng = np.random.default_rng(16)
    index = client.create_index("ix", key, dimension=DIM, metric=metric)
    vecs = random_vectors(rng, 40, DIM)
    model = {f"i{j}": vecs[j] for j in range(40)}
    index.upsert([{"id": f"i{j}", "vector": vecs[j], "contents": f"text {j}",
                   "metadata": {"j": j, "even": j % 2 == 0}} for j in range(40)])
    q = random_vectors(rng, 1, DIM)[0]

    default = index.query(query_vectors=q, top_k=10)
    assert all(set(h) == {"id", "distance"} for h in default)
    assert_matches_oracle(default, model, q, metric, 10)
    order = [h["id"] for h in default]

    only_meta = index.query(query_vectors=q, top_k=10, include=["metadata"])
    assert all(set(h) == {"id", "metadata"} for h in only_meta)
    assert [h["id"] for h in only_meta] == order  # still ranked by distance
    for h in only_meta:
        j = int(h["id"][1:])
        assert h["metadata"] == {"j": j, "even": j % 2 == 0}

    full = index.query(query_vectors=q, top_k=10,
                       include=["distance", "metadata", "contents", "vector"])
    assert all(set(h) == {"id", "distance", "metadata", "contents", "vector"} for h in full)
    assert_matches_oracle(full, model, q, metric, 10)
    for h in full:
        j = int(h["id"][1:])
        assert h["contents"] == f"text {j}".encode()
        np.testing.assert_allclose(vector_list(h["vector"]), stored_form(vecs[j], metric),
                                   rtol=1e-5, atol=1e-6)

    batch = index.query(query_vectors=[q, vecs[3]], top_k=5, include=["contents"])
    assert [set(h) for one in batch for h in one] == [{"id", "contents"}] * 10
    assert batch[1][0] == {"id": "i3", "contents": b"text 3"}

    got = index.get(["i5", "missing", "i2"], include=["metadata"])
    assert got == [{"id": "i5", "metadata": {"j": 5, "even": False}},
                   {"id": "i2", "metadata": {"j": 2, "even": True}}]
    got = index.get(["i7"], include=["contents"])
    assert got == [{"id": "i7", "contents": b"text 7"}]


@pytest.mark.parametrize("metric", METRICS)
def test_read_your_writes(client, key, metric):
    rng = np.random.default_rng(17)
    index = client.create_index("ix", key, dimension=DIM, metric=metric)
    model: dict[str, np.ndarray] = {}
    for step in range(25):
        v = random_vectors(rng, 1, DIM)[0]
        item_id = f"r{step % 10}"  # from step 10 on, every upsert is an overwrite
        index.upsert([(item_id, v)])
        model[item_id] = v
        res = index.query(query_vectors=v, top_k=3)
        assert res[0]["id"] == item_id
        assert_matches_oracle(res, model, v, metric, 3, context=f"step {step}")
        if step % 4 == 3:
            victim = sorted(model)[0]
            index.delete([victim])
            del model[victim]
            res = index.query(query_vectors=v, top_k=50)
            assert victim not in {h["id"] for h in res}
            assert_matches_oracle(res, model, v, metric, 50, context=f"after delete {step}")
        assert index.get_num_vectors() == len(model)


@pytest.mark.parametrize("metric", METRICS)
def test_reopen_gives_same_results(data_dir, key, metric):
    from lsmvec import Client

    rng = np.random.default_rng(18)
    queries = random_vectors(rng, 5, DIM)
    with Client(data_dir) as client:
        index = client.create_index("ix", key, dimension=DIM, metric=metric)
        model = _fill(index, rng, 200)
        index.delete([f"v{i}" for i in range(0, 200, 7)])
        for i in range(0, 200, 7):
            del model[f"v{i}"]
        over = random_vectors(rng, 10, DIM)
        index.upsert([(f"v{i + 1}", over[i]) for i in range(10)])
        model.update({f"v{i + 1}": over[i] for i in range(10)})
        before = index.query(query_vectors=queries, top_k=25)
        items_before = index.get(sorted(model))
    with Client(data_dir) as client:
        index = client.load_index("ix", key)
        after = index.query(query_vectors=queries, top_k=25)
        assert [[h["id"] for h in one] for one in after] == [[h["id"] for h in one] for one in before]
        for one_a, one_b in zip(after, before):
            np.testing.assert_allclose([h["distance"] for h in one_a],
                                       [h["distance"] for h in one_b], rtol=1e-6, atol=1e-7)
        for q, one in zip(queries, after):
            assert_matches_oracle(one, model, q, metric, 25)
        items_after = index.get(sorted(model))
        assert [(i["id"], vector_list(i["vector"])) for i in items_after] == \
               [(i["id"], vector_list(i["vector"])) for i in items_before]
        assert sorted(index.list_ids()) == sorted(model)
        assert index.get_num_vectors() == len(model)


class _Model:
    """The dict model of the randomized test: id -> raw vector, contents, metadata."""

    def __init__(self) -> None:
        self.vectors: dict[str, np.ndarray] = {}
        self.contents: dict[str, bytes | None] = {}
        self.metadata: dict[str, dict | None] = {}

    def put(self, item_id: str, vector: np.ndarray, contents: bytes | None, meta: dict | None) -> None:
        self.vectors[item_id], self.contents[item_id], self.metadata[item_id] = vector, contents, meta

    def remove(self, item_id: str) -> None:
        for table in (self.vectors, self.contents, self.metadata):
            table.pop(item_id, None)


def _random_upsert(index, rng: np.random.Generator, model: _Model, pool: list[str]) -> None:
    n = int(rng.integers(1, 9))
    ids = [pool[int(j)] for j in rng.integers(0, len(pool), n)]
    vecs = random_vectors(rng, n, DIM)
    form = int(rng.integers(0, 3))
    if form == 0:  # dicts, sometimes with contents / metadata
        items = []
        for item_id, v in zip(ids, vecs):
            item: dict = {"id": item_id, "vector": v.tolist()}
            contents = meta = None
            if rng.random() < 0.5:
                contents = item["contents"] = f"c-{item_id}-{rng.integers(1 << 30)}".encode()
            if rng.random() < 0.5:
                meta = item["metadata"] = {"x": int(rng.integers(100)), "tag": ["a", "b"]}
            items.append(item)
            model.put(item_id, v, contents, meta)  # in order: the last duplicate wins
        index.upsert(items)
    elif form == 1:  # tuples
        index.upsert([(i, v) for i, v in zip(ids, vecs)])
        for item_id, v in zip(ids, vecs):
            model.put(item_id, v, None, None)
    else:  # NumPy overload with str ids
        index.upsert(ids=np.array(ids), vectors=vecs)
        for item_id, v in zip(ids, vecs):
            model.put(item_id, v, None, None)


def _check_model(index, model: _Model, metric: str, rng: np.random.Generator, step: int) -> None:
    assert sorted(index.list_ids()) == sorted(model.vectors), f"step {step}: list_ids"
    assert index.get_num_vectors() == len(model.vectors), f"step {step}: count"
    probe = sorted(model.vectors)[:: max(1, len(model.vectors) // 10)]
    got = by_id(index.get(probe + ["nope"]))
    assert set(got) == set(probe), f"step {step}: get"
    for item_id in probe:
        np.testing.assert_allclose(vector_list(got[item_id]["vector"]),
                                   stored_form(model.vectors[item_id], metric), rtol=1e-5, atol=1e-6)
        assert got[item_id].get("contents") == model.contents[item_id], f"step {step}: {item_id}"
        if model.metadata[item_id] is not None:
            assert got[item_id]["metadata"] == model.metadata[item_id], f"step {step}: {item_id}"
        else:
            assert got[item_id].get("metadata") in (None, {}), f"step {step}: {item_id}"


@pytest.mark.parametrize("seed,metric", [(seed, METRICS[seed % 3]) for seed in range(6)])
def test_randomized_against_dict_model(data_dir, key, seed, metric):
    from lsmvec import Client

    rng = np.random.default_rng(seed)
    pool = [f"id{j}" for j in range(70)]
    model = _Model()
    client = Client(data_dir)
    index = client.create_index("rnd", key, dimension=DIM, metric=metric)
    steps = 500
    try:
        for step in range(steps):
            if step == steps // 2:  # reopen in the middle
                client.close()
                client = Client(data_dir)
                index = client.load_index("rnd", key)
                _check_model(index, model, metric, rng, step)
            r = rng.random()
            if r < 0.45:
                _random_upsert(index, rng, model, pool)
            elif r < 0.65:
                doomed = [pool[int(j)] for j in rng.integers(0, len(pool), int(rng.integers(1, 6)))]
                index.delete(doomed + ["ghost"])
                for item_id in doomed:
                    model.remove(item_id)
            elif r < 0.95:
                top_k = int(rng.integers(1, 90))
                if rng.random() < 0.3:
                    qs = random_vectors(rng, 3, DIM)
                    res = index.query(query_vectors=qs, top_k=top_k)
                    for q, one in zip(qs, res):
                        assert_matches_oracle(one, model.vectors, q, metric, top_k,
                                              context=f"step {step}")
                else:
                    q = random_vectors(rng, 1, DIM)[0]
                    assert_matches_oracle(index.query(query_vectors=q, top_k=top_k), model.vectors,
                                          q, metric, top_k, context=f"step {step}")
            else:
                _check_model(index, model, metric, rng, step)
        _check_model(index, model, metric, rng, steps)
    finally:
        client.close()
    with Client(data_dir) as again:
        _check_model(again.load_index("rnd", key), model, metric, rng, steps + 1)


def test_empty_index_query_returns_nothing(client, key):
    index = client.create_index("ix", key, dimension=4)
    assert index.query(query_vectors=[1.0, 0.0, 0.0, 0.0], top_k=5) == []
    assert index.query(query_vectors=[[1.0, 0, 0, 0], [0, 1.0, 0, 0]], top_k=5) == [[], []]
    index.upsert([("a", [1.0, 0, 0, 0])])
    index.delete(["a"])
    assert index.query(query_vectors=[1.0, 0.0, 0.0, 0.0], top_k=5) == []
    assert index.list_ids() == [] and index.get_num_vectors() == 0
