"""Validate one update() call before anything is written: which fields of which items change.

An update item is a dict with "id" and any of "vector", "contents", "metadata" (a key whose
value is None counts as not given: that field is kept, as None means "none given" in upsert).
Another key is refused as upsert refuses it; a tuple item is refused (a tuple cannot say which
fields it leaves alone). Every given field is checked by the same code as upsert's (items.py,
fields.py), so the rules and the messages (item index, id, field) are the same.

Duplicate ids in one call are applied in order, as if each item were its own update: a later
item's given fields replace an earlier one's, fields it leaves out keep the earlier item's. (For
upsert, whose items carry every field, that is its "last occurrence wins".)

A str (or PIL image: stored as PNG, as upsert does) `contents` without a `vector`, on an index
with an embedding model, is to be re-embedded: such rows are the Batch's `embed_rows` / `texts`,
filled by the same embedding path as upsert's (lsmvec.embedding.embed_batch). Bytes contents without a
vector there are refused as upsert refuses them: the stored vector would no longer be the
contents' embedding.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lsmvec.wal.errors import (InvalidArgumentError, InvalidIdError,
                               InvalidTypeError)
from lsmvec.request.items import (ITEM_FIELDS, Batch, check_id, check_items, check_metric,
                                  item_columns, who)

__all__ = ["Update", "normalize_update"]


@dataclass(frozen=True, eq=False)
class Update:
    """One update call, validated, one row per distinct id (in order of first occurrence).

    `batch.vectors` rows where `new_vector` is False are zeros (the stored vector is kept);
    rows in `batch.embed_rows` are to be embedded from `batch.texts` (then `new_vector` holds).
    `batch.contents` / `batch.metadata` entries of None are kept as stored."""

    batch: Batch
    new_vector: np.ndarray  # bool per row

    def __len__(self) -> int:
        return len(self.batch.ids)

    def embedded(self, batch: Batch) -> "Update":
        """This update with its batch's embeddings attached (lsmvec.embedding.embed_batch)."""
        return replace(self, batch=batch)


def normalize_update(items: Any, *, dimension: int | None, metric: str, embeds: bool) -> Update:
    """Validate `items` (a list of dicts) of one update call; nothing is written here.

    Raises InvalidTypeError (items not a list of dicts), InvalidIdError (missing or bad id),
    InvalidArgumentError (unknown key), and what upsert raises for a bad vector, contents or
    metadata (InvalidVectorError, DimensionMismatchError, InvalidContentsError,
    InvalidMetadataError) -- each naming the item, its id and the field."""
    check_metric(metric)
    items = check_items(items)
    cols = item_columns(items, _unpack, embeds, vector_required=False)
    ids, contents, metadata = cols.ids, cols.contents, cols.metadata
    vector_items, text_of = cols.vector_items, cols.text_of
    width = dimension
    stacked = cols.stacked(dimension, metric)
    if stacked is None:
        stacked = np.zeros((0, dimension or 0), np.float32)
    else:
        width = int(stacked.shape[1])
    vector_row = {i: j for j, i in enumerate(vector_items)}
    # Fold the items of each id in order: the last item giving a field decides it. Rows keep
    # the order of first occurrence, so an unknown-id error names the first in call order.
    rows: dict[str, list] = {}  # id -> [vector source item, contents, metadata]
    for i, item_id in enumerate(ids):
        row = rows.setdefault(item_id, [None, None, None])
        if i in vector_row or i in text_of:
            row[0] = i
        if contents[i] is not None:
            row[1] = contents[i]
        if metadata[i] is not None:
            row[2] = metadata[i]
    out_ids = list(rows)
    m = len(out_ids)
    vectors = np.zeros((m, width or 0), np.float32)
    new_vector = np.zeros(m, bool)
    embed_rows: list[int] = []
    texts: list[Any] = []
    for r, (source, _c, _m) in enumerate(rows.values()):
        if source is None:
            continue
        new_vector[r] = True
        if source in vector_row:
            vectors[r] = stacked[vector_row[source]]
        else:
            embed_rows.append(r)
            texts.append(text_of[source])
    batch = Batch(out_ids, vectors, [row[1] for row in rows.values()],
                  [row[2] for row in rows.values()], np.asarray(embed_rows, np.int64), texts,
                  width)
    return Update(batch, new_vector)


def _unpack(item: Any, i: int) -> tuple[str, Any, Any, Any]:
    """(id, vector, contents, metadata) of one update dict, the id checked."""
    if not isinstance(item, Mapping):
        raise InvalidTypeError(f"item {i}: expected a dict with 'id' and any of 'vector', "
                               f"'contents', 'metadata', got {type(item).__name__} (update "
                               f"keeps the fields an item leaves out, so it takes dicts only)")
    if "id" not in item:
        raise InvalidIdError(f"item {i}: id: missing (every item needs an 'id')")
    item_id = check_id(item["id"], f"item {i}: id")
    unknown = [key for key in item if key not in ITEM_FIELDS]
    if unknown:
        raise InvalidArgumentError(f"{who(i, item_id, 'key')}: unknown key {unknown[0]!r}; "
                                   f"an item has {', '.join(ITEM_FIELDS)}")
    return item_id, item.get("vector"), item.get("contents"), item.get("metadata")
