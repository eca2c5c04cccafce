"""The index's version: the manifest, and the one function that changes it (LevelDB's VersionEdit
+ VersionSet::LogAndApply).

A version is what the sealed manifest in LMDB names -- the live segments with their dead-row
counts, the checkpoint LSN, the log file a writer must find (log_head), the clean-close mark --
together with the per-segment meta beside it (row ids, dead-row set, term index). Everything that
changes it builds a `VersionEdit` and hands it to `install`: a flush, a merge, a writer's open,
a log roll, a clean close. `install` writes the edit and the new manifest in ONE store
transaction, commits it and switches the in-memory state under the index's write lock, in the
one order written in its docstring; readers (and, later, readers in other processes) follow the
writer through exactly that switch.

The store (engine/disk/store.py) only seals and opens msgpack values under their names; the
encoding of the manifest, the dead-row sets, the row ids and the term indexes lives here.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from lsmvec.wal import failpoints

from lsmvec.disk.crypto import IndexCipher
from lsmvec.disk.item_values import key_order
from lsmvec.disk.store import Store, StoreTxn
from lsmvec.errors import CorruptionError
from lsmvec.db.row_ids import RowIds
from lsmvec.db.term_index import TermIndex
from lsmvec.db.text_index import TextIndex

if TYPE_CHECKING:
    from lsmvec.db.core import IndexCore
    from lsmvec.db.memtable import Memtable
    from lsmvec.db.segments import SegmentSource

log = logging.getLogger(__name__)

__all__ = ["SegmentInfo", "Manifest", "VersionEdit", "ItemChanges", "FlushItems", "CarryItems",
           "install", "create_store", "read_manifest", "read_row_ids", "read_dead", "read_terms", "read_text"]

MANIFEST_KEY = b"manifest"


def _dead_key(segment: int) -> bytes:
    return b"dead/%d" % segment


def _rows_key(segment: int) -> bytes:
    return b"rows/%d" % segment


def _terms_key(segment: int) -> bytes:
    return b"terms/%d" % segment


def _text_key(segment: int) -> bytes:
    """Where segments written by 0.1's first BM25 build (commit 0720817) keep their full-text
    index: a sealed meta value. Newer segments hold it as the sealed ``text.idx`` file in their
    folder (db/segments.open_segment); this one is still read, and removed with its segment."""
    return b"text/%d" % segment


# -- the manifest -------------------------------------------------------------------------------

@dataclass
class SegmentInfo:
    """One live segment as the manifest names it."""
    id: int
    rows: int
    kind: str
    files: list[list[Any]]  # [name, size, sha256 hex(, salt hex)]: FileEntry.as_list
    n_lists: int | None = None
    dead: int = 0
    """Rows of the segment the store no longer points at: the size of its dead/ set, kept in
    the sealed manifest so a dead/ record LMDB lost cannot bring deleted items back."""

    def pack(self) -> list:
        return [self.id, self.rows, self.kind, self.files, self.n_lists, self.dead]

    @classmethod
    def unpack(cls, raw: list) -> "SegmentInfo":
        return cls(int(raw[0]), int(raw[1]), str(raw[2]), [list(f) for f in raw[3]], raw[4],
                   int(raw[5]))


@dataclass
class Manifest:
    segments: list[SegmentInfo] = field(default_factory=list)
    checkpoint_lsn: int = 0
    next_segment_id: int = 1
    version: int = 0
    log_head: int | None = 0
    """First LSN of the newest log file a writer recorded creating (at its open, at each flush):
    that file must exist. 0: no writer ever opened this store (it can own no log records and no
    segment). None: a store written before this was recorded (nothing is checked)."""
    closed_lsn: int = 0
    """LSN of the CLOSE record of the last clean close (0: open, or the last run crashed): the
    log must end with that record, intact."""

    def pack(self) -> dict:
        """The sealed body (keys and their order as every store since log_head was added)."""
        return {"segments": [s.pack() for s in self.segments], "checkpoint": self.checkpoint_lsn,
                "next_segment": self.next_segment_id, "version": self.version,
                "log_head": self.log_head, "closed": self.closed_lsn}

    @classmethod
    def unpack(cls, body: Any) -> "Manifest":
        """Raises ValueError (and friends) for a malformed body. Stores written before
        `log_head` / `closed` were recorded lack those keys: log_head None, closed 0."""
        head = body.get("log_head")
        return cls([SegmentInfo.unpack(s) for s in body["segments"]], int(body["checkpoint"]),
                   int(body["next_segment"]), int(body["version"]),
                   None if head is None else int(head), int(body.get("closed", 0)))


def read_manifest(store: Store) -> Manifest:
    body = store.get_meta(MANIFEST_KEY)
    if body is None:  # every store is created with one
        raise CorruptionError("the store's manifest is missing", store.data_file)
    try:
        return Manifest.unpack(body)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        raise CorruptionError("malformed manifest", store.data_file) from None


def create_store(folder: Path, cipher: IndexCipher) -> Store:
    """A new store (file, tables) holding an empty manifest: what create_index writes."""
    return Store(folder, cipher, create=True, initial={MANIFEST_KEY: Manifest().pack()})


# -- per-segment meta ---------------------------------------------------------------------------

def read_dead(store: Store, segment: int, rows: int, expected: int) -> np.ndarray:
    """The segment's dead-row set; `expected` (the manifest's count) must match it."""
    raw = store.get_meta(_dead_key(segment))
    if raw is None:
        if expected:
            raise CorruptionError(f"dead-row set of segment {segment} is missing", store.data_file)
        return np.zeros(rows, bool)
    if not isinstance(raw, bytes):
        raise CorruptionError(f"dead-row set of segment {segment} is malformed", store.data_file)
    bits = np.frombuffer(raw, np.uint8)
    if len(bits) != (rows + 7) // 8:
        raise CorruptionError(f"dead-row set of segment {segment} has the wrong size",
                              store.data_file)
    dead = np.unpackbits(bits, count=rows).astype(bool)
    if int(np.count_nonzero(dead)) != expected:
        raise CorruptionError(f"dead-row set of segment {segment} does not match the "
                              f"manifest", store.data_file)
    return dead


def read_row_ids(store: Store, segment: int, rows: int) -> RowIds | list[str]:
    """The ids by row of a segment written before ids.bin (segments.open_segment reads that
    file when the segment has one), from the store: packed (RowIds.pack), or a list of str
    (before the packed form)."""
    ids = store.get_meta(_rows_key(segment))
    if ids is None:
        raise CorruptionError(f"row ids of segment {segment} are missing", store.data_file)
    if isinstance(ids, list) and len(ids) == rows:
        return ids
    try:
        if isinstance(ids, dict):
            return RowIds.unpack(ids, rows)
        raise ValueError("neither a list nor a packed form")
    except ValueError:
        raise CorruptionError(f"row ids of segment {segment} are malformed",
                              store.data_file) from None


def read_terms(store: Store, segment: int, rows: int) -> TermIndex:
    """The segment's secondary index (an empty one when it has no metadata)."""
    raw = store.get_meta(_terms_key(segment))
    if raw is None:  # every segment gets one, empty or not
        raise CorruptionError(f"term index of segment {segment} is missing", store.data_file)
    try:
        return TermIndex.unpack(raw, rows)
    except (ValueError, TypeError, KeyError, AttributeError):
        raise CorruptionError(f"term index of segment {segment} is malformed",
                              store.data_file) from None


