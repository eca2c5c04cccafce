"""Flush and merge: the two jobs that move data from the log into immutable segments.

Each job only BUILDS: its segment with no lock held (files first: temp folder, fsync, rename,
fsync the parent; then the opened SegmentSource with its row ids and term index), the items'
hashes and seals, and a VersionEdit. version.install then writes the edit in ONE LMDB
transaction -- deciding about each id there, against the committed id map, so a flush and a
merge may build concurrently and still never resurrect or lose an id -- and switches the memory
under the write lock. Superseded files are removed last.
"""
from __future__ import annotations

import logging
import shutil
import time
from typing import TYPE_CHECKING

import numpy as np

from lsmvec.compaction.compactor import BACKGROUND, BuildBudget, Helper
from lsmvec.compaction.filenames import ROW_IDS_FILE, TEXT_INDEX_FILE, temp_segment_dir_name
from lsmvec.compaction.row_gather import concat_rows
from lsmvec.compaction.segment import build_and_open_segment
from lsmvec.wal import failpoints, fsio
from lsmvec.wal.errors import storage_error_from
from lsmvec.disk.config import bare_values
from lsmvec.disk.item_values import ItemValues

from lsmvec.db.row_ids import RowIds
from lsmvec.db.segments import SEGMENTS_DIR, SegmentSource, id_index_of, segment_folder
from lsmvec.db.term_index import TermIndex
from lsmvec.db.text_index import TextIndex
from lsmvec.db.text_search import build_text, merge_text
from lsmvec.db.version import CarryItems, FlushItems, SegmentInfo, VersionEdit, install
from lsmvec.request.options import REORDER_PRECISION

if TYPE_CHECKING:
    from lsmvec.db.core import IndexCore

log = logging.getLogger(__name__)


def build_segment_folder(core: "IndexCore", seg_id: int, vectors: np.ndarray, ids: RowIds | None, *,
                         kind: str = "auto", n_lists: int | None = None,
                         budget: BuildBudget = BACKGROUND, text: TextIndex | None = None,
                         borrow: bool = False):
    """Build a segment under a temporary name and rename it in. Returns (files, Segment).
    ``kind``: "brute" for flushes (no training on the write path), "auto" for merges (a tree
    when large enough, with ``n_lists`` leaves, trained within ``budget``: its threads). A
    trained segment's default search is calibrated to the index's ``target_recall``. ``ids``:
    the rows' ids, sealed into the folder as its ids.bin sidecar (read by a file read at open,
    not through the store's map: 1-3 MB fewer resident store pages at 60k rows; None: none,
    the form of builds before it, whose ids the store holds); ``text``: the rows' full-text
    index, its text.idx sidecar; ``borrow``: the rows never change (a frozen memtable's), so
    an exact segment holds them as they are (segment_build.build_and_open_segment)."""
    root = core.folder / SEGMENTS_DIR
    tmp = root / temp_segment_dir_name(seg_id)
    try:  # every mkdir / write / sync / rename / removal through wal.fsio.FS
        fsio.make_dirs(root)  # the first one: segments/ made and its entry fsynced
        files, segment = build_and_open_segment(
            tmp, vectors, metric=core.config.metric, key=core.cipher.segment_key,
            context=core.cipher.segment_context(seg_id, ""), kind=kind, n_lists=n_lists,
            budget=budget, target_recall=core.config.options.target_recall,
            reorder_precision=REORDER_PRECISION[core.config.options.storage_precision],
            sidecars={**({ROW_IDS_FILE: ids.to_bytes()} if ids is not None else {}),
                      **({TEXT_INDEX_FILE: text.to_bytes()} if text is not None else {})},
            borrow=borrow)
        failpoints.hit("segment.before_rename")
        final = segment_folder(core.folder, seg_id)
        fsio.rename(tmp, final)
        fsio.fsync_dir(root)
        segment.relocate(final)
    except OSError as exc:
        fsio.remove_tree(tmp, ignore_errors=True)
        raise storage_error_from(exc, f"cannot write segment {seg_id}") from None
    except BaseException:
        fsio.remove_tree(tmp, ignore_errors=True)
        raise
    failpoints.hit("segment.after_rename")
    return files, segment


def _failpoint(name: str) -> None:
    try:
        failpoints.hit(name)
    except OSError as exc:
        raise storage_error_from(exc, name) from None


