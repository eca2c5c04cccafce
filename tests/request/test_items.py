"""lsmvec.items: every upsert form of the seed document becomes one validated, columnar Batch.

The oracle is a plain dict (last occurrence of an id wins, in order of last occurrence) plus
NumPy in float64: a stored vector is the input cast to float32, and under cosine that cast
divided by its float64 norm.
"""
from __future__ import annotations

import array
import math
import unicodedata
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lsmvec.errors import (DimensionMismatchError, InvalidArgumentError, InvalidContentsError,
                           InvalidIdError, InvalidMetadataError, InvalidTypeError,
                           InvalidVectorError, LsmvecError, MissingVectorError)
from lsmvec.request.items import (MAX_ID_BYTES, MAX_METADATA_BYTES, MAX_METADATA_DEPTH, Batch,
                          attach_embeddings, finish_vectors, normalize_ids, normalize_upsert)
from lsmvec.request.vectors import normalize_query


def upsert(items: Any = None, *, dimension: int | None = None, metric: str = "euclidean",
           embeds: bool = False, **kw: Any) -> Batch:
    return normalize_upsert(items, dimension=dimension, metric=metric, embeds=embeds, **kw)


def as32(vectors: Any) -> np.ndarray:
    return np.asarray(vectors, dtype=np.float32)


def unit(vectors: Any) -> np.ndarray:
    v = np.atleast_2d(as32(vectors)).astype(np.float64)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def check_batch_shape(b: Batch) -> None:
    """Invariants every Batch must satisfy, whatever the input."""
    n = len(b.ids)
    assert len(b) == n == len(b.contents) == len(b.metadata)
    assert b.vectors.dtype == np.float32 and b.vectors.flags.c_contiguous
    assert b.vectors.shape[0] == n
    assert b.vectors.shape[1] == (b.dimension or 0)
    assert b.embed_rows.dtype == np.int64 and len(b.embed_rows) == len(b.texts)
    assert len(set(b.ids)) == n
    assert all(isinstance(i, str) for i in b.ids)
    assert all(c is None or type(c) is bytes for c in b.contents)


def raises(exc: type[Exception], *needles: str):
    """pytest.raises that also checks the message names each needle (item index, id, field)."""
    class _Ctx:
        def __enter__(self) -> None:
            self.ctx = pytest.raises(exc)
            self.info = self.ctx.__enter__()

        def __exit__(self, *args: Any) -> bool:
            handled = self.ctx.__exit__(*args)
            message = str(self.info.value)
            for needle in needles:
                assert needle in message, f"{needle!r} not in {message!r}"
            return handled
    return _Ctx()


# ----------------------------------------------------------------------------- the seed's forms

def test_seed_single_dict_in_a_list() -> None:
    b = upsert([{"id": "item_1", "vector": [0.1, 0.2, 0.3]}])
    check_batch_shape(b)
    assert b.ids == ["item_1"] and b.dimension == 3
    np.testing.assert_array_equal(b.vectors, as32([[0.1, 0.2, 0.3]]))
    assert b.contents == [None] and b.metadata == [None]
    assert b.embed_rows.size == 0 and b.texts == []


def test_seed_metadata_is_kept_and_copied() -> None:
    meta = {"type": "dog", "temperament": "good boy", "tags": ["a", "b"], "owner": {"n": 1}}
    b = upsert([{"id": "item_1", "vector": [0.1, 0.2, 0.3], "metadata": meta}])
    assert b.metadata == [{"type": "dog", "temperament": "good boy", "tags": ["a", "b"],
                           "owner": {"n": 1}}]
    meta["tags"].append("c")
    meta["owner"]["n"] = 2
    assert b.metadata[0]["tags"] == ["a", "b"] and b.metadata[0]["owner"] == {"n": 1}


def test_seed_batch_upsert() -> None:
    b = upsert([{"id": "item_1", "vector": [0.1, 0.2, 0.3]},
                {"id": "item_2", "vector": [0.4, 0.5, 0.6]}])
    check_batch_shape(b)
    assert b.ids == ["item_1", "item_2"]
    np.testing.assert_array_equal(b.vectors, as32([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]))


def test_seed_contents_bytes_and_text() -> None:
    b = upsert([{"id": "item_1", "vector": [0.1] * 4, "contents": b"item_contents_here..."},
                {"id": "item_2", "vector": [0.2] * 4, "contents": "item_contents_here..."},
                {"id": "item_3", "vector": [0.3] * 4, "contents": "héllo 🙂"},
                {"id": "item_4", "vector": [0.4] * 4, "contents": bytearray(b"\x00\xff")},
                {"id": "item_5", "vector": [0.5] * 4, "contents": memoryview(b"mv")}])
    check_batch_shape(b)
    assert b.contents == [b"item_contents_here...", b"item_contents_here...",
                          "héllo 🙂".encode(), b"\x00\xff", b"mv"]


def test_seed_tuple_forms_mixed_with_dicts() -> None:
    b = upsert([("item_1", [0.1, 0.2, 0.3]),
                ("item_2", [0.4, 0.5, 0.6], "text"),
                ("item_3", [0.7, 0.8, 0.9], b"raw", {"k": "v"}),
                {"id": "item_4", "vector": (1.0, 2.0, 3.0)},
                ["item_5", np.array([1, 2, 3])]])
    check_batch_shape(b)
    assert b.ids == ["item_1", "item_2", "item_3", "item_4", "item_5"]
    assert b.contents == [None, b"text", b"raw", None, None]
    assert b.metadata == [None, None, {"k": "v"}, None, None]
    np.testing.assert_array_equal(b.vectors[4], as32([1, 2, 3]))


