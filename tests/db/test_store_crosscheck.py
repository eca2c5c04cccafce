"""LMDB keeps no page checksums, so a damaged page can make an item's key unreachable. Reads
cross-check the store against the segments (whose row ids are sealed): an item a segment
still expects but the store lost is a CorruptionError, never a silently missing result."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lsmvec import Client, generate_key
from lsmvec.errors import CorruptionError

DIM = 6


def build(path: Path) -> tuple[object, object, np.ndarray]:
    client = Client(path)
    index = client.create_index("x", generate_key(), dimension=DIM, metric="euclidean")
    vectors = np.random.default_rng(0).standard_normal((300, DIM)).astype(np.float32)
    index.upsert([{"id": str(i), "vector": vectors[i], "metadata": {"tag": i % 2}}
                  for i in range(300)])
    index.flush()
    index.upsert([{"id": str(i), "vector": vectors[i] + 1} for i in range(0, 20)])  # supersede
    index.delete([str(i) for i in range(20, 40)])
    index.flush()
    return client, index, vectors


def lose_entry(index, item_id: str) -> None:
    """What a damaged B-tree page does: the key is no longer found."""
    store = index._core.store
    with store.env.begin(write=True, db=store._items) as txn:
        assert txn.delete(store._cipher.id_hash(item_id))


def test_get_of_an_item_the_store_lost_raises(tmp_path: Path) -> None:
    client, index, _ = build(tmp_path)
    with client:
        assert [it["id"] for it in index.get(["50", "7", "25", "nope"])] == ["50", "7"]
        lose_entry(index, "50")
        with pytest.raises(CorruptionError, match="lost"):
            index.get(["50"])
        # unknown and deleted ids are still simply absent, and other items still read
        assert [it["id"] for it in index.get(["nope", "25", "51", "7"])] == ["51", "7"]


def test_a_lost_entry_of_a_superseded_item_is_caught_in_its_newer_segment(tmp_path: Path) -> None:
    client, index, _ = build(tmp_path)
    with client:
        lose_entry(index, "7")  # its live row is in the second segment; the first one's is dead
        with pytest.raises(CorruptionError):
            index.get(["7"])


def test_a_filtered_query_meeting_a_lost_entry_raises(tmp_path: Path) -> None:
    client, index, vectors = build(tmp_path)
    with client:
        lose_entry(index, "60")
        # post-filtered (the term index cannot test a $regex on a number): reads the hits
        with pytest.raises(CorruptionError):
            index.query(vectors[60], top_k=5, filters={"$or": [{"tag": 0}, {"tag": {"$regex": "1"}}]})
        # answered from the term index's exact mask: the hit's store value is read for its
        # metadata, and found missing
        with pytest.raises(CorruptionError):
            index.query(vectors[60], top_k=5, filters={"$or": [{"tag": 0}, {"tag": 1}]},
                        include=["distance", "metadata"])


def test_the_cross_check_survives_reopen_and_merges(tmp_path: Path) -> None:
    client = Client(tmp_path)
    key = generate_key()
    index = client.create_index("x", key, dimension=DIM)
    vectors = np.random.default_rng(1).standard_normal((100, DIM)).astype(np.float32)
    for part in range(4):
        index.upsert(ids=[str(i) for i in range(part * 25, part * 25 + 25)],
                     vectors=vectors[part * 25:part * 25 + 25])
        index.flush()
    index.compact()
    client.close()
    with Client(tmp_path) as client:
        index = client.load_index("x", key)
        assert len(index.get([str(i) for i in range(100)])) == 100
        lose_entry(index, "99")
        with pytest.raises(CorruptionError):
            index.get(["99"])


def test_verify_walks_the_store_in_a_child_first(tmp_path: Path, monkeypatch) -> None:
    """LMDB aborts the process on some damaged pages (no exception is possible): verify()
    walks the tree in a child first and reports a child killed by a signal as damage,
    without walking it in-process."""
    import lsmvec.disk.store_walk as store_module
    client, index, _ = build(tmp_path)
    with client:
        assert index.verify()["ok"]
        monkeypatch.setattr(store_module, "_WALK_CHILD", "import os; os.abort()")
        walked = []
        monkeypatch.setattr(type(index._core.store), "iter_items",
                            lambda self: walked.append(1) or iter(()))
        report = index.verify()
        assert not report["ok"] and not walked
        assert any("SIGABRT" in p["message"] for p in report["problems"]), report["problems"]
