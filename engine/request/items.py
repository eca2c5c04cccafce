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
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lsmvec.wal.errors import (InvalidArgumentError, InvalidContentsError,
                        InvalidIdError, InvalidTypeError, InvalidVectorError, MissingVectorError)

from lsmvec.request.fields import MAX_METADATA_BYTES, MAX_METADATA_DEPTH, check_contents, check_metadata
from lsmvec.request.images import image_contents
from lsmvec.request.vectors import (Describe, check_metric, finish_inplace, looks_2d,
                                    stack_vectors, unit_copy)

__all__ = ["Batch", "normalize_upsert", "normalize_ids", "finish_vectors",
           "attach_embeddings", "MAX_ID_BYTES", "MAX_METADATA_DEPTH", "MAX_METADATA_BYTES"]

MAX_ID_BYTES = 1024
ITEM_FIELDS = ("id", "vector", "contents", "metadata")
_NOT_A_SEQUENCE = (str, bytes, bytearray, Mapping)


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
    texts: list[Any]   # str, or PIL images (request/images.py)
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
    check_metric(metric)
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
    elif items is not None and ids is not None and vectors is None and looks_2d(ids):
        items, ids, vectors = None, items, ids
    if items is not None:
        if ids is not None or vectors is not None:
            raise InvalidArgumentError("pass either items, or ids with vectors, not both")
        return _from_items(check_items(items), dimension, metric, embeds)
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
        return [check_id(ids, "ids")]
    return _id_column(ids)



def finish_vectors(vectors: Batch | np.ndarray, metric: str) -> Batch | np.ndarray:
    """A validated copy: every row finite, and of unit length under cosine. For a Batch, rows
    still waiting for an embedding are left alone. Raises InvalidVectorError naming the first
    bad row (NaN/inf, or a zero vector under cosine)."""
    check_metric(metric)
    if not isinstance(vectors, Batch):
        out = stack_vectors(vectors, lambda j: f"row {j}", None)
        return finish_inplace(out, metric, lambda j: f"row {j}")
    batch = vectors
    arr = np.array(batch.vectors, dtype=np.float32, order="C")
    keep = np.ones(arr.shape[0], dtype=bool)
    keep[batch.embed_rows] = False
    rows = np.flatnonzero(keep)
    describe: Describe = lambda j: who(int(rows[j]), batch.ids[rows[j]], "vector")  # noqa: E731
    arr[rows] = finish_inplace(np.ascontiguousarray(arr[rows]), metric, describe)
    return replace(batch, vectors=arr)


def attach_embeddings(batch: Batch, embeddings: Any, *, metric: str) -> Batch:
    """The batch with ``embeddings`` (one row per entry of ``texts``) placed at ``embed_rows``,
    validated like any vector. Raises InvalidArgumentError on a row-count mismatch and
    DimensionMismatchError when the model's width differs from the batch's dimension."""
    check_metric(metric)
    rows = batch.embed_rows
    if len(embeddings) != rows.size:
        raise InvalidArgumentError(f"{len(embeddings)} embeddings for {rows.size} texts")
    if rows.size == 0:
        return batch
    describe: Describe = lambda j: who(int(rows[j]), batch.ids[rows[j]], "embedding")  # noqa
    emb = finish_inplace(stack_vectors(embeddings, describe, batch.dimension), metric, describe)
    if batch.dimension is None:      # nothing else fixed the width: every row was embedded
        full = emb
    else:
        full = batch.vectors.copy()
        full[rows] = emb
    return replace(batch, vectors=full, embed_rows=np.zeros(0, np.int64), texts=[],
                   dimension=int(emb.shape[1]))


# ----------------------------------------------------------------------------- the forms

@dataclass
class ItemColumns:
    """One pass over a call's item dicts/tuples (upsert's and update's): the checked ids,
    contents and metadata by item, the raw vectors given (and which items gave them), and
    what to embed for items without one."""

    ids: list[str]
    contents: list[bytes | None]
    metadata: list[dict | None]
    raw_vectors: list[Any]
    vector_items: list[int]
    text_of: dict[int, Any]  # item -> str or PIL image to embed

    def stacked(self, dimension: int | None, metric: str) -> np.ndarray | None:
        """The given vectors as one checked float32 array (None when none was given)."""
        if not self.raw_vectors:
            return None
        items, ids = self.vector_items, self.ids
        describe: Describe = lambda j: who(items[j], ids[items[j]], "vector")  # noqa: E731
        return finish_inplace(stack_vectors(self.raw_vectors, describe, dimension), metric,
                              describe)


