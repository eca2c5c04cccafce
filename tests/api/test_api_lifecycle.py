"""Client and index lifecycle: listing, deleting, closing, sharing an open index inside one
process, refusing a second process, surviving a kill -9'd holder, dimension fixed by the first
upsert, the description methods, and exact round trips of ids, contents and metadata."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import unicodedata

import numpy as np
import pytest

from lsmvec import Client
from lsmvec.errors import (ClosedError, DimensionMismatchError, IndexLockedError,
                           IndexNotFoundError, InvalidVectorError)

from conftest import by_id, snapshot, vector_list

DIM = 4
CHILD_TIMEOUT = 120


# ----------------------------------------------------------------------------- list / delete

def test_list_indexes(client, data_dir, key):
    assert client.list_indexes() == []
    client.create_index("docs", key, dimension=3, metric="cosine")
    client.create_index("notes", key, dimension=5)
    client.create_index("a-first", key, dimension=2)
    assert sorted(client.list_indexes()) == ["a-first", "docs", "notes"]
    with Client(data_dir) as other:  # visible to another client on the same folder
        assert sorted(other.list_indexes()) == ["a-first", "docs", "notes"]


def test_delete_index_removes_files_and_frees_the_name(client, data_dir, key):
    ix = client.create_index("gone", key, dimension=DIM)
    ix.upsert([("a", [1.0, 2.0, 3.0, 4.0], "contents", {"m": 1})])
    keep = client.create_index("kept", key, dimension=DIM)
    keep.upsert([("k", [4.0, 3.0, 2.0, 1.0])])
    kept_before = snapshot(keep)
    ix.close()
    client.delete_index("gone", key)

    assert client.list_indexes() == ["kept"]
    assert not any("gone" in entry for entry in os.listdir(data_dir)), os.listdir(data_dir)
    with pytest.raises(IndexNotFoundError):
        client.load_index("gone", key)
    with pytest.raises(IndexNotFoundError):
        client.delete_index("gone", key)
    assert snapshot(keep) == kept_before

    reborn = client.create_index("gone", key, dimension=DIM + 2, metric="cosine")
    assert reborn.list_ids() == [] and reborn.get_num_vectors() == 0
    assert reborn.dimension == DIM + 2 and reborn.metric == "cosine"
    assert reborn.get(["a"]) == []
    reborn.upsert([("b", [1.0] * (DIM + 2))])
    assert reborn.list_ids() == ["b"]


def test_index_delete_index_method(client, data_dir, key):
    ix = client.create_index("self-delete", key, dimension=DIM)
    ix.upsert([("a", [1.0, 0.0, 0.0, 0.0])])
    ix.delete_index()
    assert client.list_indexes() == []
    assert not any("self-delete" in entry for entry in os.listdir(data_dir))
    with pytest.raises(ClosedError):
        ix.list_ids()


# ----------------------------------------------------------------------------- close

def _every_index_call(ix) -> list:
    return [
        lambda: ix.upsert([("z", [1.0, 0.0, 0.0, 0.0])]),
        lambda: ix.upsert(ids=np.array([1]), vectors=np.ones((1, DIM))),
        lambda: ix.query(query_vectors=[1.0, 0.0, 0.0, 0.0]),
        lambda: ix.get(["a"]),
        lambda: ix.delete(["a"]),
        lambda: ix.list_ids(),
        lambda: ix.get_num_vectors(),
    ]


def test_use_after_index_close_raises_closed(client, key):
    ix = client.create_index("c", key, dimension=DIM)
    ix.upsert([("a", [1.0, 2.0, 3.0, 4.0])])
    ix.close()
    ix.close()  # idempotent
    for call in _every_index_call(ix):
        with pytest.raises(ClosedError):
            call()
    again = client.load_index("c", key)  # closing a handle does not harm the index
    assert again.list_ids() == ["a"]


def test_use_after_client_close_raises_closed(data_dir, key):
    c = Client(data_dir)
    ix = c.create_index("c", key, dimension=DIM)
    ix.upsert([("a", [1.0, 2.0, 3.0, 4.0])])
    c.close()
    c.close()  # idempotent
    for call in [lambda: c.list_indexes(), lambda: c.load_index("c", key),
                 lambda: c.create_index("d", key, dimension=DIM), lambda: c.delete_index("c", key)]:
        with pytest.raises(ClosedError):
            call()
    for call in _every_index_call(ix):  # indexes opened through it are closed with it
        with pytest.raises(ClosedError):
            call()
    with Client(data_dir) as c2:
        assert c2.load_index("c", key).list_ids() == ["a"]


def test_context_managers(data_dir, key):
    with Client(data_dir) as c:
        with c.create_index("cm", key, dimension=DIM) as ix:
            ix.upsert([("a", [1.0, 2.0, 3.0, 4.0])])
        with pytest.raises(ClosedError):
            ix.list_ids()
        with c.load_index("cm", key) as ix2:
            assert ix2.list_ids() == ["a"]
    with pytest.raises(ClosedError):
        c.list_indexes()


# ----------------------------------------------------------------------------- sharing / locking

def test_second_client_in_same_process_shares_the_index(data_dir, key):
    c1 = Client(data_dir)
    c2 = Client(data_dir)
    try:
        ix1 = c1.create_index("shared", key, dimension=DIM)
        ix2 = c2.load_index("shared", key)
        ix1.upsert([("from1", [1.0, 0.0, 0.0, 0.0], "one")])
        assert by_id(ix2.get(["from1"]))["from1"]["contents"] == b"one"
        ix2.upsert([("from2", [0.0, 1.0, 0.0, 0.0])])
        assert ix1.query(query_vectors=[0.0, 1.0, 0.0, 0.0], top_k=1)[0]["id"] == "from2"
        ix2.delete(["from1"])
        assert ix1.list_ids() == ["from2"]
        c1.close()  # the other face keeps working
        ix2.upsert([("after", [0.0, 0.0, 1.0, 0.0])])
        assert sorted(ix2.list_ids()) == ["after", "from2"]
    finally:
        c1.close()
        c2.close()
    with Client(data_dir) as c3:
        assert sorted(c3.load_index("shared", key).list_ids()) == ["after", "from2"]


_TRY_OPEN = """
import sys
from lsmvec import Client
from lsmvec.errors import IndexLockedError
with Client(sys.argv[1]) as c:
    try:
        ix = c.load_index(sys.argv[3], bytes.fromhex(sys.argv[2]))
    except IndexLockedError:
        print("LOCKED")
    else:
        print("OPENED", ",".join(sorted(ix.list_ids())))