def read_text(store: Store, segment: int, rows: int) -> TextIndex | None:
    """A segment's full-text index kept in the store (``_text_key``: segments from before the
    text.idx file); None when it has none."""
    raw = store.get_meta(_text_key(segment))
    if raw is None:
        return None
    try:
        return TextIndex.unpack(raw, rows)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CorruptionError(f"text index of segment {segment} is malformed ({exc})",
                              store.data_file) from None


# -- the edit -----------------------------------------------------------------------------------

@dataclass
class ItemChanges:
    """What an edit's item decisions did, as the version must follow it."""
    dead_rows: dict[int, list[int]] = field(default_factory=dict)
    """Rows of existing segments the store no longer points at (superseded or deleted)."""
    born_dead: np.ndarray | None = None
    """Rows of the added segment already superseded when it is installed."""


ItemEdit = Callable[[StoreTxn], ItemChanges]
"""Item puts / deletes / reseals, decided inside the transaction against the committed id map.
Must be rerunnable from scratch (a full map aborts the transaction and runs it again)."""


YIELD_EVERY = 256
"""Items a flush's store edit handles between two voluntary GIL releases (time.sleep(0), ~0.3
ms of work): the writer thread, back from an fdatasync, waits for the GIL until the holder
lets go -- up to the 5 ms switch interval, several times per 1,000-row call while a flush ran
its loops (a 100k x 384 ingest: 87-145k rows/s, against 126-186k with a 0.5 ms interval, five
pairs)."""
CARRY_YIELD_EVERY = 1024
"""The same for a merge's carry, whose batched items cost ~1.2 us each (1M bare items): about
the GIL hold of 256 items before it was batched. A sleep(0) costs ~0.1 ms here (a 1M-item
carry spent 0.4 s in them at 256)."""


