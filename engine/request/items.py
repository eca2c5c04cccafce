"""Turn every upsert form into one validated, columnar ``Batch`` before anything is written.

A batch is atomic, so every check happens here, up front; each error names the item index, its
id (once known) and the field. ``normalize_upsert`` accepts ``items``, a sequence of dicts
``{"id", "vector", "contents", "metadata"}`` (only "id" required; unknown keys are refused)
and/or tuples ``(id, vector[, contents[, metadata]])``, mixed freely; or the NumPy overload:
``ids`` (1-D int array, or array/list of str) with ``vectors`` (2-D, any int or float dtype).

Decisions (strict where the reference product is loose):
- ids are non-empty str of at most 1024 UTF-8 bytes, kept as given (no Unicode normalisation:
  NFC and NFD spellings are different ids); lone surrogates are refused. An int (never a bool)
  is accepted anywhere and stored as its decimal string, as the reference's NumPy overload does.
- Vectors become float32, C-contiguous, owned by the batch (a copy: the caller may reuse its
  array); NaN/inf, also after the cast, is refused; under cosine rows are scaled to unit length
  and a zero row is refused.
- Duplicate ids in one batch: the last occurrence wins; every occurrence is still validated.
  An empty batch is a no-op batch (n = 0), not an error.
- Metadata keys must be non-empty, without ``.`` and not starting with ``$``: filters address
  nested fields by dotted paths and operators start with ``$``, so such a key could never be
  filtered on. Tuples become lists, NumPy scalars Python scalars (what msgpack stores anyway).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lsmvec.wal.errors import (DimensionMismatchError, InvalidArgumentError, InvalidContentsError,
                        InvalidIdError, InvalidTypeError, InvalidVectorError, MissingVectorError)

from lsmvec.request.fields import MAX_METADATA_BYTES, MAX_METADATA_DEPTH, _contents, _metadata

__all__ = ["Batch", "normalize_upsert", "normalize_ids", "normalize_query", "finish_vectors",
           "attach_embeddings", "MAX_ID_BYTES", "MAX_METADATA_DEPTH", "MAX_METADATA_BYTES"]

MAX_ID_BYTES = 1024
METRICS = frozenset({"euclidean", "squared_euclidean", "cosine"})
ITEM_FIELDS = ("id", "vector", "contents", "metadata")
_MIN_SAFE_SQUARED_NORM = 1e-30   # below this a float32 sum of squares has lost bits to underflow
_FLOAT32 = np.dtype(np.float32)  # `dtype is _FLOAT32`: no dtype conversion per query
_MAX_SAFE_SQUARED_NORM = 1e37  # above this (or NaN / inf) the fast query check defers to the careful one
_NOT_A_SEQUENCE = (str, bytes, bytearray, Mapping)
_REAL_SCALARS = (int, float, np.integer, np.floating)
_NON_FINITE = "contains NaN or infinity (after conversion to float32)"

Describe = Callable[[int], str]  # row -> "item 3 (id 'x'): vector", the prefix of an error


@dataclass(frozen=True, eq=False)
class Batch:
    """One upsert call, columnar and validated. Rows of ``vectors`` listed in ``embed_rows`` are
    zeros until ``attach_embeddings`` fills them from ``texts`` (same order). ``dimension`` is
    None only when nothing fixed it (every row is to be embedded, or an empty batch)."""

    ids: list[str]
    vectors: np.ndarray
    contents: list[bytes | None]
    metadata: list[dict | None]
    embed_rows: np.ndarray
    texts: list[str]
    dimension: int | None

    def __len__(self) -> int:
        return len(self.ids)


def _empty_batch(dimension: int | None) -> Batch:
    return Batch([], np.zeros((0, dimension or 0), np.float32), [], [], np.zeros(0, np.int64),
                 [], dimension)


# ----------------------------------------------------------------------------- entry points

def normalize_upsert(items: Any = None, ids: Any = None, vectors: Any = None, *,
                     dimension: int | None, metric: str, embeds: bool) -> Batch:
    """Validate one upsert call and return its Batch; nothing is written here.

    Call shapes: ``(items)``; ``(ids=..., vectors=...)``; positional ``(ids, vectors)`` (items
    holds the ids, ids the 2-D vectors); and ``(ids, vectors=...)``, which is what a face with
    the signature ``upsert(self, items=None, vectors=None, *, ids=None)`` passes on for
    ``index.upsert(ids, vectors)``. ``dimension`` is the index's (None: this batch fixes it);
    ``embeds`` says the index has an embedding model, so a vector may come from str contents.

    Raises InvalidTypeError when items is not a sequence of dicts/tuples, InvalidArgumentError
    on a malformed call or item, or the specific subclass (InvalidIdError, InvalidVectorError,
    DimensionMismatchError, InvalidContentsError, InvalidMetadataError, MissingVectorError)
    naming the first bad item and field.
    """
    _check_metric(metric)
    if dimension is not None:
        if isinstance(dimension, (bool, np.bool_)) or not isinstance(dimension, (int, np.integer)) \
                or dimension <= 0:
            raise InvalidArgumentError(f"dimension must be a positive int or None, got "
                                       f"{dimension!r}")
        dimension = int(dimension)
    if items is not None and ids is None and vectors is not None:
        if isinstance(items, Sequence) and len(items) and isinstance(items[0], (Mapping, tuple)):
            raise InvalidArgumentError("vectors= is for the NumPy overload (ids, vectors); dict "
                                       "and tuple items carry their own vectors")
        items, ids = None, items
    elif items is not None and ids is not None and vectors is None and _looks_2d(ids):
        items, ids, vectors = None, items, ids
    if items is not None:
        if ids is not None or vectors is not None:
            raise InvalidArgumentError("pass either items, or ids with vectors, not both")
        return _from_items(_check_items(items), dimension, metric, embeds)
    if ids is None or vectors is None:
        raise InvalidArgumentError("nothing to upsert: pass items, or ids together with vectors")
    return _from_arrays(ids, vectors, dimension, metric)


def normalize_ids(ids: Any) -> list[str]:
    """The ids of a get/delete call as a list of str: one str or int, or a list/tuple/1-D array
    of them (ints become decimal strings). Raises InvalidIdError on a bad id, InvalidTypeError
    when ids is neither an id nor a sequence of ids."""
    if isinstance(ids, np.ndarray) and ids.ndim == 0:
        ids = ids.item()
    if isinstance(ids, (str, int, np.integer, np.bool_)):
        return [_check_id(ids, "ids")]
    return _id_column(ids)


def single_query(query_vectors: Any, dimension: int | None, metric: str) -> np.ndarray | None:
    """The hot path of a single-query loop: a 1-D float32 ndarray of the right length, with a
    finite, safe sum of squares (one dot product: then every value is finite) -> the (d,)
    query itself (read, never written) or, under "cosine", its unit copy -- the row
    normalize_query gives, byte for byte. None for anything else (normalize_query decides).
    Two numpy calls, no reshape: a few us of a ~150 us query."""
    if (type(query_vectors) is np.ndarray and query_vectors.ndim == 1
            and query_vectors.dtype is _FLOAT32 and query_vectors.shape[0] == dimension):
        squared = query_vectors.dot(query_vectors)
        if squared >= _MIN_SAFE_SQUARED_NORM and squared < _MAX_SAFE_SQUARED_NORM:
            # math.sqrt of a float32 rounds back to np.sqrt's float32; numpy divides by it
            # in float32, as by np.sqrt(squared)
            return query_vectors / math.sqrt(squared) if metric == "cosine" else query_vectors
    return None


def normalize_query(query_vectors: Any, *, dimension: int | None,
                    metric: str) -> tuple[np.ndarray, bool]:
    """Query vectors as a (q, d) float32 array (unit rows under cosine), and whether a single
    1-D vector was given. Raises InvalidTypeError (not numbers), InvalidVectorError (bad shape,
    NaN/inf, zero under cosine) or DimensionMismatchError."""
    _check_metric(metric)
    if (type(query_vectors) is np.ndarray and query_vectors.ndim == 1
            and query_vectors.dtype == np.float32 and query_vectors.shape[0] == dimension):
        single = single_query(query_vectors, dimension, metric)
        if single is not None:
            return (single if metric == "cosine" else single.copy()).reshape(1, -1), True
        out = query_vectors.reshape(1, -1).copy()  # zero, tiny, huge or not finite: look closer
        return _finish_inplace(out, metric, lambda _: "query vector"), True
    if query_vectors is None or isinstance(query_vectors, _NOT_A_SEQUENCE):
        raise InvalidTypeError(f"query_vectors: expected a vector or a batch of vectors, got "
                               f"{type(query_vectors).__name__}")
    arr = _numeric_array(query_vectors)
    if arr.ndim == 1 if arr is not None else _looks_flat(query_vectors):
        row = _vector_row(query_vectors if arr is None else arr, "query vector", dimension, "")
        out = np.array(row[None, :], dtype=np.float32, order="C")
        return _finish_inplace(out, metric, lambda _: "query vector"), True
    describe: Describe = lambda j: f"query {j}"  # noqa: E731
    out = _stack_vectors(arr if arr is not None else list(query_vectors), describe, dimension)
    return _finish_inplace(out, metric, describe), False


def finish_vectors(vectors: Batch | np.ndarray, metric: str) -> Batch | np.ndarray:
    """A validated copy: every row finite, and of unit length under cosine. For a Batch, rows
    still waiting for an embedding are left alone. Raises InvalidVectorError naming the first
    bad row (NaN/inf, or a zero vector under cosine)."""
    _check_metric(metric)
    if not isinstance(vectors, Batch):
        out = _stack_vectors(vectors, lambda j: f"row {j}", None)
        return _finish_inplace(out, metric, lambda j: f"row {j}")
    batch = vectors
    arr = np.array(batch.vectors, dtype=np.float32, order="C")
    keep = np.ones(arr.shape[0], dtype=bool)
    keep[batch.embed_rows] = False
    rows = np.flatnonzero(keep)
    describe: Describe = lambda j: _who(int(rows[j]), batch.ids[rows[j]], "vector")  # noqa: E731
    arr[rows] = _finish_inplace(np.ascontiguousarray(arr[rows]), metric, describe)
    return replace(batch, vectors=arr)


def attach_embeddings(batch: Batch, embeddings: Any, *, metric: str) -> Batch:
    """The batch with ``embeddings`` (one row per entry of ``texts``) placed at ``embed_rows``,
    validated like any vector. Raises InvalidArgumentError on a row-count mismatch and
    DimensionMismatchError when the model's width differs from the batch's dimension."""
    _check_metric(metric)
    rows = batch.embed_rows
    if len(embeddings) != rows.size:
        raise InvalidArgumentError(f"{len(embeddings)} embeddings for {rows.size} texts")
    if rows.size == 0:
        return batch
    describe: Describe = lambda j: _who(int(rows[j]), batch.ids[rows[j]], "embedding")  # noqa
    emb = _finish_inplace(_stack_vectors(embeddings, describe, batch.dimension), metric, describe)
    if batch.dimension is None:      # nothing else fixed the width: every row was embedded
        full = emb
    else:
        full = batch.vectors.copy()
        full[rows] = emb
    return replace(batch, vectors=full, embed_rows=np.zeros(0, np.int64), texts=[],
                   dimension=int(emb.shape[1]))


# ----------------------------------------------------------------------------- the forms

def _from_items(items: Sequence, dimension: int | None, metric: str, embeds: bool) -> Batch:
    """The dict/tuple form: one pass over the items for ids, contents, metadata and the raw
    vectors, then one vectorised conversion of all vectors together."""
    ids: list[str] = []
    contents: list[bytes | None] = []
    metadata: list[dict | None] = []
    raw_vectors: list[Any] = []
    vector_items: list[int] = []
    text_of: dict[int, str] = {}
    for i, item in enumerate(items):
        item_id, vector, content, meta = _unpack_item(item, i)
        ids.append(item_id)
        contents.append(_contents(content, _who(i, item_id, "contents")))
        metadata.append(_metadata(meta, _who(i, item_id, "metadata")))
        if vector is not None:
            raw_vectors.append(vector)
            vector_items.append(i)
        elif embeds and isinstance(content, str):
            text_of[i] = content
        elif embeds and content is not None:
            raise InvalidContentsError(f"{_who(i, item_id, 'contents')}: must be str to compute "
                                       f"the missing vector from, got {type(content).__name__} "
                                       f"(bytes are refused even if valid UTF-8)")
        else:
            why = ("there are no str contents to compute it from" if embeds
                   else "the index has no embedding_model to compute it")
            raise MissingVectorError(f"{_who(i, item_id, 'vector')}: missing, and {why}")
    n = len(ids)
    if n == 0:
        return _empty_batch(dimension)
    if not raw_vectors:
        full = np.zeros((n, dimension or 0), dtype=np.float32)
    else:
        describe: Describe = lambda j: _who(vector_items[j], ids[vector_items[j]], "vector")
        stacked = _stack_vectors(raw_vectors, describe, dimension)
        full = _finish_inplace(stacked, metric, describe)
        if len(vector_items) < n:
            full = np.zeros((n, stacked.shape[1]), dtype=np.float32)
            full[vector_items] = stacked
    keep = _last_occurrences(ids)
    if keep is not None:
        ids, full = [ids[k] for k in keep], full[keep]
        contents, metadata = [contents[k] for k in keep], [metadata[k] for k in keep]
    order = keep if keep is not None else range(n)
    embedded = [(row, k) for row, k in enumerate(order) if k in text_of] if text_of else []
    width = int(full.shape[1]) if raw_vectors else dimension
    return Batch(ids, full, contents, metadata, np.asarray([r for r, _ in embedded], np.int64),
                 [text_of[k] for _, k in embedded], width)


def _from_arrays(ids: Any, vectors: Any, dimension: int | None, metric: str) -> Batch:
    """The NumPy overload: for an ndarray of vectors, no Python loop per row."""
    id_list = _id_column(ids)
    n = len(id_list)
    if isinstance(vectors, np.ndarray):
        if n == 0 and vectors.size == 0:
            return _empty_batch(dimension)
        if vectors.ndim != 2:
            raise InvalidVectorError(f"vectors: must be 2-D (n, dim), got shape {vectors.shape}")
    elif isinstance(vectors, _NOT_A_SEQUENCE) or not isinstance(vectors, Sequence):
        raise InvalidTypeError(f"vectors: expected a 2-D array or a list of vectors, got "
                               f"{type(vectors).__name__}")
    if len(vectors) != n:
        raise InvalidArgumentError(f"ids has {n} entries but vectors has {len(vectors)} rows")
    if n == 0:
        return _empty_batch(dimension)
    describe: Describe = lambda j: f"vectors row {j} (id {id_list[j]!r})"  # noqa: E731
    arr = _unit_copy(vectors, dimension) if metric == "cosine" else None
    if arr is None:
        arr = _finish_inplace(_stack_vectors(vectors, describe, dimension), metric, describe)
    keep = _last_occurrences(id_list)
    if keep is not None:
        id_list, arr = [id_list[k] for k in keep], arr[keep]
    m = len(id_list)
    return Batch(id_list, arr, [None] * m, [None] * m, np.zeros(0, np.int64), [], arr.shape[1])


# ----------------------------------------------------------------------------- items and ids

def _check_items(items: Any) -> Sequence:
    if isinstance(items, np.ndarray):
        raise InvalidTypeError("items: a NumPy array is the overload's ids; pass ids= and vectors=")
    if isinstance(items, _NOT_A_SEQUENCE) or not isinstance(items, Sequence):
        raise InvalidTypeError(f"items: expected a list of dicts or (id, vector) tuples, got "
                               f"{type(items).__name__} (wrap a single item in a list)")
    return items


def _unpack_item(item: Any, i: int) -> tuple[str, Any, Any, Any]:
    """(id, vector, contents, metadata) of one dict or tuple item, the id validated."""
    form = "a tuple item is (id, vector[, contents[, metadata]])"
    if isinstance(item, Mapping):
        if "id" not in item:
            raise InvalidIdError(f"item {i}: id: missing (every item needs an 'id')")
        item_id = _check_id(item["id"], f"item {i}: id")
        unknown = [key for key in item if key not in ITEM_FIELDS]
        if unknown:
            raise InvalidArgumentError(f"{_who(i, item_id, 'key')}: unknown key {unknown[0]!r}; "
                                       f"an item has {', '.join(ITEM_FIELDS)}")
        return item_id, item.get("vector"), item.get("contents"), item.get("metadata")
    if not isinstance(item, (tuple, list)):
        raise InvalidTypeError(f"item {i}: expected a dict or a tuple, got "
                               f"{type(item).__name__} ({form})")
    if not 2 <= len(item) <= 4:
        raise InvalidArgumentError(f"item {i}: {form}, got {len(item)} fields")
    raw_id, vector, content, meta = (*item, None, None)[:4]
    return _check_id(raw_id, f"item {i}: id"), vector, content, meta


def _check_id(value: Any, where: str) -> str:
    """One id as str. Raises InvalidIdError unless it is a non-empty, UTF-8-encodable str of at
    most MAX_ID_BYTES bytes, or an int (not a bool), which becomes its decimal string."""
    if isinstance(value, (bool, np.bool_)):
        raise InvalidIdError(f"{where}: {value!r} is a bool, not an id (use a str or an int)")
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if not isinstance(value, str):
        raise InvalidIdError(f"{where}: must be a str (or an int), got {type(value).__name__}")
    if not value:
        raise InvalidIdError(f"{where}: must not be empty")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidIdError(f"{where}: {value[:64]!r} is not valid Unicode (lone surrogate at "
                             f"{exc.start})") from None
    if size > MAX_ID_BYTES:
        raise InvalidIdError(f"{where}: {value[:32]!r}... is {size} UTF-8 bytes, over the "
                             f"{MAX_ID_BYTES} limit")
    return str(value)


def _id_column(ids: Any) -> list[str]:
    """A 1-D array or sequence of ids as a list of str (integer arrays need no per-id check)."""
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise InvalidArgumentError(f"ids: must be 1-D, got shape {ids.shape}")
        if ids.size and ids.dtype.kind in "iu":
            return [str(v) for v in ids.tolist()]
        if ids.size and ids.dtype.kind not in "UO":
            raise InvalidIdError(f"ids: dtype {ids.dtype} cannot hold ids; use int or str")
        ids = ids.tolist()
    elif isinstance(ids, _NOT_A_SEQUENCE) or not isinstance(ids, Sequence):
        raise InvalidTypeError(f"ids: expected an id or a list/array of ids, got "
                               f"{type(ids).__name__}")
    # Fast path: a non-empty ASCII str within the byte limit is valid as it is (isascii is a
    # flag check); anything else goes through _check_id, which names the fault.
    return [v if type(v) is str and v.isascii() and 0 < len(v) <= MAX_ID_BYTES
            else _check_id(v, f"ids[{j}]") for j, v in enumerate(ids)]


def _last_occurrences(ids: list[str]) -> list[int] | None:
    """Rows to keep so the last occurrence of each id wins, in order; None when ids are unique."""
    if len(set(ids)) == len(ids):
        return None
    return sorted({item_id: row for row, item_id in enumerate(ids)}.values())


def _who(index: int, item_id: str, field: str) -> str:
    return f"item {index} (id {item_id!r}): {field}"


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise InvalidArgumentError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")


# ----------------------------------------------------------------------------- vectors

def _numeric_array(value: Any) -> np.ndarray | None:
    """``value`` as an int/float ndarray in one vectorised step, or None when it is ragged or
    not plain numbers (the caller then goes row by row to name the fault). No dtype is forced:
    ``np.asarray(["1.5"], dtype=float)`` would silently parse strings. An all-bool vector is
    refused (bool dtype), but bools among numbers count as 0/1, as in Python arithmetic."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        return None
    return arr if arr.dtype.kind in "fiu" else None


