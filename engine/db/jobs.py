"""Flush and merge: the two jobs that move data from the log into immutable segments.

Each job builds its segment with no lock held (files first: temp folder, fsync, rename, fsync
the parent), then takes the write side of the index lock for the switch: ONE LMDB transaction
(items, dead rows, row ids, manifest) and the in-memory install. Superseded files are removed
last. Decisions about each id are made inside that transaction against the committed id map,
so a flush and a merge may build concurrently and still never resurrect or lose an id.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from typing import TYPE_CHECKING, Iterable

import numpy as np

from lsmvec.compaction.filenames import temp_segment_dir_name
from lsmvec.compaction.row_gather import concat_rows
from lsmvec.compaction.segment import build_and_open_segment
from lsmvec.wal import failpoints, fsio
from lsmvec.wal.errors import storage_error_from

from lsmvec.db.memtable import Memtable
from lsmvec.db.segments import SEGMENTS_DIR, SegmentSource, id_index_of, segment_folder
from lsmvec.disk.store import Manifest, SegmentInfo, StoreTxn
from lsmvec.db.term_index import TermIndex

if TYPE_CHECKING:
    from lsmvec.db.core import IndexCore

log = logging.getLogger(__name__)


def build_segment_folder(core: "IndexCore", seg_id: int, vectors: np.ndarray, **tuning):
    """Build a segment under a temporary name and rename it in. Returns (files, Segment)."""
    root = core.folder / SEGMENTS_DIR
    root.mkdir(exist_ok=True)
    tmp = root / temp_segment_dir_name(seg_id)
    try:
        files, segment = build_and_open_segment(
            tmp, vectors, metric=core.config.metric, key=core.cipher.segment_key,
            context=core.cipher.segment_context(seg_id, ""), **tuning)
        failpoints.hit("segment.before_rename")
        final = segment_folder(core.folder, seg_id)
        os.rename(tmp, final)
        fsio.fsync_dir(root)
        segment.relocate(final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise storage_error_from(exc, f"cannot write segment {seg_id}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    failpoints.hit("segment.after_rename")
    return files, segment


def _failpoint(name: str) -> None:
    try:
        failpoints.hit(name)
    except OSError as exc:
        raise storage_error_from(exc, name) from None


def _info(seg_id: int, files, dead: int = 0) -> SegmentInfo:
    return SegmentInfo(seg_id, files.n, files.kind,
                       [[f.name, f.size, f.sha256] for f in files.files], files.n_lists or None,
                       dead)


def _shadow_new(source: SegmentSource, tables: Iterable[Memtable]) -> None:
    """Rows of a freshly installed segment that newer memtable writes already supersede."""
    newer = {item_id for table in tables for item_id in (*table.row_of, *table.tombstones)}
    if not newer:  # the usual case after train(): no id map of the whole segment to build
        return
    for row, item_id in enumerate(source.ids):
        if item_id in newer:
            source.kill(row)


def _mark_dead(core: "IndexCore", txn: StoreTxn, touched: dict[int, list[int]],
               new_persisted: dict[int, np.ndarray]) -> None:
    for seg_id, rows in touched.items():
        source = core.seg_by_id.get(seg_id)
        if source is None:
            continue
        arr = source.persisted.copy()
        arr[rows] = True
        txn.put_dead(seg_id, arr)
        new_persisted[seg_id] = arr


def flush_oldest(core: "IndexCore") -> bool:
    """Write the oldest frozen memtable as a segment and advance the WAL checkpoint."""
    with core.flush_lock:
        with core.rw.read():
            if not core.frozen:
                return False
            table = core.frozen[0]
            ids, vectors, contents, metadata = table.live_arrays()
            tombstones = list(table.tombstones)
        started = time.monotonic()
        core.wal.roll()  # the frozen table's records now end a file the checkpoint can free
        seg_id = core.reserve_segment_id() if ids else None
        # Flushes are written exact (no training: seconds saved on the write path); the
        # merger trains segments as they grow.
        built = build_segment_folder(core, seg_id, vectors, kind="brute") if ids else None
        terms = TermIndex.build(metadata, len(ids))
        # Hash and seal every item before taking the write lock: under it, the transaction
        # only reads locations and puts (upserts and queries wait for less than a third as long).
        keys, values = core.store.prepare_items(ids, seg_id, contents, metadata) if ids else ([], [])
        id_index = id_index_of(ids)
        _failpoint("flush.before_commit")
        new_persisted: dict[int, np.ndarray] = {}
        manifest: Manifest | None = None

        def edit(txn: StoreTxn) -> None:
            nonlocal manifest
            new_persisted.clear()
            touched: dict[int, list[int]] = {}
            for item_id, key, value in zip(ids, keys, values):
                loc = txn.location(item_id, key)
                if loc is not None:
                    touched.setdefault(loc[0], []).append(loc[1])
                txn.put_prepared(key, value)
            for item_id in tombstones:
                loc = txn.location(item_id)
                if loc is not None:
                    touched.setdefault(loc[0], []).append(loc[1])
                    txn.delete_item(item_id)
            _mark_dead(core, txn, touched, new_persisted)
            old = core.manifest
            segments = [dataclasses.replace(s, dead=int(np.count_nonzero(new_persisted[s.id])))
                        if s.id in new_persisted else s for s in old.segments]
            if built is not None:
                txn.put_row_ids(seg_id, ids)
                txn.put_terms(seg_id, terms)
                segments.append(_info(seg_id, built[0]))
            manifest = dataclasses.replace(old, segments=segments, checkpoint_lsn=table.last_lsn,
                                           next_segment_id=core.next_segment_id,
                                           version=old.version + 1,
                                           log_head=core.wal.active_first_lsn)
            txn.put_manifest(manifest)

        def install() -> None:  # under the write lock, right after the commit
            failpoints.hit("flush.after_commit")
            for sid, arr in new_persisted.items():
                core.seg_by_id[sid].mark_dead(arr)
            if built is not None:
                src = SegmentSource(manifest.segments[-1], built[1], ids, np.zeros(len(ids), bool),
                                    core.store, terms, id_index)
                _shadow_new(src, [*core.frozen[1:], core.memtable])
                core.add_segment(src)
            core.frozen.pop(0)
            core.manifest = manifest
            core.release_writers()

        # The transaction runs outside the write lock (upserts and queries go on); only its
        # commit and the switch of the in-memory state are atomic for readers.
        with core.commit_lock:
            core.store.commit(edit, guard=core.rw.write, then=install)
        failpoints.hit("flush.before_wal_truncate")
        core.wal.remove_below(manifest.checkpoint_lsn)
        log.info("flushed %d rows and %d deletes into segment %s in %.2fs", len(ids),
                 len(tombstones), seg_id, time.monotonic() - started)
        return True


def merge_segments(core: "IndexCore", seg_ids: list[int] | None, **tuning) -> bool:
    """Rewrite the live rows of `seg_ids` (None: every segment at the time the merge lock is
    taken, so a background merge finishing first is included) as one segment (trained when
    large enough)."""
    with core.merge_lock:
        with core.rw.read():
            if seg_ids is None:
                seg_ids = [s.id for s in core.segments]
            sources = [core.seg_by_id[s] for s in seg_ids if s in core.seg_by_id]
            if not sources:
                return False
            picked = [(src, src.live_rows()) for src in sources]
            # Vectorised, no per-row tuples: 100k fresh tracked objects would set off a full
            # garbage collection that holds the GIL (a loop stall) for tens of milliseconds.
            ids: list[str] = []
            for src, rows in picked:
                ids.extend(np.asarray(src.ids, object)[rows].tolist())
            origin_seg = np.concatenate([np.full(len(rows), src.id, np.int64)
                                         for src, rows in picked])
            origin_row = np.concatenate([rows for _src, rows in picked]).astype(np.int64)
            parts, offset = [], 0
            for src, rows in picked:  # the term indexes follow their rows into the merged one
                mapping = np.full(src.n_rows, -1, np.int64)
                mapping[rows] = np.arange(offset, offset + len(rows))
                parts.append(src.terms.remap(mapping, len(ids)))
                offset += len(rows)
            terms = TermIndex.merge(parts, len(ids))
        started = time.monotonic()
        # Outside the lock: a trained segment reads its rows back from its sealed file. Its
        # folder stays: only merges remove segments, and this one holds the merge lock.
        vectors = (concat_rows([(src.segment.vectors, rows) for src, rows in picked],
                               picked[0][0].segment.dim) if ids else None)
        new_id = core.reserve_segment_id() if ids else None
        built = build_segment_folder(core, new_id, vectors, **tuning) if ids else None
        id_index = id_index_of(ids)
        _failpoint("merge.before_commit")
        persisted = np.zeros(len(ids), bool)
        manifest: Manifest | None = None

        def edit(txn: StoreTxn) -> None:
            nonlocal manifest
            persisted[:] = False
            for row, (item_id, seg, old_row) in enumerate(
                    zip(ids, origin_seg.tolist(), origin_row.tolist())):
                if txn.location(item_id) == (seg, old_row):
                    txn.reseal_item(item_id, new_id, row)
                else:  # superseded or deleted by a flush that committed meanwhile
                    persisted[row] = True
            gone = {src.id for src in sources}
            for sid in gone:
                txn.drop_segment(sid)
            segments = [s for s in core.manifest.segments if s.id not in gone]
            if built is not None:
                txn.put_row_ids(new_id, ids)
                txn.put_terms(new_id, terms)
                if persisted.any():
                    txn.put_dead(new_id, persisted)
                segments.append(_info(new_id, built[0], int(np.count_nonzero(persisted))))
            old = core.manifest
            manifest = dataclasses.replace(old, segments=segments,
                                           next_segment_id=core.next_segment_id,
                                           version=old.version + 1)
            txn.put_manifest(manifest)

        def install() -> None:  # under the write lock, right after the commit
            failpoints.hit("merge.after_commit")
            for src in sources:
                core.remove_segment(src.id)
            if built is not None:
                src = SegmentSource(manifest.segments[-1], built[1], ids, persisted.copy(), core.store,
                                    terms, id_index)
                _shadow_new(src, [*core.frozen, core.memtable])
                core.add_segment(src)
            core.manifest = manifest

        # As in a flush: re-sealing every carried row takes seconds for big merges; it runs
        # outside the write lock, and only the commit + switch hold it.
        with core.commit_lock:
            core.store.commit(edit, guard=core.rw.write, then=install)
        for src in sources:  # queries hold the read lock: none can still be searching them
            src.segment.close()
            failpoints.hit("merge.removing_old")
            shutil.rmtree(segment_folder(core.folder, src.id), ignore_errors=True)
        log.info("merged segments %s (%d rows) into %s in %.2fs", seg_ids, len(ids), new_id,
                 time.monotonic() - started)
        return True