@dataclass
class FlushItems:
    """A flush: the memtable's items become rows 0.. of the new segment (keys and sealed values
    from ItemValues.prepare, put in key_order); its tombstones delete. The rows they supersede
    die."""
    keys: list[bytes]
    values: list[bytes]
    tombstones: list[str]
    order: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.order = key_order(self.keys)  # before the transaction

    def __call__(self, txn: StoreTxn) -> ItemChanges:
        dead: dict[int, list[int]] = {}
        for start in range(0, len(self.order), YIELD_EVERY):
            block = self.order[start:start + YIELD_EVERY].tolist()
            segments, rows, held = txn.replace_many([self.keys[i] for i in block],
                                                    [self.values[i] for i in block])
            if held.any():
                _add_dead(dead, segments[held], rows[held])
            time.sleep(0)
        for item_id in self.tombstones:
            loc = txn.location(item_id)
            if loc is not None:
                dead.setdefault(loc[0], []).append(loc[1])
                txn.delete_item(item_id)
        return ItemChanges(dead)


def _add_dead(dead: dict[int, list[int]], segments: np.ndarray, rows: np.ndarray) -> None:
    for segment in np.unique(segments).tolist():
        dead.setdefault(segment, []).extend(rows[segments == segment].tolist())


@dataclass
class CarryItems:
    """A merge: row i of segment `new_id` carries the item whose LMDB key (id hash) is
    `keys[i]` from (origin_seg[i], origin_row[i]), the rows taken in key_order. An item still
    stored there is re-pointed (re-sealed); one a flush superseded or deleted meanwhile leaves
    its new row born dead."""
    keys: list[bytes]
    origin_seg: np.ndarray
    origin_row: np.ndarray
    new_id: int | None
    order: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.order = key_order(self.keys)  # before the transaction

    def __call__(self, txn: StoreTxn) -> ItemChanges:
        carried = np.zeros(len(self.keys), bool)
        for start in range(0, len(self.order), CARRY_YIELD_EVERY):
            rows = self.order[start:start + CARRY_YIELD_EVERY]
            carried[rows] = txn.carry_items([self.keys[i] for i in rows.tolist()],
                                            self.origin_seg[rows], self.origin_row[rows],
                                            self.new_id, rows)
            time.sleep(0)
        return ItemChanges(born_dead=~carried)


