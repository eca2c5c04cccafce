"""update(items): change some fields of existing items, keeping the others.

An update is one upsert log record holding the full merged items (new fields + the stored ones),
so replay needs nothing but that record and rebuilds exactly what the call wrote. The merge is
decided at the record's place in the log (the write queue's `resolve` slot, as delete(filters=)
decides its ids: write.py, "Late payloads"): every write logged before it is applied, none after
it. So two updates of one id never lose each other's fields (the later one reads what the
earlier wrote), an upsert logged before an update is what it merges into, and an update racing
a delete either comes first (the delete then removes it) or finds the id gone and fails with
ItemNotFoundError -- it never brings a deleted item back. Resolve raising fails that record
alone, before anything is written.

The ids are checked once before queueing too (a clear error before any embedding runs), and
again at the record's position, where the answer counts.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lsmvec.db.reads import hits_of
from lsmvec.db.segments import SegmentSource
from lsmvec.disk import records
from lsmvec.errors import ItemNotFoundError
from lsmvec.request.updates import Update

__all__ = ["UpdateRequest", "check_live", "update_record"]


class UpdateRequest:
    """A validated (and embedded) update call; IndexCore._upsert_record asks it for its record."""

    __slots__ = ("update",)

    def __init__(self, update: Update):
        self.update = update

    def record(self, core: Any) -> tuple | None:
        """The log record of this update (None for an empty call: nothing to write)."""
        return update_record(core, self.update) if len(self.update) else None


def _missing(core: Any, item_id: str) -> ItemNotFoundError:
    return ItemNotFoundError(f"update: id {item_id!r} is not in index {core.config.name!r} "
                             f"(never written, or deleted); nothing was updated")


def _places(core: Any, ids: list[str]) -> list[tuple[Any, int]]:
    """(source, row) of each id's live version; ItemNotFoundError naming the first missing.
    Caller holds the read lock."""
    places = []
    for item_id in ids:
        at = core.lookup(item_id)
        if at is None:
            raise _missing(core, item_id)
        places.append(at)
    return places


def check_live(core: Any, ids: list[str]) -> None:
    """Raise ItemNotFoundError unless every id is live now (the early check)."""
    with core.read_lock():
        _places(core, ids)


def merged(core: Any, update: Update) -> tuple[np.ndarray, list, list]:
    """The full (vectors, contents, metadata) of the update's items: its given fields, the
    stored ones for the rest. Reads only the fields some item keeps. Caller holds the read
    lock (flushes and merges swap sources under the write lock)."""
    batch = update.batch
    places = _places(core, batch.ids)
    include = tuple(field for field, keeps in (
        ("contents", any(c is None for c in batch.contents)),
        ("metadata", any(m is None for m in batch.metadata))) if keeps)
    stored = hits_of([(source, row, 0.0) for source, row in places], include, core.store,
                     core.item_cache) if include else []
    vectors = batch.vectors
    kept = np.flatnonzero(~update.new_vector).tolist()
    if kept:
        old = np.stack([_stored_vector(*places[r]) for r in kept])
        if vectors.shape[1] != old.shape[1]:  # every row kept: nothing fixed the batch's width
            vectors = np.zeros((len(batch.ids), old.shape[1]), np.float32)
        else:
            vectors = vectors.copy()
        vectors[kept] = old
    contents = [c if c is not None else stored[r]["contents"]
                for r, c in enumerate(batch.contents)]
    metadata = [m if m is not None else (stored[r]["metadata"] or None)
                for r, m in enumerate(batch.metadata)]
    return vectors, contents, metadata


def _stored_vector(source: Any, row: int) -> np.ndarray:
    """The float32 vector stored at (source, row), bit for bit (a segment's sealed rows are
    float32 whatever its storage_precision; a memtable holds float32 rows)."""
    if type(source) is SegmentSource:
        return source.segment.row(row)
    return np.array(source.vector(row), np.float32)


def update_record(core: Any, update: Update) -> tuple:
    """The log record (kind, payload, apply, prepare, resolve) of an update: an upsert record
    whose items are merged at its LSN position (see the module docstring)."""
    ids = update.batch.ids
    items: list = []  # (vectors, contents, metadata), decided by resolve

    def resolve() -> list:
        with core.read_lock():
            vectors, contents, metadata = merged(core, update)
        items[:] = [vectors, contents, metadata]
        return records.encode_upsert(ids, vectors, contents, metadata)

    return (records.KIND_UPSERT, b"", lambda lsn: core.apply_upsert(lsn, ids, *items), None,
            resolve)