def _new_source(core: "IndexCore", seg_id: int, built, ids: list[str], row_ids: RowIds,
                terms: TermIndex, text: TextIndex | None = None) -> SegmentSource:
    """The built segment as the version will hold it (no dead row yet: install decides)."""
    files, segment = built
    info = SegmentInfo(seg_id, files.n, files.kind, [f.as_list() for f in files.files],
                       files.n_lists or None, 0)
    source = SegmentSource(info, segment, row_ids, np.zeros(len(ids), bool), core.store, terms,
                           id_index_of(ids))
    source.text = text
    return source


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
        text = build_text(metadata, len(ids), core.config.options.metadata_schema.full_text)
        # an item with neither contents nor metadata is stored bare (disk/item_values.py; from
        # format 2 on): its row says so, sealed with its id
        bare = (ItemValues.bare_flags(contents, metadata)
                if bare_values(core.config.format) else None)
        row_ids = RowIds(ids, bare)
        built = (build_segment_folder(core, seg_id, vectors, row_ids, kind="brute", text=text,
                                      borrow=True) if ids else None)
        terms = TermIndex.build(metadata, len(ids), core.config.options.metadata_schema)
        # Hash and seal every item before the transaction: in it, a flush only reads locations
        # and puts.
        keys, values = (core.store.values.prepare(ids, seg_id, contents, metadata, bare)
                        if ids else ([], []))
        source = (_new_source(core, seg_id, built, ids, row_ids, terms, text)
                  if built is not None else None)
        _failpoint("flush.before_commit")
        manifest = install(core, VersionEdit(
            add=source, items=FlushItems(keys, values, tombstones),
            checkpoint_lsn=table.last_lsn, log_head=core.wal.active_first_lsn,
            next_segment_id=core.next_segment_id, flushed=table, after_commit="flush.after_commit"))
        failpoints.hit("flush.before_wal_truncate")
        core.wal.remove_below(manifest.checkpoint_lsn)
        log.info("flushed %d rows and %d deletes into segment %s in %.2fs", len(ids),
                 len(tombstones), seg_id, time.monotonic() - started)
        return True


def merge_segments(core: "IndexCore", seg_ids: list[int] | None, *,
                   n_lists: int | None = None, budget: BuildBudget = BACKGROUND) -> bool:
    """Rewrite the live rows of `seg_ids` (None: every segment at the time the merge lock is
    taken, so a background merge finishing first is included) as one segment (trained when
    large enough, with `n_lists` leaves, within `budget`: one ScaNN training thread for the
    background merger, every usable core for an explicit train() -- BuildBudget.for_caller())."""
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
                ids.extend(src.ids.take(rows))
            origin_seg = np.concatenate([np.full(len(rows), src.id, np.int64)
                                         for src, rows in picked])
            origin_row = np.concatenate([rows for _src, rows in picked]).astype(np.int64)
            parts, offset = [], 0
            for src, rows in picked:  # the term indexes follow their rows into the merged one
                mapping = np.full(src.n_rows, -1, np.int64)
                mapping[rows] = np.arange(offset, offset + len(rows))
                parts.append(src.terms.remap(mapping, len(ids)))
                offset += len(rows)
            terms = TermIndex.merge(parts, len(ids), core.config.options.metadata_schema.patterns)
            text = merge_text(picked, len(ids), core.config.options.metadata_schema.full_text,
                              core.store)
        started = time.monotonic()
        # Outside the lock: a trained segment reads its rows back from its sealed file. Its
        # folder stays: only merges remove segments, and this one holds the merge lock.
        vectors = (concat_rows([(src.segment.vectors, rows) for src, rows in picked],
                               picked[0][0].segment.dim) if ids else None)
        new_id = core.reserve_segment_id() if ids else None
        # a carried item keeps its store value's form: bare rows stay bare
        row_ids = RowIds(ids, np.concatenate([src.ids.bare_of(rows) for src, rows in picked]))
        # The ids' LMDB keys, hashed by an idle helper while the segment builds (on CPU time
        # ScaNN's training leaves): the transaction then only gets and puts.
        keying = Helper(lambda: core.store.values.keys(ids), "lsmvec-merge-keys", idle=True)
        try:
            built = (build_segment_folder(core, new_id, vectors, row_ids, n_lists=n_lists,
                                          budget=budget, text=text) if ids else None)
        finally:
            keying.wait()
        keys = keying.result()
        source = (_new_source(core, new_id, built, ids, row_ids, terms, text)
                  if built is not None else None)
        _failpoint("merge.before_commit")
        # Carrying every row takes seconds for big merges (1M bare items: ~1.2 s; a sealed one
        # is also opened and sealed again): install runs it inside the transaction, outside
        # the write lock; only the commit + switch hold it.
        install(core, VersionEdit(
            add=source, remove=[src.id for src in sources],
            items=CarryItems(keys, origin_seg, origin_row, new_id),
            next_segment_id=core.next_segment_id, after_commit="merge.after_commit"))
        for src in sources:  # queries hold the read lock: none can still be searching them
            src.segment.close()
            failpoints.hit("merge.removing_old")
            shutil.rmtree(segment_folder(core.folder, src.id), ignore_errors=True)
        log.info("merged segments %s (%d rows) into %s in %.2fs", seg_ids, len(ids), new_id,
                 time.monotonic() - started)
        return True