@dataclass
class VersionEdit:
    """One change of the version. Fields left None keep the current value."""
    add: "SegmentSource | None" = None
    """A built, opened segment (its info with dead=0, its row ids and term index ride on it)."""
    remove: Sequence[int] = ()
    """Segments replaced (a merge's inputs); the caller closes and deletes them after install."""
    dead_rows: dict[int, Sequence[int]] = field(default_factory=dict)
    """Rows of existing segments that die, besides those the items decide."""
    items: ItemEdit | None = None
    checkpoint_lsn: int | None = None
    log_head: int | None = None
    closed_lsn: int | None = None
    next_segment_id: int | None = None
    flushed: "Memtable | None" = None
    """The frozen memtable this edit flushes (core.frozen[0]): popped at the switch."""
    after_commit: str | None = None
    """Failpoint hit right after the commit, before the switch (crash only)."""
    skip_unchanged: bool = False
    """Commit nothing when the edit would only bump the version (a log roll already recorded)."""

    def manifest_after(self, old: Manifest, dead: dict[int, int],
                       added: SegmentInfo | None) -> Manifest:
        """The manifest with this edit applied (`dead`: new dead counts of surviving segments)."""
        gone = set(self.remove)
        segments = [dataclasses.replace(s, dead=dead[s.id]) if s.id in dead else s
                    for s in old.segments if s.id not in gone]
        if added is not None:
            segments.append(added)
        head = old.log_head
        if self.log_head is not None:  # file names only grow: never record an older one
            head = self.log_head if head is None else max(head, self.log_head)
        return dataclasses.replace(
            old, segments=segments, version=old.version + 1, log_head=head,
            checkpoint_lsn=old.checkpoint_lsn if self.checkpoint_lsn is None else self.checkpoint_lsn,
            next_segment_id=max(old.next_segment_id, self.next_segment_id or 0),
            closed_lsn=old.closed_lsn if self.closed_lsn is None else self.closed_lsn)

    def changes(self, old: Manifest) -> bool:
        if self.add is not None or self.remove or self.dead_rows or self.items is not None \
                or self.flushed is not None:
            return True
        new = self.manifest_after(old, {}, None)
        return dataclasses.replace(new, version=old.version) != old


# -- install ------------------------------------------------------------------------------------

@dataclass
class _Planned:
    """What the transaction decided, for the switch (rebuilt when the transaction reruns)."""
    manifest: Manifest | None = None
    dead: dict[int, tuple["SegmentSource", np.ndarray]] = field(default_factory=dict)
    born: np.ndarray | None = None