def test_tuple_form_with_none_vector_is_embedded() -> None:
    b = upsert([("a", None, "some text"), ("b", [1.0, 2.0])], dimension=2, embeds=True)
    check_batch_shape(b)
    assert b.embed_rows.tolist() == [0] and b.texts == ["some text"]
    np.testing.assert_array_equal(b.vectors, as32([[0, 0], [1, 2]]))


@pytest.mark.parametrize("call", ["keyword", "positional", "engine_style"])
def test_seed_numpy_overload_call_shapes(call: str) -> None:
    vectors = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=float)
    ids = np.array([101, 102], dtype=int)
    kw = dict(dimension=None, metric="euclidean", embeds=False)
    if call == "keyword":
        b = normalize_upsert(vectors=vectors, ids=ids, **kw)
    elif call == "positional":
        b = normalize_upsert(ids, vectors, **kw)
    else:   # Index.upsert(self, items=None, vectors=None, *, ids=None) called as upsert(ids, vecs)
        b = normalize_upsert(ids, vectors=vectors, **kw)
    check_batch_shape(b)
    assert b.ids == ["101", "102"] and b.dimension == 3
    np.testing.assert_array_equal(b.vectors, vectors.astype(np.float32))
    assert b.contents == [None, None] and b.metadata == [None, None]


@pytest.mark.parametrize("ids, want", [
    (np.array([0, -5, 7], dtype=np.int32), ["0", "-5", "7"]),
    (np.array([2**64 - 1, 1, 2], dtype=np.uint64), [str(2**64 - 1), "1", "2"]),
    (np.array([1, 2, 3], dtype=np.uint8), ["1", "2", "3"]),
    (np.array(["a", "b", "ç"]), ["a", "b", "ç"]),
    (np.array(["a", "b", "c"], dtype=object), ["a", "b", "c"]),
    (["x", 2, np.int64(3)], ["x", "2", "3"]),
    (("p", "q", "r"), ["p", "q", "r"]),
])
def test_numpy_overload_id_kinds(ids: Any, want: list[str]) -> None:
    b = upsert(ids=ids, vectors=np.ones((3, 2)))
    assert b.ids == want and all(type(i) is str for i in b.ids)


def test_numpy_overload_vectors_as_list_of_lists() -> None:
    b = upsert(ids=["a", "b"], vectors=[[1, 2], [3.5, 4]])
    np.testing.assert_array_equal(b.vectors, as32([[1, 2], [3.5, 4]]))


def test_numpy_overload_copies_caller_array() -> None:
    vectors = np.ones((2, 3), dtype=np.float32)
    b = upsert(ids=np.array([1, 2]), vectors=vectors)
    vectors[:] = 7
    np.testing.assert_array_equal(b.vectors, np.ones((2, 3), dtype=np.float32))
    assert not np.shares_memory(b.vectors, vectors)


def test_embed_rows_for_text_items() -> None:
    b = upsert([{"id": "n1", "contents": "a text"},
                {"id": "n2", "vector": [1, 0, 0], "contents": "kept"},
                {"id": "n3", "contents": "another"}], dimension=3, embeds=True, metric="cosine")
    check_batch_shape(b)
    assert b.embed_rows.tolist() == [0, 2] and b.texts == ["a text", "another"]
    assert b.contents == [b"a text", b"kept", b"another"]
    np.testing.assert_array_equal(b.vectors, as32([[0, 0, 0], [1, 0, 0], [0, 0, 0]]))


def test_all_rows_embedded_without_dimension_leaves_it_open() -> None:
    b = upsert([{"id": "n1", "contents": "x"}, {"id": "n2", "contents": "y"}], embeds=True)
    check_batch_shape(b)
    assert b.dimension is None and b.vectors.shape == (2, 0)
    assert b.embed_rows.tolist() == [0, 1]


# ----------------------------------------------------------------------------- ids

def test_int_ids_in_items_become_decimal_strings() -> None:
    b = upsert([{"id": 7, "vector": [1.0]}, (np.int64(-3), [2.0]), (np.uint64(2**64 - 1), [3.0])])
    assert b.ids == ["7", "-3", str(2**64 - 1)]


def test_nfc_and_nfd_are_different_ids_and_kept_as_given() -> None:
    nfc = unicodedata.normalize("NFC", "café")
    nfd = unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    b = upsert([(nfc, [1.0]), (nfd, [2.0])])
    assert b.ids == [nfc, nfd]
    assert b.vectors[:, 0].tolist() == [1.0, 2.0]


