"""LMDB's map grows by itself: MapFullError never reaches a user, through flushes, merges and
reopens, with queries and upserts going on meanwhile."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import lsmvec.disk.store as store_module
from lsmvec import Client, generate_key


def test_the_store_map_grows_under_flushes_and_merges(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "_INITIAL_MAP", 256 << 10)  # 256 KiB: fills at once
    rng = np.random.default_rng(0)
    key = generate_key()
    oracle: dict[str, np.ndarray] = {}
    errors: list[BaseException] = []
    with Client(tmp_path) as client:
        index = client.create_index("g", key, dimension=8, memtable_bytes=64 << 10)
        stop = threading.Event()

        def reader() -> None:
            while not stop.is_set():
                try:
                    index.query(rng.standard_normal(8).astype(np.float32), top_k=3)
                except BaseException as exc:  # noqa: BLE001 -- reported below
                    errors.append(exc)
                    return

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for n in range(40):
                ids = [f"{n}-{i}" for i in range(200)]
                vectors = rng.standard_normal((200, 8)).astype(np.float32)
                index.upsert([{"id": i, "vector": v, "contents": "x" * 300,
                               "metadata": {"n": n}} for i, v in zip(ids, vectors)])
                oracle.update(zip(ids, vectors))
            index.compact()
        finally:
            stop.set()
            thread.join()
        assert not errors, errors[0]
        assert index._core.store.env.info()["map_size"] > 256 << 10
        assert index.get_num_vectors() == len(oracle)
    with Client(tmp_path) as client:
        index = client.load_index("g", key)
        got = {it["id"]: it["vector"] for it in index.get(list(oracle), include=["vector"])}
        assert set(got) == set(oracle)
        for item_id, vector in oracle.items():
            np.testing.assert_array_equal(np.asarray(got[item_id], np.float32), vector)
        assert index.verify()["ok"]