def install(core: "IndexCore", edit: VersionEdit, *, wait: bool = True) -> Manifest | None:
    """Install `edit`: the one place the version of the index changes. Steps, in this order:

    1. Take core.commit_lock: one store write transaction (and its switch) at a time. With
       wait=False, return None when it is busy. A skip_unchanged edit that changes nothing
       returns the current manifest here, committing nothing.
    2. Failpoint store.commit, then begin ONE LMDB write transaction. No index lock is held:
       upserts and queries go on, readers see the previous snapshot (the long part of a big
       merge, carrying every item to its new row, runs here).
    3. Inside it: the edit's item decisions against the committed id map (puts, deletes,
       reseals); the new dead-row sets of surviving segments (their in-memory persisted sets +
       the rows that died); the removed segments' meta dropped; the added segment's row ids,
       term index and born-dead rows; the new manifest (version + 1). A full map aborts the
       transaction, grows the map and reruns this step from scratch.
    4. Take core.rw's write lock; commit the transaction; failpoint edit.after_commit.
    5. Switch the memory (no I/O, nothing here can fail): (a) surviving segments get their new
       dead rows and manifest entries, (b) removed segments leave core.segments / seg_by_id,
       (c) the flushed memtable leaves core.frozen, (d) the added segment gets its born-dead
       rows, loses rows that newer memtable writes shadow, and is appended, (e) core.manifest
       becomes the new manifest.
    6. Release the write lock. An edit with items (a flush, a merge) then commits one tiny
       transaction that changes nothing (Store.settle): the pages its commit freed become
       reusable by the next one (back-to-back flushes and merges grew data.mdb to 3x its pages
       in use). Then release the commit lock; core.after_install() (writers waiting for room
       re-check).

    A failure before the commit (steps 2-4: a failpoint, an error inside the transaction, a
    failed commit) changes neither the store nor the memory. Returns the new manifest."""
    if not core.commit_lock.acquire(blocking=wait):
        return None
    planned = _Planned()
    try:
        if edit.skip_unchanged and not edit.changes(core.manifest):
            return core.manifest

        def write(txn: StoreTxn) -> None:  # step 3
            planned.__init__()
            changes = edit.items(txn) if edit.items is not None else ItemChanges()
            died: dict[int, list] = {sid: list(rows) for sid, rows in edit.dead_rows.items()}
            for sid, rows in changes.dead_rows.items():
                died.setdefault(sid, []).extend(rows)
            gone = set(edit.remove)
            for sid, rows in died.items():
                source = core.seg_by_id.get(sid)
                if source is None or sid in gone:
                    continue
                persisted = source.persisted.copy()  # only installs change it: we hold the lock
                persisted[rows] = True
                txn.put_meta(_dead_key(sid), np.packbits(persisted).tobytes())
                planned.dead[sid] = (source, persisted)
            for sid in gone:
                for key in (_terms_key(sid), _text_key(sid), _dead_key(sid), _rows_key(sid)):
                    txn.delete_meta(key)
            added = None
            if edit.add is not None:
                sid = edit.add.id
                born = changes.born_dead
                born = np.zeros(edit.add.n_rows, bool) if born is None else born.copy()
                txn.put_meta(_terms_key(sid), edit.add.terms.pack())
                if born.any():
                    txn.put_meta(_dead_key(sid), np.packbits(born).tobytes())
                planned.born = born
                added = dataclasses.replace(edit.add.info, dead=int(np.count_nonzero(born)))
            counts = {sid: int(np.count_nonzero(arr)) for sid, (_s, arr) in planned.dead.items()}
            planned.manifest = edit.manifest_after(core.manifest, counts, added)
            txn.put_meta(MANIFEST_KEY, planned.manifest.pack())

        def switch() -> None:  # steps 4 (after the commit) and 5, under the write lock
            if edit.after_commit is not None:
                failpoints.hit(edit.after_commit)
            manifest = planned.manifest
            entries = {s.id: s for s in manifest.segments}
            for sid, (source, persisted) in planned.dead.items():  # (a)
                source.mark_dead(persisted)
                source.info = entries[sid]
            for sid in edit.remove:  # (b)
                core.remove_segment(sid)
            if edit.flushed is not None:  # (c)
                if not core.frozen or core.frozen[0] is not edit.flushed:
                    raise AssertionError("the flushed memtable is not the oldest frozen one")
                core.frozen.pop(0)
            if edit.add is not None:  # (d)
                source = edit.add
                source.info = entries[source.id]
                if planned.born.any():
                    source.mark_dead(planned.born)
                _shadow_new(source, [*core.frozen, core.memtable])
                core.add_segment(source)
            core.manifest = manifest  # (e)

        core.store.commit(write, guard=core.rw.write, then=switch)
        if edit.items is not None:  # step 6: see Store.settle
            core.store.settle(MANIFEST_KEY)
    finally:
        core.commit_lock.release()
    core.after_install()  # the space account is read again; writers waiting for room re-check
    return planned.manifest


def _shadow_new(source: "SegmentSource", tables: list) -> None:
    """Rows of a freshly installed segment that newer memtable writes already supersede."""
    newer = {item_id for table in tables for item_id in (*table.row_of, *table.tombstones)}
    if not newer:  # the usual case after train(): no id map of the whole segment to build
        return
    for row, item_id in enumerate(source.ids):
        if item_id in newer:
            source.kill(row)