def _looks_2d(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim == 2
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and isinstance(value[0], (list, tuple, np.ndarray, memoryview)))


def _looks_flat(value: Any) -> bool:
    return isinstance(value, Sequence) and not any(
        isinstance(x, (Sequence, np.ndarray, memoryview)) and not isinstance(x, str) for x in value)


def _stack_vectors(rows: Any, describe: Describe, dimension: int | None) -> np.ndarray:
    """Rows of numbers as a new (n, d) float32 C-contiguous array. Fast path: one np.asarray
    of everything; otherwise row by row, so that the error names the row. The first row fixes
    d when dimension is None."""
    if len(rows) == 0:
        return np.zeros((0, dimension or 0), dtype=np.float32)
    arr = _numeric_array(rows)
    if (arr is None or arr.ndim != 2 or arr.shape[1] == 0
            or (dimension is not None and arr.shape[1] != dimension)):
        checked, origin = [], " (the index dimension)" if dimension is not None else ""
        for j, value in enumerate(rows):
            checked.append(_vector_row(value, describe(j), dimension, origin))
            if dimension is None:
                dimension, origin = checked[0].shape[0], f" (fixed by {describe(0)})"
        arr = np.stack(checked)
    with np.errstate(over="ignore"):     # too large for float32 -> inf, refused by the finish
        return np.array(arr, dtype=np.float32, order="C")   # always a copy the batch owns


