"""Every bad input of api.md raises the documented error type and leaves the index unchanged
(snapshot = sorted list_ids + get of everything + get_num_vectors, before and after)."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from lsmvec import Client
from lsmvec.errors import (ClosedError, DimensionMismatchError, FilterError, IndexExistsError,
                           IndexLockedError, IndexNotFoundError, InvalidArgumentError,
                           InvalidContentsError, InvalidIdError, InvalidIndexNameError,
                           InvalidKeyError, InvalidMetadataError, InvalidTypeError,
                           InvalidVectorError, LsmvecError, MissingVectorError, WrongKeyError)

from conftest import snapshot

DIM = 4
GOOD = [0.5, -1.0, 2.0, 0.25]


@pytest.fixture(params=["euclidean", "cosine"])
def index(request, client, key):
    """An index holding a few items with contents and metadata (so a partial write would show)."""
    ix = client.create_index("errs", key, dimension=DIM, metric=request.param)
    ix.upsert([{"id": f"keep{j}", "vector": [j + 1.0, 2.0, -1.0, 0.5 * j],
                "contents": f"c{j}", "metadata": {"j": j, "tags": ["x"]}} for j in range(5)])
    return ix


# (name, bad item, expected error). Each is tried alone and as the LAST item of a batch whose
# other items are valid new ids and an overwrite of an existing id.
BAD_ITEMS = [
    ("dimension_short", {"id": "bad", "vector": [1.0, 2.0, 3.0]}, DimensionMismatchError),
    ("dimension_long", {"id": "bad", "vector": [1.0, 2.0, 3.0, 4.0, 5.0]}, DimensionMismatchError),
    ("nan", {"id": "bad", "vector": [1.0, math.nan, 0.0, 0.0]}, InvalidVectorError),
    ("inf", {"id": "bad", "vector": [math.inf, 1.0, 0.0, 0.0]}, InvalidVectorError),
    ("minus_inf", {"id": "bad", "vector": [1.0, 1.0, -math.inf, 0.0]}, InvalidVectorError),
    ("inf_after_float32_cast", {"id": "bad", "vector": [1e39, 1.0, 0.0, 0.0]}, InvalidVectorError),
    ("nan_numpy_vector", {"id": "bad", "vector": np.array([np.nan, 1, 1, 1])}, InvalidVectorError),
    ("empty_id", {"id": "", "vector": GOOD}, InvalidIdError),
    ("id_1025_ascii_bytes", {"id": "a" * 1025, "vector": GOOD}, InvalidIdError),
    ("id_1025_utf8_bytes", {"id": "é" * 512 + "a", "vector": GOOD}, InvalidIdError),
    ("bool_id", {"id": True, "vector": GOOD}, InvalidIdError),
    ("none_id", {"id": None, "vector": GOOD}, InvalidIdError),
    ("vector_is_str", {"id": "bad", "vector": "abcd"}, InvalidTypeError),
    ("vector_has_str", {"id": "bad", "vector": [1.0, "x", 0.0, 0.0]}, InvalidTypeError),
    ("contents_int", {"id": "bad", "vector": GOOD, "contents": 42}, InvalidContentsError),
    ("metadata_int_key", {"id": "bad", "vector": GOOD, "metadata": {1: "x"}}, InvalidMetadataError),
    ("metadata_set_value", {"id": "bad", "vector": GOOD, "metadata": {"s": {"a", "b"}}},
     InvalidMetadataError),
    ("metadata_nested_set", {"id": "bad", "vector": GOOD, "metadata": {"o": {"l": [1, {2}]}}},
     InvalidMetadataError),
    ("metadata_not_dict", {"id": "bad", "vector": GOOD, "metadata": "type=dog"},
     InvalidMetadataError),
    ("missing_vector_no_model", {"id": "bad", "contents": "text"}, MissingVectorError),
    ("tuple_nan", ("bad", [math.nan, 0.0, 0.0, 1.0]), InvalidVectorError),
    ("tuple_wrong_dimension", ("bad", [1.0, 2.0]), DimensionMismatchError),
    ("tuple_empty_id", ("", GOOD), InvalidIdError),
]

VALUE_ERRORS = (DimensionMismatchError, InvalidVectorError, InvalidIdError, InvalidContentsError,
                InvalidMetadataError, MissingVectorError)


@pytest.mark.parametrize("position", ["alone", "last_of_batch"])
@pytest.mark.parametrize("name,bad,error", BAD_ITEMS, ids=[b[0] for b in BAD_ITEMS])
def test_bad_upsert_item_raises_and_changes_nothing(index, name, bad, error, position):
    before = snapshot(index)
    batch = [bad]
    if position == "last_of_batch":
        batch = [{"id": "new1", "vector": [9.0, 9.0, 9.0, 9.0], "contents": "n"},
                 ("new2", [1.0, 0.0, 0.0, 0.0]),
                 {"id": "keep0", "vector": [7.0, 7.0, 7.0, 7.0], "metadata": {"overwritten": True}},
                 bad]
    with pytest.raises(error) as info:
        index.upsert(batch)
    if error in VALUE_ERRORS:
        assert isinstance(info.value, ValueError)
    else:
        assert isinstance(info.value, TypeError)
    assert snapshot(index) == before
    assert index.query(query_vectors=[9.0, 9.0, 9.0, 9.0], top_k=1)[0]["id"] != "new1"


@pytest.mark.parametrize("position", ["alone", "last_of_batch"])
def test_zero_vector_under_cosine(client, key, position):
    ix = client.create_index("cos", key, dimension=DIM, metric="cosine")
    ix.upsert([("a", [1.0, 0.0, 0.0, 0.0])])
    before = snapshot(ix)
    batch = [("b", [0.0, 1.0, 0.0, 0.0]), ("a", [0.0, 0.0, 1.0, 0.0])] if position != "alone" else []
    with pytest.raises(InvalidVectorError):
        ix.upsert(batch + [{"id": "z", "vector": [0.0, 0.0, 0.0, 0.0]}])
    assert snapshot(ix) == before
    with pytest.raises(InvalidVectorError):
        ix.query(query_vectors=[0.0, 0.0, 0.0, 0.0])
    # Not an error under euclidean: zero is a fine point there.
    eu = client.create_index("eu", key, dimension=DIM)
    eu.upsert([("z", [0.0, 0.0, 0.0, 0.0])])
    assert eu.query(query_vectors=[0.0, 0.0, 0.0, 0.0], top_k=1)[0]["id"] == "z"


def test_error_names_the_item(index):
    with pytest.raises(InvalidVectorError) as info:
        index.upsert([("fine", GOOD), ("culprit_id", [math.nan, 0, 0, 0])])
    assert "culprit_id" in str(info.value)


@pytest.mark.parametrize("case", ["nan_last_row", "wrong_dimension", "length_mismatch", "bool_ids"])
def test_bad_numpy_overload_changes_nothing(index, case):
    before = snapshot(index)
    ids = np.array([900, 901, 902])
    vectors = np.ones((3, DIM))
    error: type = InvalidVectorError
    if case == "nan_last_row":
        vectors[2, 1] = np.nan
    elif case == "wrong_dimension":
        vectors = np.ones((3, DIM + 1))
        error = DimensionMismatchError
    elif case == "length_mismatch":
        vectors = np.ones((2, DIM))
        error = InvalidArgumentError
    else:
        ids = np.array([True, False, True])
        error = InvalidIdError
    with pytest.raises(error):
        index.upsert(ids=ids, vectors=vectors)
    assert snapshot(index) == before


BAD_QUERIES = [
    ("wrong_dimension", dict(query_vectors=[1.0, 2.0, 3.0]), DimensionMismatchError),
    ("wrong_dimension_batch", dict(query_vectors=[[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]]),
     (DimensionMismatchError, InvalidVectorError)),
    ("nan", dict(query_vectors=[1.0, math.nan, 0.0, 0.0]), InvalidVectorError),
    ("inf", dict(query_vectors=np.array([[1.0, 1, 1, 1], [math.inf, 0, 0, 0]])), InvalidVectorError),
    ("unknown_include", dict(query_vectors=GOOD, include=["distance", "score"]), InvalidArgumentError),
    ("top_k_zero", dict(query_vectors=GOOD, top_k=0), InvalidArgumentError),
    ("top_k_negative", dict(query_vectors=GOOD, top_k=-3), InvalidArgumentError),
    ("top_k_bool", dict(query_vectors=GOOD, top_k=True), (InvalidArgumentError, InvalidTypeError)),
    ("filter_unknown_top_operator", dict(query_vectors=GOOD, filters={"$foo": 1}), FilterError),
    ("filter_unknown_field_operator", dict(query_vectors=GOOD, filters={"j": {"$bogus": 1}}),
     FilterError),
    ("filter_and_not_a_list", dict(query_vectors=GOOD, filters={"$and": {"j": 1}}), FilterError),
    ("filter_in_not_a_list", dict(query_vectors=GOOD, filters={"j": {"$in": 3}}), FilterError),
]


@pytest.mark.parametrize("name,kwargs,error", BAD_QUERIES, ids=[q[0] for q in BAD_QUERIES])
def test_bad_query_raises_and_changes_nothing(index, name, kwargs, error):
    before = snapshot(index)
    with pytest.raises(error) as info:
        index.query(**kwargs)
    assert isinstance(info.value, (ValueError, TypeError))
    if name.startswith(("top_k_zero", "top_k_neg", "filter", "unknown_include", "nan", "inf",
                        "wrong_dimension")):
        assert isinstance(info.value, ValueError)
    assert snapshot(index) == before


def test_unknown_include_on_get(index):
    before = snapshot(index)
    with pytest.raises(InvalidArgumentError):
        index.get(["keep0"], include=["vector", "colour"])
    with pytest.raises(InvalidArgumentError):  # distance has no meaning for get
        index.get(["keep0"], include=["distance"])
    assert snapshot(index) == before


def test_bad_ids_on_get_and_delete(index):
    before = snapshot(index)
    for bad in ("", "a" * 1025, True):
        with pytest.raises(InvalidIdError):
            index.delete([bad])
        with pytest.raises(InvalidIdError):
            index.get([bad])
    with pytest.raises(InvalidIdError):  # nothing of a batch delete with one bad id happens
        index.delete(["keep0", "keep1", ""])
    assert snapshot(index) == before


def test_unknown_index_on_load(client, key):
    client.create_index("present", key, dimension=DIM)
    with pytest.raises(IndexNotFoundError) as info:
        client.load_index("absent", key)
    assert isinstance(info.value, ValueError)
    assert client.list_indexes() == ["present"]
    with pytest.raises(IndexNotFoundError):
        client.delete_index("absent", key)


def test_existing_index_on_create_leaves_it_intact(client, key):
    ix = client.create_index("taken", key, dimension=DIM)
    ix.upsert([("a", GOOD, "contents", {"m": 1})])
    before = snapshot(ix)
    for kwargs in ({"dimension": DIM}, {"dimension": DIM + 3, "metric": "cosine"}):
        with pytest.raises(IndexExistsError) as info:
            client.create_index("taken", key, **kwargs)
        assert isinstance(info.value, ValueError)
    assert snapshot(ix) == before
    assert ix.dimension == DIM and ix.metric == "euclidean"
    ix.close()
    again = client.load_index("taken", key)
    assert snapshot(again) == before


UNSAFE_NAMES = ["../x", "a/b", "", ".hidden", "n" * 129, "a b", "..", ".", "/abs", "a\\b",
                "a\x00b"]


@pytest.mark.parametrize("name", UNSAFE_NAMES, ids=[repr(n)[:20] for n in UNSAFE_NAMES])
def test_unsafe_index_names_refused(client, data_dir, key, name):
    outside_before = sorted(os.listdir(data_dir.parent))
    with pytest.raises(InvalidIndexNameError) as info:
        client.create_index(name, key, dimension=DIM)
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidIndexNameError):
        client.load_index(name, key)
    with pytest.raises(InvalidIndexNameError):
        client.delete_index(name, key)
    assert client.list_indexes() == []
    assert sorted(os.listdir(data_dir.parent)) == outside_before
    assert not (data_dir.parent / "x").exists()
    assert not any(not e.startswith(".") for e in os.listdir(data_dir))


def test_name_boundaries_accepted(client, key):
    longest = "n" * 128
    for name in (longest, "a", "A-b_c.d", "x.", "0"):
        client.create_index(name, key, dimension=DIM).close()
    assert sorted(client.list_indexes()) == sorted([longest, "a", "A-b_c.d", "x.", "0"])


@pytest.mark.parametrize("bad_key,error", [
    (bytes(31), InvalidKeyError), (bytes(33), InvalidKeyError), (b"", InvalidKeyError),
    ("k" * 32, InvalidTypeError), (None, InvalidTypeError), (12345, InvalidTypeError),
    ([0] * 32, InvalidTypeError),
], ids=["31_bytes", "33_bytes", "empty", "str", "none", "int", "list"])
def test_bad_key(client, key, bad_key, error):
    with pytest.raises(error) as info:
        client.create_index("k", bad_key, dimension=DIM)
    assert isinstance(info.value, ValueError if error is InvalidKeyError else TypeError)
    assert client.list_indexes() == []
    ix = client.create_index("k", key, dimension=DIM)
    ix.upsert([("a", GOOD)])
    before = snapshot(ix)
    ix.close()
    with pytest.raises(error):
        client.load_index("k", bad_key)
    assert snapshot(client.load_index("k", key)) == before


def test_key_may_be_bytearray_or_memoryview(client, key):
    client.create_index("kb", bytearray(key), dimension=DIM).upsert([("a", GOOD)])
    assert client.load_index("kb", memoryview(key)).list_ids() == ["a"]


def _assert_key_not_leaked(message: str, *keys: bytes) -> None:
    for k in keys:
        for form in (k.hex(), k.hex().upper(), repr(k), str(k), k.decode("latin-1")):
            assert form not in message, "the error message reveals a key"


def test_wrong_key_on_load(client, key):
    from lsmvec import generate_key

    ix = client.create_index("secret", key, dimension=DIM)
    ix.upsert([("a", GOOD, "private contents", {"m": "private"})])
    ix.close()
    other = generate_key()
    with pytest.raises(WrongKeyError) as info:
        client.load_index("secret", other)
    assert isinstance(info.value, ValueError)
    _assert_key_not_leaked(str(info.value) + repr(info.value), key, other)
    assert "private" not in str(info.value)
    # the right key still opens it, intact
    assert client.load_index("secret", key).get(["a"])[0]["contents"] == b"private contents"


def test_wrong_key_while_index_is_open(client, data_dir, key):
    """The key is checked even when the index is already open in this process."""
    from lsmvec import generate_key

    ix = client.create_index("secret", key, dimension=DIM)
    ix.upsert([("a", GOOD)])
    other = generate_key()
    with pytest.raises(WrongKeyError) as info:
        client.load_index("secret", other)
    _assert_key_not_leaked(str(info.value), key, other)
    with Client(data_dir) as second:
        with pytest.raises(WrongKeyError):
            second.load_index("secret", other)
    assert ix.list_ids() == ["a"]


def test_error_hierarchy():
    for cls in (InvalidArgumentError, DimensionMismatchError, InvalidVectorError, InvalidIdError,
                InvalidMetadataError, InvalidContentsError, InvalidIndexNameError,
                InvalidKeyError, FilterError, MissingVectorError, IndexNotFoundError,
                IndexExistsError, WrongKeyError):
        assert issubclass(cls, ValueError) and issubclass(cls, LsmvecError), cls
    assert issubclass(InvalidTypeError, TypeError) and issubclass(InvalidTypeError, LsmvecError)
    for cls in (IndexLockedError, ClosedError):
        assert issubclass(cls, LsmvecError)
        assert not issubclass(cls, (ValueError, TypeError))
    import lsmvec.errors
    import lsmvec.wal.errors
    assert lsmvec.errors.InvalidIdError is lsmvec.wal.errors.InvalidIdError  # defined once


def test_bad_items_container_types(index):
    before = snapshot(index)
    with pytest.raises(InvalidTypeError):
        index.upsert({"id": "x", "vector": GOOD})  # a bare dict, not a list of them
    with pytest.raises(InvalidTypeError):
        index.upsert("not items")
    with pytest.raises(InvalidTypeError):
        index.upsert([42])
    assert snapshot(index) == before


def test_invalid_metric_and_dimension_on_create(client, key):
    with pytest.raises(InvalidArgumentError):
        client.create_index("m", key, dimension=DIM, metric="manhattan")
    for dim in (0, -1, True, 2.5):
        with pytest.raises((InvalidArgumentError, InvalidTypeError)):
            client.create_index("m", key, dimension=dim)
    assert client.list_indexes() == []


def test_second_process_error_is_index_locked(client, data_dir, key):
    """(The lifecycle module covers this in detail; here: the type a second process sees.)"""
    client.create_index("held", key, dimension=DIM)
    code = (
        "import sys\n"
        "from lsmvec import Client\n"
        "from lsmvec.errors import IndexLockedError\n"
        "c = Client(sys.argv[1])\n"
        "try:\n"
        "    c.load_index('held', bytes.fromhex(sys.argv[2]))\n"
        "except IndexLockedError as e:\n"
        "    print('locked', isinstance(e, RuntimeError), e.pid, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(data_dir), key.hex()],
                         capture_output=True, text=True, timeout=120)
    word, is_runtime, pid, message = out.stdout.strip().split(" ", 3)
    assert (word, is_runtime) == ("locked", "True"), out.stderr
    assert int(pid) == os.getpid() and f"process {os.getpid()}" in message  # names the holder