def item_columns(items: Sequence, unpack: Callable[[Any, int], tuple[str, Any, Any, Any]],
                 embeds: bool, *, vector_required: bool) -> ItemColumns:
    """The items' columns; `unpack` gives (id, vector, contents, metadata) of one item. With
    `vector_required`, an item with neither a vector nor anything to embed is a
    MissingVectorError naming it."""
    cols = ItemColumns([], [], [], [], [], {})
    for i, item in enumerate(items):
        item_id, vector, content, meta = unpack(item, i)
        cols.ids.append(item_id)
        stored, meta, embed = item_fields(i, item_id, vector, content, meta, embeds)
        cols.contents.append(stored)
        cols.metadata.append(meta)
        if vector is not None:
            cols.raw_vectors.append(vector)
            cols.vector_items.append(i)
        elif embed is not None:
            cols.text_of[i] = embed
        elif vector_required:
            why = ("there are no str contents to compute it from" if embeds
                   else "the index has no embedding_model to compute it")
            raise MissingVectorError(f"{who(i, item_id, 'vector')}: missing, and {why}")
    return cols


def _from_items(items: Sequence, dimension: int | None, metric: str, embeds: bool) -> Batch:
    """The dict/tuple form: one pass over the items for ids, contents, metadata and the raw
    vectors, then one vectorised conversion of all vectors together."""
    cols = item_columns(items, _unpack_item, embeds, vector_required=True)
    ids, contents, metadata = cols.ids, cols.contents, cols.metadata
    vector_items, text_of = cols.vector_items, cols.text_of
    n = len(ids)
    if n == 0:
        return _empty_batch(dimension)
    stacked = cols.stacked(dimension, metric)
    if stacked is None:
        full = np.zeros((n, dimension or 0), dtype=np.float32)
    else:
        full = stacked
        if len(vector_items) < n:
            full = np.zeros((n, stacked.shape[1]), dtype=np.float32)
            full[vector_items] = stacked
    keep = _last_occurrences(ids)
    if keep is not None:
        ids, full = [ids[k] for k in keep], full[keep]
        contents, metadata = [contents[k] for k in keep], [metadata[k] for k in keep]
    order = keep if keep is not None else range(n)
    embedded = [(row, k) for row, k in enumerate(order) if k in text_of] if text_of else []
    width = int(full.shape[1]) if stacked is not None else dimension
    return Batch(ids, full, contents, metadata, np.asarray([r for r, _ in embedded], np.int64),
                 [text_of[k] for _, k in embedded], width)


def item_fields(i: int, item_id: str, vector: Any, content: Any, meta: Any, embeds: bool
                ) -> tuple[bytes | None, dict | None, Any]:
    """(stored contents, metadata, what to embed -- the str or image, or None) of item `i`
    (upsert's and update's). Raises what check_contents / check_metadata raise, and
    InvalidContentsError when a model would have to embed contents that are neither."""
    stored, image = image_contents(content, who(i, item_id, "contents"))  # PNG bytes
    stored = check_contents(stored, who(i, item_id, "contents"))
    meta = check_metadata(meta, who(i, item_id, "metadata"))
    if vector is not None or not embeds or content is None:
        return stored, meta, None
    if isinstance(content, str) or image is not None:
        return stored, meta, content
    raise InvalidContentsError(f"{who(i, item_id, 'contents')}: must be str or an image to "
                               f"compute the vector from, got {type(content).__name__} (bytes are "
                               f"refused even if valid UTF-8: pass a vector with them)")


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
    arr = unit_copy(vectors, dimension) if metric == "cosine" else None
    if arr is None:
        arr = finish_inplace(stack_vectors(vectors, describe, dimension), metric, describe)
    keep = _last_occurrences(id_list)
    if keep is not None:
        id_list, arr = [id_list[k] for k in keep], arr[keep]
    m = len(id_list)
    return Batch(id_list, arr, [None] * m, [None] * m, np.zeros(0, np.int64), [], arr.shape[1])


# ----------------------------------------------------------------------------- items and ids

def check_items(items: Any) -> Sequence:
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
        item_id = check_id(item["id"], f"item {i}: id")
        unknown = [key for key in item if key not in ITEM_FIELDS]
        if unknown:
            raise InvalidArgumentError(f"{who(i, item_id, 'key')}: unknown key {unknown[0]!r}; "
                                       f"an item has {', '.join(ITEM_FIELDS)}")
        return item_id, item.get("vector"), item.get("contents"), item.get("metadata")
    if not isinstance(item, (tuple, list)):
        raise InvalidTypeError(f"item {i}: expected a dict or a tuple, got "
                               f"{type(item).__name__} ({form})")
    if not 2 <= len(item) <= 4:
        raise InvalidArgumentError(f"item {i}: {form}, got {len(item)} fields")
    raw_id, vector, content, meta = (*item, None, None)[:4]
    return check_id(raw_id, f"item {i}: id"), vector, content, meta


def check_id(value: Any, where: str) -> str:
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
    # flag check); anything else goes through check_id, which names the fault.
    return [v if type(v) is str and v.isascii() and 0 < len(v) <= MAX_ID_BYTES
            else check_id(v, f"ids[{j}]") for j, v in enumerate(ids)]


def _last_occurrences(ids: list[str]) -> list[int] | None:
    """Rows to keep so the last occurrence of each id wins, in order; None when ids are unique."""
    if len(set(ids)) == len(ids):
        return None
    return sorted({item_id: row for row, item_id in enumerate(ids)}.values())


def who(index: int, item_id: str, field: str) -> str:
    return f"item {index} (id {item_id!r}): {field}"