def _vector_row(value: Any, where: str, dimension: int | None, origin: str) -> np.ndarray:
    """One vector as a 1-D int/float array. Raises InvalidTypeError (not numbers),
    InvalidVectorError (empty, ragged or nested) or DimensionMismatchError (wrong length)."""
    if isinstance(value, _NOT_A_SEQUENCE + (set, frozenset)):
        raise InvalidTypeError(f"{where}: must be a sequence of numbers, not "
                               f"{type(value).__name__}")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidVectorError(f"{where}: not a flat sequence of numbers ({exc})") from None
    if arr.ndim != 1:
        raise InvalidVectorError(f"{where}: must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind == "O":
        for j, x in enumerate(arr):
            if isinstance(x, (bool, np.bool_)) or not isinstance(x, _REAL_SCALARS):
                raise InvalidTypeError(f"{where}: element {j} is {type(x).__name__}, not a number")
        try:
            arr = arr.astype(np.float64)
        except OverflowError:
            raise InvalidVectorError(f"{where}: an element is too large for a float") from None
    if arr.dtype.kind not in "fiu":
        raise InvalidTypeError(f"{where}: elements must be numbers, got dtype {arr.dtype}")
    if arr.size == 0:
        raise InvalidVectorError(f"{where}: is empty")
    if dimension is not None and arr.shape[0] != dimension:
        raise DimensionMismatchError(f"{where}: expected {dimension} values{origin}, got "
                                     f"{arr.shape[0]}")
    return arr


def _unit_copy(vectors: Any, dimension: int | None) -> np.ndarray | None:
    """Cosine, C-contiguous float32, every row's squared norm safe: unit rows in ONE pass, byte
    for byte the general path's copy-then-divide (370 -> 310 us per 1000 x 384 here); else None."""
    if (type(vectors) is not np.ndarray or vectors.dtype != np.float32 or vectors.ndim != 2
            or not vectors.flags.c_contiguous or vectors.shape[1] != (dimension or vectors.shape[1] or -1)):
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        squared = np.einsum("ij,ij->i", vectors, vectors)
        if not (squared.min() >= _MIN_SAFE_SQUARED_NORM and np.isfinite(squared.max())):
            return None
    return np.divide(vectors, np.sqrt(squared)[:, None], out=np.empty(vectors.shape, np.float32))


def _finish_inplace(arr: np.ndarray, metric: str, describe: Describe) -> np.ndarray:
    """Check that every value is finite and, under cosine, scale rows to unit length, in place
    and without a Python loop per row. Raises InvalidVectorError naming the first bad row."""
    if arr.shape[0] == 0:
        return arr
    with np.errstate(over="ignore", invalid="ignore"):   # overflow is detected, not warned
        return _finish_checked(arr, metric, describe)


def _finish_checked(arr: np.ndarray, metric: str, describe: Describe) -> np.ndarray:
    if metric != "cosine":
        if not np.isfinite(arr.sum()):   # a finite sum means all finite; else look (overflow?)
            bad = ~np.isfinite(arr).all(axis=1)
            if bad.any():
                raise InvalidVectorError(f"{describe(int(np.argmax(bad)))}: {_NON_FINITE}")
        return arr
    squared = np.einsum("ij,ij->i", arr, arr)
    odd = np.flatnonzero(~(np.isfinite(squared) & (squared >= _MIN_SAFE_SQUARED_NORM)))
    norms = np.sqrt(squared)
    if odd.size:     # NaN/inf, zero, or a norm float32 cannot hold: redo those rows in float64,
        sub = arr[odd].astype(np.float64)   # whose range holds any float32's square
        nonfinite = ~np.isfinite(sub).all(axis=1)
        sub_norms = np.linalg.norm(sub, axis=1)
        bad = nonfinite | (sub_norms == 0)
        if bad.any():
            first = int(np.argmax(bad))
            problem = _NON_FINITE if nonfinite[first] else \
                "is a zero vector, which has no direction under the cosine metric"
            raise InvalidVectorError(f"{describe(int(odd[first]))}: {problem}")
        norms[odd] = 1.0
    arr /= norms[:, None]
    if odd.size:
        arr[odd] = sub / sub_norms[:, None]
    return arr


# ----------------------------------------------------------------------------- contents, metadata