@pytest.mark.parametrize("good_id", [
    "a" * MAX_ID_BYTES, "é" * (MAX_ID_BYTES // 2), "🙂" * (MAX_ID_BYTES // 4),
    "x", " ", "a/b", "..", "\x00", "🙂", "id with spaces", "名字",
])
def test_valid_ids_round_trip(good_id: str) -> None:
    assert upsert([(good_id, [1.0])]).ids == [good_id]
    assert normalize_ids(good_id) == [good_id]


@pytest.mark.parametrize("bad_id, exc, needle", [
    ("", InvalidIdError, "empty"),
    ("a" * (MAX_ID_BYTES + 1), InvalidIdError, "1025"),
    ("é" * (MAX_ID_BYTES // 2) + "a", InvalidIdError, "1025"),
    ("🙂" * (MAX_ID_BYTES // 4) + "é", InvalidIdError, "1026"),
    ("bad\ud800", InvalidIdError, "surrogate"),
    (True, InvalidIdError, "bool"),
    (np.bool_(False), InvalidIdError, "bool"),
    (1.5, InvalidIdError, "float"),
    (None, InvalidIdError, "NoneType"),
    (b"bytes", InvalidIdError, "bytes"),
    (["a"], InvalidIdError, "list"),
])
def test_bad_ids_refused_naming_the_item(bad_id: Any, exc: type, needle: str) -> None:
    with raises(exc, "item 1", "id", needle):
        upsert([("ok", [1.0]), (bad_id, [1.0])])
    with raises(exc, "item 1", "id"):
        upsert([{"id": "ok", "vector": [1.0]}, {"id": bad_id, "vector": [1.0]}])


def test_missing_id_refused() -> None:
    with raises(InvalidIdError, "item 0", "id", "missing"):
        upsert([{"vector": [1.0]}])


@pytest.mark.parametrize("ids, exc, needle", [
    (np.array([1.0, 2.0]), InvalidIdError, "float64"),
    (np.array([True, False]), InvalidIdError, "bool"),
    (np.array([b"a", b"b"]), InvalidIdError, "S1"),
    (np.array([["a"], ["b"]]), InvalidArgumentError, "1-D"),
    (np.array(["a", ""]), InvalidIdError, "ids[1]"),
    (["a", True], InvalidIdError, "ids[1]"),
    ("ab", InvalidTypeError, "ids"),
    (5, InvalidTypeError, "ids"),
])
def test_numpy_overload_bad_ids(ids: Any, exc: type, needle: str) -> None:
    with raises(exc, needle):
        upsert(ids=ids, vectors=np.ones((2, 2)))


def test_normalize_ids_forms() -> None:
    assert normalize_ids("a") == ["a"]
    assert normalize_ids(5) == ["5"]
    assert normalize_ids(np.int32(5)) == ["5"]
    assert normalize_ids(np.array(9)) == ["9"]
    assert normalize_ids(np.str_("s")) == ["s"] and type(normalize_ids(np.str_("s"))[0]) is str
    assert normalize_ids(["a", 2, "a"]) == ["a", "2", "a"]          # order and repeats kept
    assert normalize_ids(("x", "y")) == ["x", "y"]
    assert normalize_ids(np.array([3, 1], dtype=np.uint64)) == ["3", "1"]
    assert normalize_ids(np.array(["u", "v"])) == ["u", "v"]
    assert normalize_ids([]) == [] and normalize_ids(np.array([])) == []


@pytest.mark.parametrize("ids, exc, needle", [
    (True, InvalidIdError, "bool"), ("", InvalidIdError, "empty"),
    (["a", ""], InvalidIdError, "ids[1]"), (["a", None], InvalidIdError, "ids[1]"),
    (None, InvalidTypeError, "NoneType"), ({"a": 1}, InvalidTypeError, "dict"),
    ({"a", "b"}, InvalidTypeError, "set"), (b"a", InvalidTypeError, "bytes"),
    (np.array([1.5]), InvalidIdError, "float64"),
])
def test_normalize_ids_refusals(ids: Any, exc: type, needle: str) -> None:
    with raises(exc, needle):
        normalize_ids(ids)


# ----------------------------------------------------------------------------- items container

@pytest.mark.parametrize("items, needle", [
    ({"id": "a", "vector": [1.0]}, "dict"),
    ("item_1", "str"),
    (b"item", "bytes"),
    (42, "int"),
    ((x for x in [("a", [1.0])]), "generator"),
    (np.array([[1.0, 2.0]]), "NumPy"),
])
def test_items_must_be_a_sequence(items: Any, needle: str) -> None:
    with raises(InvalidTypeError, "items", needle):
        upsert(items)


@pytest.mark.parametrize("item, exc, needle", [
    (42, InvalidTypeError, "int"),
    ("a", InvalidTypeError, "str"),
    (("only_id",), InvalidArgumentError, "1 fields"),
    (("a", [1.0], None, None, "extra"), InvalidArgumentError, "5 fields"),
])
def test_bad_item_shapes(item: Any, exc: type, needle: str) -> None:
    with raises(exc, "item 1", needle):
        upsert([("ok", [1.0]), item])


def test_unknown_key_named_with_item_and_id() -> None:
    with raises(InvalidArgumentError, "item 1", "'b'", "'vectors'"):
        upsert([{"id": "a", "vector": [1.0]}, {"id": "b", "vectors": [1.0]}])


def test_empty_list_is_a_noop_batch() -> None:
    for empty in ([], ()):
        b = upsert(empty, dimension=4)
        check_batch_shape(b)
        assert len(b) == 0 and b.vectors.shape == (0, 4) and b.dimension == 4
    b = upsert(ids=np.array([]), vectors=np.empty((0, 3)))
    assert len(b) == 0 and b.dimension is None


@pytest.mark.parametrize("kw, needle", [
    (dict(ids=np.array([1, 2]), vectors=np.ones((3, 2))), "3 rows"),
    (dict(ids=["a"], vectors=[[1.0], [2.0]]), "2 rows"),
    (dict(ids=np.array([1, 2])), "together"),
    (dict(vectors=np.ones((2, 2))), "together"),
    (dict(), "nothing"),
])
def test_malformed_calls(kw: dict, needle: str) -> None:
    with raises(InvalidArgumentError, needle):
        normalize_upsert(dimension=None, metric="euclidean", embeds=False, **kw)


def test_items_and_ids_together_refused() -> None:
    with raises(InvalidArgumentError, "not both"):
        upsert([("a", [1.0])], ids=["a"], vectors=[[1.0]])
    with raises(InvalidArgumentError, "NumPy overload"):
        upsert([{"id": "a", "vector": [1.0]}], vectors=np.ones((1, 1)))


def test_bad_metric_and_dimension_arguments() -> None:
    with raises(InvalidArgumentError, "metric"):
        normalize_upsert([], dimension=None, metric="dot", embeds=False)
    for dim in (0, -1, True, 2.0):
        with raises(InvalidArgumentError, "dimension"):
            normalize_upsert([], dimension=dim, metric="cosine", embeds=False)


# ----------------------------------------------------------------------------- vectors

@pytest.mark.parametrize("vector", [
    [0.1, 0.2, 0.3],
    (0.1, 0.2, 0.3),
    np.array([0.1, 0.2, 0.3], dtype=np.float64),
    np.array([0.1, 0.2, 0.3], dtype=np.float16),
    np.array([0.1, 0.2, 0.3], dtype=np.float32),
    np.array([1, 2, 3], dtype=np.int64),
    np.array([1, 2, 3], dtype=np.uint8),
    [1, 2, 3],
    [1, 2.5, np.float32(3)],
    memoryview(array.array("f", [0.1, 0.2, 0.3])),
    memoryview(array.array("d", [0.1, 0.2, 0.3])),
    np.array([[9.0, 0.1, 0.2, 0.3]])[0, 1:],          # a non-contiguous-origin view
])
def test_vector_dtypes_become_float32(vector: Any) -> None:
    want = as32(np.asarray(vector))
    for items in ([("a", vector), ("b", [0.0, 0.0, 0.0])], [{"id": "a", "vector": vector}]):
        b = upsert(items, dimension=3)
        check_batch_shape(b)
        np.testing.assert_array_equal(b.vectors[0], want)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32, np.int64,
                                   np.uint16])
def test_numpy_overload_dtypes(dtype: type) -> None:
    rng = np.random.default_rng(1)
    raw = (rng.standard_normal((5, 4)) * 10).astype(dtype)
    b = upsert(ids=np.arange(5), vectors=raw)
    np.testing.assert_array_equal(b.vectors, raw.astype(np.float32))
    assert b.vectors.dtype == np.float32 and b.vectors.flags.c_contiguous
    f_order = np.asfortranarray(raw)
    np.testing.assert_array_equal(upsert(ids=np.arange(5), vectors=f_order).vectors,
                                  raw.astype(np.float32))


def test_mixed_vector_sources_in_one_batch() -> None:
    b = upsert([("a", [1, 2]), ("b", np.array([3.0, 4.0], np.float16)), ("c", (5.5, 6)),
                ("d", memoryview(array.array("f", [7.0, 8.0])))])
    np.testing.assert_array_equal(b.vectors, as32([[1, 2], [3, 4], [5.5, 6], [7, 8]]))


def test_first_vector_fixes_dimension() -> None:
    b = upsert([("a", [1.0, 2.0, 3.0, 4.0]), ("b", np.ones(4))])
    assert b.dimension == 4 and b.vectors.shape == (2, 4)
    with raises(DimensionMismatchError, "item 1", "'b'", "expected 4", "got 3", "item 0"):
        upsert([("a", [1.0, 2.0, 3.0, 4.0]), ("b", [1.0, 2.0, 3.0])])


def test_index_dimension_enforced() -> None:
    with raises(DimensionMismatchError, "item 2", "'c'", "vector", "expected 3", "got 2"):
        upsert([("a", [1, 2, 3]), ("b", [1, 2, 3]), ("c", [1, 2])], dimension=3)
    with raises(DimensionMismatchError, "item 0", "expected 3", "got 4"):
        upsert([("a", [1, 2, 3, 4]), ("b", [1, 2, 3, 4])], dimension=3)
    with raises(DimensionMismatchError, "row 0", "'7'", "expected 3", "got 2"):
        upsert(ids=np.array([7, 8]), vectors=np.ones((2, 2)), dimension=3)


@pytest.mark.parametrize("metric", ["euclidean", "squared_euclidean", "cosine"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e39])
def test_non_finite_vectors_refused(metric: str, bad: float) -> None:
    with raises(InvalidVectorError, "item 2", "'c'", "vector", "NaN or infinity"):
        upsert([("a", [1.0, 2.0]), ("b", [3.0, 4.0]), ("c", [1.0, bad])], metric=metric)
    vectors = np.ones((3, 2))
    vectors[1, 1] = bad
    with raises(InvalidVectorError, "row 1", "'102'", "NaN or infinity"):
        upsert(ids=np.array([101, 102, 103]), vectors=vectors, metric=metric)


def test_large_finite_values_are_not_mistaken_for_overflow() -> None:
    big = np.full((3, 8), 3e38, dtype=np.float32)       # the float32 sum overflows; values don't
    b = upsert(ids=np.arange(3), vectors=big, metric="euclidean")
    np.testing.assert_array_equal(b.vectors, big)


@pytest.mark.parametrize("vector, exc, needle", [
    (["a", "b"], InvalidTypeError, "dtype"),
    ("abc", InvalidTypeError, "str"),
    (b"\x00\x01", InvalidTypeError, "bytes"),
    ({"x": 1.0}, InvalidTypeError, "dict"),
    ({1.0, 2.0}, InvalidTypeError, "set"),
    ([1.0, None], InvalidTypeError, "NoneType"),
    ([1.0, "2"], InvalidTypeError, "dtype"),
    ([1 + 2j, 0], InvalidTypeError, "complex"),
    ([[1.0, 2.0]], InvalidVectorError, "1-D"),
    ([1.0, [2.0, 3.0]], InvalidVectorError, "flat"),
    ([], InvalidVectorError, "empty"),
    (3.0, InvalidVectorError, "1-D"),
    ([10**400, 1], InvalidVectorError, "too large"),
])
def test_bad_vectors_name_item_and_id(vector: Any, exc: type, needle: str) -> None:
    with raises(exc, "item 1", "'b'", "vector", needle):
        upsert([("a", [1.0, 2.0]), ("b", vector)])


def test_all_bool_vectors_refused() -> None:
    with raises(InvalidTypeError, "item 0", "'b'", "vector", "bool"):
        upsert([("b", [True, False])])
    with raises(InvalidTypeError, "item 0", "'b'", "vector", "bool"):
        upsert([("b", np.array([True, False]))])


@pytest.mark.parametrize("vectors, exc, needle", [
    (np.ones(2), InvalidVectorError, "2-D"),
    (np.ones((2, 2, 2)), InvalidVectorError, "2-D"),
    (np.ones((2, 2), dtype=bool), InvalidTypeError, "bool"),
    (np.array([["a", "b"], ["c", "d"]]), InvalidTypeError, "dtype"),
    (np.ones((2, 2), dtype=complex), InvalidTypeError, "complex"),
    (np.ones((2, 0)), InvalidVectorError, "empty"),
    ([[1.0, 2.0], [1.0]], DimensionMismatchError, "row 1"),
    ("vectors", InvalidTypeError, "str"),
    (7, InvalidTypeError, "int"),
])
def test_numpy_overload_bad_vectors(vectors: Any, exc: type, needle: str) -> None:
    with raises(exc, needle):
        upsert(ids=np.array([1, 2]), vectors=vectors)


# ----------------------------------------------------------------------------- cosine

def test_cosine_normalises_rows_and_preserves_direction() -> None:
    rng = np.random.default_rng(7)
    raw = rng.standard_normal((50, 16)) * rng.uniform(0.01, 100, size=(50, 1))
    b = upsert(ids=np.arange(50), vectors=raw, metric="cosine")
    np.testing.assert_allclose(b.vectors, unit(raw), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(b.vectors, axis=1), 1.0, rtol=1e-6)
    items = upsert([(str(i), row.tolist()) for i, row in enumerate(raw)], metric="cosine")
    np.testing.assert_allclose(items.vectors, b.vectors, rtol=1e-6, atol=1e-7)


def test_cosine_handles_tiny_and_huge_norms() -> None:
    raw = np.array([[1e-30, 2e-30, 0.0], [3e30, 4e30, 0.0], [1e-45, 0.0, 0.0],
                    [3e38, 3e38, 3e38], [1.0, 1.0, 0.0]], dtype=np.float32)
    b = upsert(ids=np.arange(5), vectors=raw, metric="cosine")
    want = np.array([[1, 2, 0], [3, 4, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]], dtype=np.float64)
    np.testing.assert_allclose(b.vectors, unit(want), rtol=1e-6, atol=1e-7)


def test_euclidean_does_not_normalise_and_allows_zero() -> None:
    for metric in ("euclidean", "squared_euclidean"):
        b = upsert([("a", [3.0, 4.0]), ("z", [0.0, 0.0])], metric=metric)
        np.testing.assert_array_equal(b.vectors, as32([[3, 4], [0, 0]]))


def test_cosine_zero_vector_refused() -> None:
    with raises(InvalidVectorError, "item 1", "'z'", "zero vector"):
        upsert([("a", [3.0, 4.0]), ("z", [0.0, -0.0])], metric="cosine")
    with raises(InvalidVectorError, "row 0", "'5'", "zero"):
        upsert(ids=np.array([5]), vectors=np.zeros((1, 3)), metric="cosine")


def test_first_bad_row_is_named_when_several_are_bad() -> None:
    raw = np.ones((4, 2))
    raw[1] = 0
    raw[3, 0] = np.nan
    with raises(InvalidVectorError, "row 1", "zero"):
        upsert(ids=np.arange(4), vectors=raw, metric="cosine")
    raw[1] = 1
    with raises(InvalidVectorError, "row 3", "NaN"):
        upsert(ids=np.arange(4), vectors=raw, metric="cosine")


# ----------------------------------------------------------------------------- contents

@pytest.mark.parametrize("contents, needle", [
    (123, "int"), (["a"], "list"), ({"a": 1}, "dict"), ("bad\udc80", "surrogate"),
])
def test_bad_contents(contents: Any, needle: str) -> None:
    with raises(InvalidContentsError, "item 1", "'b'", "contents", needle):
        upsert([("a", [1.0]), ("b", [1.0], contents)])


def test_embedding_needs_str_contents() -> None:
    with raises(InvalidContentsError, "item 1", "'b'", "contents", "bytes"):
        upsert([{"id": "a", "contents": "ok"}, {"id": "b", "contents": b"valid utf-8"}],
               embeds=True)
    with raises(MissingVectorError, "item 1", "'b'", "vector", "contents"):
        upsert([{"id": "a", "contents": "ok"}, {"id": "b", "metadata": {"x": 1}}], embeds=True)
    with raises(MissingVectorError, "item 0", "'a'", "vector", "embedding_model"):
        upsert([{"id": "a", "contents": "text"}], embeds=False)
    with raises(MissingVectorError, "item 0", "'a'"):
        upsert([("a", None)], embeds=False)


# ----------------------------------------------------------------------------- metadata

def nested(depth: int) -> dict:
    """A metadata dict whose containers nest exactly `depth` levels (the top dict is level 1)."""
    node: dict = {"leaf": 1}
    for _ in range(depth - 1):
        node = {"k": node}
    return node


def test_metadata_values_and_conversions() -> None:
    meta = {"s": "x", "i": -(2**63), "u": 2**64 - 1, "f": 1.5, "b": True, "n": None,
            "l": [1, "two", None, [3.0], {"deep": False}], "t": (1, 2),
            "np": [np.int64(4), np.float32(0.5), np.bool_(True), np.str_("s")], "": None}
    meta.pop("")
    b = upsert([("a", [1.0], None, meta)])
    got = b.metadata[0]
    assert got["t"] == [1, 2] and type(got["t"]) is list
    assert got["np"] == [4, 0.5, True, "s"]
    assert [type(x) for x in got["np"]] == [int, float, bool, str]
    assert got["l"] == [1, "two", None, [3.0], {"deep": False}]
    assert got["u"] == 2**64 - 1 and got["i"] == -(2**63)
    assert upsert([("a", [1.0], None, {})]).metadata == [{}]


def test_metadata_depth_limit() -> None:
    assert upsert([("a", [1.0], None, nested(MAX_METADATA_DEPTH))]).metadata[0] == \
        nested(MAX_METADATA_DEPTH)
    with raises(InvalidMetadataError, "item 0", "'a'", "metadata.k.k", "deeper"):
        upsert([("a", [1.0], None, nested(MAX_METADATA_DEPTH + 1))])
    loop: dict = {}
    loop["self"] = loop
    with raises(InvalidMetadataError, "deeper"):
        upsert([("a", [1.0], None, loop)])


def test_metadata_size_limit() -> None:
    fits = {"s": "x" * (MAX_METADATA_BYTES - 64)}
    assert upsert([("a", [1.0], None, fits)]).metadata[0] == fits
    with raises(InvalidMetadataError, "item 0", "'a'", "metadata", str(MAX_METADATA_BYTES)):
        upsert([("a", [1.0], None, {"s": "x" * MAX_METADATA_BYTES})])
    with raises(InvalidMetadataError, "metadata.l[", "over the", str(MAX_METADATA_BYTES)):
        upsert([("a", [1.0], None, {"l": [0] * (MAX_METADATA_BYTES + 1)})])   # stops walking
    many_small = {"l": ["abcdefgh"] * (MAX_METADATA_BYTES // 9)}   # under the walk's bound,
    with raises(InvalidMetadataError, "encodes to"):                 # over once encoded
        upsert([("a", [1.0], None, many_small)])


@pytest.mark.parametrize("meta, path, needle", [
    (["not", "a", "dict"], "metadata", "list"),
    ("str", "metadata", "str"),
    ({1: "x"}, "metadata", "1"),
    ({"a.b": 1}, "metadata", "'a.b'"),
    ({"$gt": 1}, "metadata", "'$gt'"),
    ({"": 1}, "metadata", "''"),
    ({"owner": {"na.me": 1}}, "metadata.owner", "'na.me'"),
    ({"n": math.nan}, "metadata.n", "nan"),
    ({"n": math.inf}, "metadata.n", "inf"),
    ({"n": np.float64(-math.inf)}, "metadata.n", "inf"),
    ({"n": 2**64}, "metadata.n", "64-bit"),
    ({"n": -(2**63) - 1}, "metadata.n", "64-bit"),
    ({"b": b"bytes"}, "metadata.b", "bytes"),
    ({"s": {1, 2}}, "metadata.s", "set"),
    ({"o": object()}, "metadata.o", "object"),
    ({"s": "bad\ud800"}, "metadata.s", "surrogate"),
    ({"owner": {"tags": ["a", "b", math.nan]}}, "metadata.owner.tags[2]", "nan"),
    ({"l": [{"k": 1}, {"$x": 2}]}, "metadata.l[1]", "'$x'"),
])
def test_bad_metadata_names_item_id_and_path(meta: Any, path: str, needle: str) -> None:
    with raises(InvalidMetadataError, "item 1", "'b'", path, needle):
        upsert([("a", [1.0]), ("b", [1.0], None, meta)])


# ----------------------------------------------------------------------------- duplicates

def test_last_occurrence_wins_in_order_of_last_occurrence() -> None:
    b = upsert([("a", [1.0], "a1", {"v": 1}), ("b", [2.0], "b1"), ("a", [3.0], "a2", {"v": 2}),
                ("c", [4.0]), ("b", [5.0], None, {"v": 3})])
    check_batch_shape(b)
    assert b.ids == ["a", "c", "b"]
    assert b.vectors[:, 0].tolist() == [3.0, 4.0, 5.0]
    assert b.contents == [b"a2", None, None]
    assert b.metadata == [{"v": 2}, None, {"v": 3}]


def test_duplicates_in_numpy_overload() -> None:
    ids = np.array([1, 2, 1, 3, 2])
    vectors = np.arange(10, dtype=np.float64).reshape(5, 2)
    b = upsert(ids=ids, vectors=vectors)
    assert b.ids == ["1", "3", "2"]
    np.testing.assert_array_equal(b.vectors, vectors[[2, 3, 4]].astype(np.float32))
    assert upsert(ids=np.array([7, 7]), vectors=np.ones((2, 2))).ids == ["7"]
    assert upsert([(5, [1.0]), ("5", [2.0])]).vectors.tolist() == [[2.0]]   # int 5 is "5"


def test_duplicates_keep_embed_rows_aligned() -> None:
    b = upsert([{"id": "a", "contents": "first a"}, {"id": "b", "vector": [1.0, 0.0]},
                {"id": "c", "contents": "c text"}, {"id": "a", "contents": "second a"},
                {"id": "b", "contents": "b text"}], dimension=2, embeds=True)
    check_batch_shape(b)
    assert b.ids == ["c", "a", "b"]
    assert b.embed_rows.tolist() == [0, 1, 2] and b.texts == ["c text", "second a", "b text"]
    b = upsert([{"id": "a", "contents": "text"}, {"id": "a", "vector": [1.0, 2.0]}],
               dimension=2, embeds=True)
    assert b.embed_rows.size == 0 and b.texts == [] and b.vectors.tolist() == [[1.0, 2.0]]


def test_superseded_duplicate_is_still_validated() -> None:
    with raises(InvalidVectorError, "item 0", "'a'"):
        upsert([("a", [math.nan]), ("a", [1.0])])
    with raises(InvalidMetadataError, "item 0", "'a'"):
        upsert([("a", [1.0], None, {"x": math.inf}), ("a", [1.0])])


# ----------------------------------------------------------------------------- query

def test_query_single_and_batch() -> None:
    q, single = normalize_query([3.0, 4.0], dimension=2, metric="euclidean")
    assert single and q.shape == (1, 2) and q.dtype == np.float32
    np.testing.assert_array_equal(q, [[3, 4]])
    q, single = normalize_query([[3.0, 4.0]], dimension=2, metric="cosine")
    assert not single
    np.testing.assert_allclose(q, [[0.6, 0.8]], rtol=1e-6)
    q, single = normalize_query(np.ones((3, 2), np.float16), dimension=None, metric="cosine")
    assert not single and q.shape == (3, 2) and q.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-6)
    q, single = normalize_query(np.array([1, 2], np.int8), dimension=2, metric="euclidean")
    assert single and q.tolist() == [[1.0, 2.0]]
    q, single = normalize_query(np.empty((0, 5)), dimension=5, metric="cosine")
    assert not single and q.shape == (0, 5)


def test_query_does_not_modify_caller_array() -> None:
    raw = np.array([[3.0, 4.0]], dtype=np.float32)
    normalize_query(raw, dimension=2, metric="cosine")
    assert raw.tolist() == [[3.0, 4.0]]


@pytest.mark.parametrize("query, exc, needle", [
    ([1.0, 2.0, 3.0], DimensionMismatchError, "expected 2"),
    ([[1.0, 2.0], [1.0, 2.0, 3.0]], DimensionMismatchError, "query 1"),
    ([[1.0, 2.0], [1.0, math.nan]], InvalidVectorError, "query 1"),
    ([math.inf, 1.0], InvalidVectorError, "query vector"),
    ([0.0, 0.0], InvalidVectorError, "zero"),
    ("text", InvalidTypeError, "str"),
    (None, InvalidTypeError, "NoneType"),
    ([1.0, "a"], InvalidTypeError, "query vector"),
    ([[1.0, 2.0], ["a", "b"]], InvalidTypeError, "query 1"),
    (np.ones((1, 1, 2)), InvalidVectorError, "1-D"),
    ([], InvalidVectorError, "empty"),
])
def test_query_refusals(query: Any, exc: type, needle: str) -> None:
    with raises(exc, needle):
        normalize_query(query, dimension=2, metric="cosine")


# ----------------------------------------------------------------------------- finish / embed

def test_finish_vectors_on_array_returns_validated_copy() -> None:
    raw = np.array([[3.0, 4.0], [0.0, 2.0]])
    out = finish_vectors(raw, "cosine")
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 1.0]], rtol=1e-6)
    assert out.dtype == np.float32 and raw.tolist() == [[3.0, 4.0], [0.0, 2.0]]
    np.testing.assert_array_equal(finish_vectors(raw, "euclidean"), raw.astype(np.float32))
    with raises(InvalidVectorError, "row 1"):
        finish_vectors(np.array([[1.0, 1.0], [np.nan, 1.0]]), "euclidean")
    with raises(InvalidVectorError, "row 0", "zero"):
        finish_vectors(np.zeros((1, 3)), "cosine")


def test_finish_vectors_on_batch_skips_pending_rows() -> None:
    b = upsert([{"id": "t", "contents": "text"}, ("v", [3.0, 4.0])], dimension=2, embeds=True)
    finished = finish_vectors(b, "cosine")
    assert isinstance(finished, Batch) and finished.ids == b.ids
    np.testing.assert_allclose(finished.vectors, [[0, 0], [0.6, 0.8]], rtol=1e-6)
    assert finished.embed_rows.tolist() == [0]


def test_attach_embeddings_fills_and_validates() -> None:
    b = upsert([{"id": "t1", "contents": "x"}, ("v", [3.0, 4.0]), {"id": "t2", "contents": "y"}],
               dimension=2, embeds=True, metric="cosine")
    full = attach_embeddings(b, np.array([[0.0, 5.0], [2.0, 0.0]]), metric="cosine")
    check_batch_shape(full)
    np.testing.assert_allclose(full.vectors, [[0, 1], [0.6, 0.8], [1, 0]], rtol=1e-6)
    assert full.embed_rows.size == 0 and full.texts == [] and full.dimension == 2
    assert b.vectors[0].tolist() == [0.0, 0.0]                     # the input batch is unchanged
    with raises(DimensionMismatchError, "'t1'", "expected 2", "got 3"):
        attach_embeddings(b, np.ones((2, 3)), metric="cosine")
    with raises(InvalidVectorError, "item 2", "'t2'", "zero"):
        attach_embeddings(b, np.array([[1.0, 0.0], [0.0, 0.0]]), metric="cosine")
    with raises(InvalidArgumentError, "1 embeddings for 2 texts"):
        attach_embeddings(b, np.ones((1, 2)), metric="cosine")


def test_attach_embeddings_fixes_open_dimension() -> None:
    b = upsert([{"id": "a", "contents": "x"}, {"id": "b", "contents": "y"}], embeds=True)
    full = attach_embeddings(b, [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], metric="euclidean")
    check_batch_shape(full)
    assert full.dimension == 3 and full.vectors.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_every_error_is_an_lsmvec_error_and_value_or_type_error() -> None:
    for call in (lambda: upsert([("", [1.0])]), lambda: upsert({"id": "a"}),
                 lambda: upsert([("a", [math.nan])])):
        with pytest.raises(LsmvecError) as info:
            call()
        assert isinstance(info.value, (ValueError, TypeError))


# ----------------------------------------------------------------------------- properties

_KEY = st.text(min_size=1, max_size=8).filter(lambda k: "." not in k and not k.startswith("$"))
_SCALAR = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
_JSON = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(_KEY, inner, max_size=4), max_leaves=12)
_ID = st.one_of(st.text(min_size=1, max_size=20), st.integers(-(2**63), 2**63 - 1))
_FLOAT32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@st.composite
def items_batch(draw: Any) -> tuple[list, int]:
    dim = draw(st.integers(1, 6))
    vector = st.lists(_FLOAT32, min_size=dim, max_size=dim)
    ids = draw(st.lists(_ID, min_size=0, max_size=12))
    if ids and draw(st.booleans()):                       # force some duplicates
        ids += draw(st.lists(st.sampled_from(ids), max_size=4))
    items = []
    for item_id in ids:
        item: dict = {"id": item_id, "vector": draw(vector)}
        contents = draw(st.none() | st.text(max_size=10) | st.binary(max_size=10))
        if contents is not None:
            item["contents"] = contents
        meta = draw(st.none() | st.dictionaries(_KEY, _JSON, max_size=4))
        if meta is not None:
            item["metadata"] = meta
        items.append(item if draw(st.booleans()) else
                     (item_id, item["vector"], item.get("contents"), item.get("metadata")))
    return items, dim


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items_batch())
def test_round_trip_against_dict_oracle(case: tuple[list, int]) -> None:
    items, dim = case
    model: dict[str, tuple] = {}
    for item in items:
        item_id, vector, contents, meta = (
            (item["id"], item["vector"], item.get("contents"), item.get("metadata"))
            if isinstance(item, dict) else item)
        key = str(item_id)
        model.pop(key, None)                                 # re-insert: order of last occurrence
        model[key] = (vector, contents, meta)
    b = upsert(items, dimension=dim if items else None)
    check_batch_shape(b)
    assert b.ids == list(model)
    want_contents = [c.encode() if isinstance(c, str) else c for _, c, _ in model.values()]
    assert b.contents == want_contents
    assert b.metadata == [m for _, _, m in model.values()]
    if model:
        np.testing.assert_array_equal(b.vectors, as32([v for v, _, _ in model.values()]))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 8).flatmap(
    lambda d: st.lists(st.lists(_FLOAT32, min_size=d, max_size=d), min_size=1, max_size=8)))
def test_cosine_property_unit_rows_parallel_to_input(rows: list[list[float]]) -> None:
    cast = as32(rows).astype(np.float64)
    if (np.abs(cast).max(axis=1) == 0).any():
        with pytest.raises(InvalidVectorError):
            upsert(ids=np.arange(len(rows)), vectors=rows, metric="cosine")
        return
    b = upsert(ids=np.arange(len(rows)), vectors=rows, metric="cosine")
    scaled = cast / np.abs(cast).max(axis=1, keepdims=True)   # avoid overflow in the oracle
    want = scaled / np.linalg.norm(scaled, axis=1, keepdims=True)
    np.testing.assert_allclose(b.vectors, want, rtol=1e-5, atol=1e-6)
