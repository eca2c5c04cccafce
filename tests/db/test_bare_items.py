"""Bare store values (engine/disk/store.py): an item with neither contents nor metadata is kept
in the store as its location alone, its id and its bare mark sealed in its segment's ids.bin.
Reads must give exactly what was written (a dict oracle), through flushes, supersedes, deletes,
merges and reopens; and a sealed value stripped to a location, or a bare value pointed at
another item's row, must be caught as corruption, never served."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lsmvec import Client, generate_key
from lsmvec.errors import CorruptionError

DIM = 5


def value_lengths(index) -> Counter:
    """How many store values of each length: a bare one is 8 bytes (segment u32 | row u32)."""
    store = index._core.store
    with store.env.begin(db=store._items) as txn:
        return Counter(len(value) for _key, value in txn.cursor())


def put_value(index, item_id: str, value: bytes) -> None:
    store = index._core.store
    with store.env.begin(write=True, db=store._items) as txn:
        txn.put(store._cipher.id_hash(item_id), value)


def get_value(index, item_id: str) -> bytes:
    store = index._core.store
    with store.env.begin(db=store._items) as txn:
        return bytes(txn.get(store._cipher.id_hash(item_id)))


def expected(oracle: dict, ids: list[str]) -> list[dict]:
    return [{"id": i, "vector": oracle[i][0], "metadata": oracle[i][1] or {},
             "contents": oracle[i][2]} for i in ids if i in oracle]


def check(index, oracle: dict) -> None:
    ids = sorted(oracle, key=int)
    got = index.get(ids + ["missing"], include=["vector", "metadata", "contents"])
    want = expected(oracle, ids)
    assert [g["id"] for g in got] == [w["id"] for w in want]
    for g, w in zip(got, want):
        assert g["metadata"] == w["metadata"] and g["contents"] == w["contents"], g["id"]
        np.testing.assert_array_equal(np.asarray(g["vector"], np.float32), w["vector"])
    assert sorted(index.list_ids(), key=int) == ids
    # a query's hits hydrate through the same bodies (bare rows without a store read)
    for item_id in ids[::7]:
        hit = index.query(query_vectors=oracle[item_id][0], top_k=1,
                          include=["distance", "metadata"])[0]
        assert hit["id"] == item_id and hit["metadata"] == (oracle[item_id][1] or {})


def test_bare_and_sealed_items_read_back_through_flushes_merges_and_reopen(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    key = generate_key()
    client = Client(tmp_path)
    index = client.create_index("x", key, dimension=DIM, metric="euclidean")
    oracle: dict[str, tuple] = {}

    def numpy_rows(lo: int, hi: int) -> None:
        vecs = rng.standard_normal((hi - lo, DIM)).astype(np.float32)
        index.upsert([str(i) for i in range(lo, hi)], vecs)
        for i, v in zip(range(lo, hi), vecs):
            oracle[str(i)] = (v, None, None)

    def dict_rows(lo: int, hi: int) -> None:
        items = []
        for i in range(lo, hi):
            v = rng.standard_normal(DIM).astype(np.float32)
            meta = {"n": i} if i % 3 == 0 else None
            contents = f"text {i}" if i % 3 == 1 else None  # i % 3 == 2: neither -> bare
            item = {"id": str(i), "vector": v}
            if meta is not None:
                item["metadata"] = meta
            if contents is not None:
                item["contents"] = contents
            items.append(item)
            oracle[str(i)] = (v, meta, None if contents is None else contents.encode())
        index.upsert(items)

    numpy_rows(0, 60)
    dict_rows(60, 120)
    index.flush()
    lengths = value_lengths(index)
    n_bare = 60 + sum(1 for i in range(60, 120) if i % 3 == 2)
    assert lengths[8] == n_bare and sum(lengths.values()) == 120
    check(index, oracle)

    # supersede bare rows with sealed ones and sealed rows with bare ones, delete some of each
    dict_rows(0, 30)
    numpy_rows(60, 90)
    index.delete(["31", "32", "100", "101"])
    for gone in ("31", "32", "100", "101"):
        del oracle[gone]
    index.flush()
    check(index, oracle)
    index.train()  # everything merged into one segment: bare and sealed values carried
    assert len(index._core.segments) == 1
    lengths = value_lengths(index)
    assert sum(lengths.values()) == len(oracle)
    assert lengths[8] == sum(1 for v in oracle.values() if v[1] is None and v[2] is None)
    check(index, oracle)
    report = index.verify()
    assert report["ok"], report["problems"]
    client.close()

    client = Client(tmp_path)
    index = client.load_index("x", key)
    check(index, oracle)
    client.close()


def build(path: Path):
    client = Client(path)
    index = client.create_index("x", generate_key(), dimension=DIM, metric="euclidean")
    vectors = np.random.default_rng(0).standard_normal((40, DIM)).astype(np.float32)
    index.upsert([str(i) for i in range(20)], vectors[:20])  # bare
    index.upsert([{"id": str(i), "vector": vectors[i], "metadata": {"tag": i}}
                  for i in range(20, 40)])  # sealed
    index.flush()
    return client, index, vectors


def test_a_sealed_value_stripped_to_its_location_is_corruption(tmp_path: Path) -> None:
    client, index, vectors = build(tmp_path)
    with client:
        sealed = get_value(index, "25")
        assert len(sealed) > 8
        put_value(index, "25", sealed[:8])  # same place, metadata gone
        with pytest.raises(CorruptionError, match="without the body"):
            index.get(["25"], include=["metadata"])
        with pytest.raises(CorruptionError):
            index.query(query_vectors=vectors[25], top_k=1, include=["metadata"])
        report = index.verify()
        assert not report["ok"] and any("bare" in p["message"] for p in report["problems"])


def test_a_bare_value_pointed_at_another_row_is_corruption(tmp_path: Path) -> None:
    client, index, _ = build(tmp_path)
    with client:
        put_value(index, "3", get_value(index, "4"))  # "3" now claims row of "4"
        with pytest.raises(CorruptionError, match="does not hold it"):
            index.get(["3"])
        report = index.verify()
        assert not report["ok"]
        assert any("bare" in p["message"] for p in report["problems"])


def test_a_bare_value_where_the_segment_expects_a_body_is_caught_by_verify(tmp_path: Path) -> None:
    client, index, _ = build(tmp_path)
    with client:
        put_value(index, "30", get_value(index, "30")[:8])
        report = index.verify()
        assert not report["ok"] and len(report["problems"]) == 1
        assert index.get(["5"], include=["metadata"]) == [{"id": "5", "metadata": {}}]


def test_an_index_of_format_1_keeps_its_id_hash_and_seals_every_value(tmp_path: Path) -> None:
    """An index made before format 2 (HMAC-SHA256 id hashes, every value sealed) opens, reads
    and takes writes in its own format: nothing it holds is rehashed, nothing written bare."""
    import hashlib
    import hmac

    from lsmvec.disk.crypto import _hkdf
    key = generate_key()
    client = Client(tmp_path)
    index = _create_with_format(client, key, 1)
    vectors = np.random.default_rng(5).standard_normal((30, DIM)).astype(np.float32)
    index.upsert([str(i) for i in range(20)], vectors[:20])
    client.close()

    client = Client(tmp_path)
    index = client.load_index("old", key)
    assert index._core.config.format == 1
    index.upsert([str(i) for i in range(20, 30)], vectors[20:])
    index.flush()
    lengths = value_lengths(index)
    assert sum(lengths.values()) == 30 and lengths[8] == 0  # all sealed
    store = index._core.store
    id_key = _hkdf(key, index._core.config.uuid_bytes, "id-hash")
    with store.env.begin(db=store._items) as txn:
        keys = {bytes(k) for k, _v in txn.cursor()}
    assert keys == {hmac.new(id_key, str(i).encode(), hashlib.sha256).digest()[:16]
                    for i in range(30)}
    got = index.get([str(i) for i in range(30)], include=["vector"])
    np.testing.assert_array_equal(np.array([g["vector"] for g in got], np.float32), vectors)
    assert index.verify()["ok"]
    client.close()


def _create_with_format(client, key: bytes, version: int):
    """create_index, its CONFIG written in format `version` (as a build of that format did)."""
    import lsmvec.disk.config as config_module
    real = config_module.new_config

    def older(*args, **kwargs):
        config = real(*args, **kwargs)
        config.format = version
        return config
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("lsmvec.client.new_config", older)
        return client.create_index("old", key, dimension=DIM, metric="euclidean")


def test_an_index_of_an_unknown_format_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    """A newer build's index (format 3, CONFIG authentic) is refused by its number."""
    from lsmvec.disk.config import CONFIG_NAME, read_config, write_config
    key = generate_key()
    with Client(tmp_path) as client:
        client.create_index("old", key, dimension=DIM)
    (folder,) = {path.parent for path in tmp_path.rglob(CONFIG_NAME)}
    config, cipher = read_config(folder, key)
    config.format = 3
    write_config(folder, config, cipher)
    with Client(tmp_path) as client:
        with pytest.raises(CorruptionError, match="unknown format 3"):
            client.load_index("old", key)