"""


def _try_open_in_child(path, key: bytes, name: str) -> str:
    out = subprocess.run([sys.executable, "-c", _TRY_OPEN, str(path), key.hex(), name],
                         capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_second_process_gets_index_locked(client, data_dir, key):
    ix = client.create_index("held", key, dimension=DIM)
    ix.upsert([("a", [1.0, 2.0, 3.0, 4.0])])
    assert _try_open_in_child(data_dir, key, "held") == "LOCKED"
    # another index of the same folder is not blocked
    client.create_index("free", key, dimension=DIM).close()
    assert _try_open_in_child(data_dir, key, "free") == "OPENED"
    # the holder keeps working, and once it closes the other process may open it
    ix.upsert([("b", [4.0, 3.0, 2.0, 1.0])])
    ix.close()
    assert _try_open_in_child(data_dir, key, "held") == "OPENED a,b"


_HOLD_AND_SLEEP = """
import sys, time
from lsmvec import Client
c = Client(sys.argv[1])
ix = c.load_index("victim", bytes.fromhex(sys.argv[2]))
ix.upsert([("from_child", [1.0, 2.0, 3.0, 4.0], "child contents", {"who": "child"})])
print("ready", flush=True)
time.sleep(600)
"""


def test_lock_of_killed_process_does_not_block(data_dir, key):
    with Client(data_dir) as c:
        c.create_index("victim", key, dimension=DIM).upsert([("before", [0.0, 0.0, 0.0, 1.0])])
    child = subprocess.Popen([sys.executable, "-c", _HOLD_AND_SLEEP, str(data_dir), key.hex()],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(CHILD_TIMEOUT, child.kill)  # never hang on a stuck child
    watchdog.start()
    try:
        line = child.stdout.readline()
        assert line.strip() == "ready", child.stderr.read() if child.poll() is not None else line
        with Client(data_dir) as c:  # while the child lives, it holds the lock
            with pytest.raises(IndexLockedError) as info:
                c.load_index("victim", key)
            assert info.value.pid == child.pid  # the error names the holder
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=CHILD_TIMEOUT)
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    with Client(data_dir) as c:
        ix = c.load_index("victim", key)
        assert sorted(ix.list_ids()) == ["before", "from_child"]  # the acknowledged write survived
        [item] = ix.get(["from_child"])
        assert item["contents"] == b"child contents" and item["metadata"] == {"who": "child"}
        # and the lock works again for the new holder
        assert _try_open_in_child(data_dir, key, "victim") == "LOCKED"


# ----------------------------------------------------------------------------- configuration

def test_dimension_fixed_by_first_upsert_and_persisted(data_dir, key):
    with Client(data_dir) as c:
        ix = c.create_index("free-dim", key)
        assert ix.dimension is None
        assert ix.index_config()["dimension"] is None
        # a failed first batch fixes nothing
        with pytest.raises(InvalidVectorError):
            ix.upsert([("x", [1.0] * 7), ("y", [float("nan")] * 7)])
        assert ix.dimension is None and ix.list_ids() == []
        ix.upsert([("a", [1.0, 2.0, 3.0, 4.0, 5.0])])
        assert ix.dimension == 5
        with pytest.raises(DimensionMismatchError):
            ix.upsert([("b", [1.0] * 7)])
    with Client(data_dir) as c:
        ix = c.load_index("free-dim", key)
        assert ix.dimension == 5
        assert ix.index_config()["dimension"] == 5
        with pytest.raises(DimensionMismatchError):
            ix.upsert([("b", [1.0] * 7)])
        with pytest.raises(DimensionMismatchError):
            ix.query(query_vectors=[1.0] * 7)
        ix.upsert([("b", [5.0, 4.0, 3.0, 2.0, 1.0])])
        assert ix.query(query_vectors=[5.0, 4.0, 3.0, 2.0, 1.0], top_k=1)[0]["id"] == "b"


def test_dimension_none_fixed_by_numpy_overload(client, key):
    ix = client.create_index("np-dim", key, metric="cosine")
    ix.upsert(ids=np.array([1, 2]), vectors=np.ones((2, 6)))
    assert ix.dimension == 6
    with pytest.raises(DimensionMismatchError):
        ix.upsert([("c", [1.0] * 5)])


@pytest.mark.parametrize("metric", ["euclidean", "squared_euclidean", "cosine"])
def test_description_methods(data_dir, key, metric):
    with Client(data_dir) as c:
        ix = c.create_index("described", key, dimension=8, metric=metric)
        for handle in (ix, c.load_index("described", key)):
            assert handle.index_name() == "described"
            assert handle.dimension == 8
            assert handle.metric == metric
            cfg = handle.index_config()
            assert {"dimension", "metric", "index_type", "n_lists", "embedding_model"} <= set(cfg)
            assert cfg["dimension"] == 8 and cfg["metric"] == metric
            assert cfg["embedding_model"] is None
            assert isinstance(handle.index_type(), str) and handle.index_type()
            assert cfg["index_type"] == handle.index_type()
            assert cfg["n_lists"] == handle.n_lists
    with Client(data_dir) as c:
        ix = c.load_index("described", key)
        assert (ix.index_name(), ix.dimension, ix.metric) == ("described", 8, metric)
        assert ix.index_config()["metric"] == metric


def test_default_metric_is_euclidean(client, key):
    ix = client.create_index("default", key, dimension=2)
    assert ix.metric == "euclidean"
    ix.upsert([("a", [0.0, 0.0])])
    assert ix.query(query_vectors=[3.0, 4.0], top_k=1)[0]["distance"] == pytest.approx(5.0)


# ----------------------------------------------------------------------------- round trips

NFC = unicodedata.normalize("NFC", "café")
NFD = unicodedata.normalize("NFD", "café")
ODD_IDS = [NFC, NFD, "🐶🐱", "with space", "a/b", "../x", "Ω≈ç√", "tab\there", "0", "007",
           "é" * 512, "a" * 1024, "🐶" * 256]


def test_ids_round_trip_exactly(data_dir, key):
    assert NFC != NFD
    assert len(("é" * 512).encode()) == 1024 and len(("🐶" * 256).encode()) == 1024
    rng = np.random.default_rng(5)
    vecs = {item_id: rng.standard_normal(DIM).astype(np.float32) for item_id in ODD_IDS}
    with Client(data_dir) as c:
        ix = c.create_index("ids", key, dimension=DIM)
        ix.upsert([{"id": i, "vector": v, "contents": i} for i, v in vecs.items()])
    with Client(data_dir) as c:
        ix = c.load_index("ids", key)
        assert sorted(ix.list_ids()) == sorted(ODD_IDS)
        assert ix.get_num_vectors() == len(ODD_IDS)  # NFC and NFD are two items
        for item_id, v in vecs.items():
            [got] = ix.get([item_id])
            assert got["id"] == item_id and got["contents"] == item_id.encode("utf-8")
            np.testing.assert_allclose(vector_list(got["vector"]), v, rtol=1e-6)
            hit = ix.query(query_vectors=v, top_k=1)[0]
            assert hit["id"] == item_id
        ix.delete([NFD])
        assert NFC in ix.list_ids() and NFD not in ix.list_ids()


def test_int_ids_become_decimal_strings(client, key):
    ix = client.create_index("ints", key, dimension=DIM)
    ix.upsert(ids=np.array([101, 7, -3], dtype=np.int64), vectors=np.eye(3, DIM))
    assert sorted(ix.list_ids()) == ["-3", "101", "7"]
    assert [i["id"] for i in ix.get(["7", "101"], include=[])] == ["7", "101"]
    ix.upsert(ids=np.array([101]), vectors=np.full((1, DIM), 2.0))  # "101" overwritten
    assert ix.get_num_vectors() == 3
    np.testing.assert_allclose(vector_list(ix.get(["101"])[0]["vector"]), [2.0] * DIM)


def test_contents_round_trip(data_dir, key):
    cases = {"text": "héllo wörld 🐶", "bytes": b"\x00\xff\x10binary\x00", "ascii": "plain",
             "empty_bytes": b"", "empty_str": "", "big": b"x" * 200_000}
    with Client(data_dir) as c:
        ix = c.create_index("contents", key, dimension=DIM)
        ix.upsert([{"id": k, "vector": [1.0, float(j), 0.0, 0.0], "contents": v}
                   for j, (k, v) in enumerate(cases.items())])
        ix.upsert([("none", [0.0, 0.0, 0.0, 1.0])])
        check_contents(ix, cases)
    with Client(data_dir) as c:
        check_contents(c.load_index("contents", key), cases)


def check_contents(ix, cases: dict) -> None:
    got = by_id(ix.get(list(cases), include=["contents"]))
    for k, v in cases.items():
        want = v.encode("utf-8") if isinstance(v, str) else v
        assert isinstance(got[k]["contents"], bytes), k
        assert got[k]["contents"] == want, k
    assert ix.get(["none"], include=["contents"])[0].get("contents") is None


METADATA = {
    "type": "dog",
    "nested": {"owner": {"name": "Ann", "age": 41, "tags": ["a", "b", {"deep": [1, 2.5, None]}]}},
    "list": [1, "two", 3.0, True, None, [], {}],
    "none": None,
    "yes": True,
    "no": False,
    "float": 0.1,
    "negative": -12,
    "big": 2 ** 53 + 1,
    "unicode": "ünïcödé 🐶",
    "empty_dict": {},
    "empty_list": [],
}


def _assert_same_json(got, want, path: str = "metadata") -> None:
    """Equal values AND equal types (True must not come back as 1, 3.0 not as 3)."""
    assert type(got) is type(want), f"{path}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            _assert_same_json(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for j, (g, w) in enumerate(zip(got, want)):
            _assert_same_json(g, w, f"{path}[{j}]")
    else:
        assert got == want, path


def test_metadata_round_trip(data_dir, key):
    with Client(data_dir) as c:
        ix = c.create_index("meta", key, dimension=DIM)
        ix.upsert([{"id": "m", "vector": [1.0, 2.0, 3.0, 4.0], "metadata": METADATA}])
        _assert_same_json(ix.get(["m"], include=["metadata"])[0]["metadata"], METADATA)
        hit = ix.query(query_vectors=[1.0, 2.0, 3.0, 4.0], top_k=1, include=["metadata"])[0]
        _assert_same_json(hit["metadata"], METADATA)
        hits = ix.query(query_vectors=[1.0, 2.0, 3.0, 4.0], filters={"nested.owner.name": "Ann"})
        assert [h["id"] for h in hits] == ["m"]
    with Client(data_dir) as c:
        ix = c.load_index("meta", key)
        _assert_same_json(ix.get(["m"])[0]["metadata"], METADATA)


def test_metadata_is_copied_not_referenced(client, key):
    ix = client.create_index("copy", key, dimension=DIM)
    meta = {"tags": ["a"], "inner": {"n": 1}}
    ix.upsert([{"id": "m", "vector": [1.0, 0.0, 0.0, 0.0], "metadata": meta}])
    meta["tags"].append("mutated")
    meta["inner"]["n"] = 2
    got = ix.get(["m"], include=["metadata"])[0]["metadata"]
    assert got == {"tags": ["a"], "inner": {"n": 1}}
    got["tags"].append("again")
    assert ix.get(["m"], include=["metadata"])[0]["metadata"] == {"tags": ["a"], "inner": {"n": 1}}


def test_overwrite_replaces_item_as_a_whole(client, key):
    ix = client.create_index("whole", key, dimension=DIM)
    ix.upsert([{"id": "a", "vector": [1.0, 0, 0, 0], "contents": "old", "metadata": {"v": 1}}])
    ix.upsert([{"id": "a", "vector": [0, 1.0, 0, 0]}])
    [item] = ix.get(["a"])
    np.testing.assert_allclose(vector_list(item["vector"]), [0, 1.0, 0, 0])
    assert item.get("contents") is None
    assert item.get("metadata") in (None, {})
    assert ix.query(query_vectors=[0, 1.0, 0, 0], filters={"v": 1}) == []
