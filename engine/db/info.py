"""What an open index reports about itself: stats, training state, verify, n_lists.

Plain functions over an IndexCore's public state (IndexCore exposes them as its methods of the
same names, for the Index face).
"""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from lsmvec.compaction.scann_params import KIND_TREE_AH
from lsmvec.db.verify import verify_index

if TYPE_CHECKING:
    from lsmvec.db.core import IndexCore

__all__ = ["stats", "verify", "n_lists", "training_state", "folder_bytes"]


def stats(core: "IndexCore") -> dict[str, Any]:
    disk_bytes = folder_bytes(core.folder)  # a directory walk: not under the lock writers wait on
    with core.read_lock():
        error = core.background_error
        return {
            "vectors": core.live_count,
            "memtable_rows": core.memtable.n_rows,
            "memtable_live": core.memtable.n_live,
            "memtable_bytes": core.memtable.payload_bytes,
            "frozen_memtables": len(core.frozen),
            "tombstones": len(core.memtable.tombstones) + sum(len(t.tombstones) for t in core.frozen),
            "segments": [_segment_stats(s) for s in core.segments],
            "checkpoint_lsn": core.manifest.checkpoint_lsn,
            "last_lsn": core.wal.next_lsn - 1,
            "wal_bytes": core.wal.bytes_on_disk,
            "wal_files": core.wal.file_count,
            "disk_bytes": disk_bytes,
            "training_state": training_state(core),
            "background_error": repr(error) if error else None,
            "write_pressure": core.maintenance.report(),
            "storage_precision": core.config.options.storage_precision,
        }


def _segment_stats(source: Any) -> dict[str, Any]:
    """One segment's entry; a trained one adds its calibrated default search (leaves searched,
    reorder depth and the recall@10 measured at build time; None if it was not calibrated); an
    exact one that was trained and then stored exact adds why ("fallback", calibrate.py)."""
    entry = {"id": source.id, "rows": source.n_rows, "kind": source.info.kind,
             "n_lists": source.info.n_lists,
             "dead_rows": int(np.count_nonzero(source.persisted))}
    if source.info.kind == KIND_TREE_AH:
        params = source.segment.params
        recall = params.calibrated_recall
        entry.update(leaves_to_search=params.leaves_to_search, reorder=params.reorder,
                     reorder_precision=params.reorder_precision,
                     calibrated_recall=None if math.isnan(recall) else recall)
    elif source.segment.params.fallback:
        entry["fallback"] = source.segment.params.fallback
    return entry


def verify(core: "IndexCore") -> dict[str, Any]:
    """Check every checksum and tag; report (never raise) what is damaged."""
    with core.flush_lock, core.merge_lock:  # no segment switch while it cross-checks
        return verify_index(core)


def n_lists(core: "IndexCore") -> int | None:
    trained = [s.info.n_lists for s in core.segments if s.info.kind == KIND_TREE_AH]
    return max(trained) if trained else None


def training_state(core: "IndexCore") -> str:
    """"trained": everything sits in segments that are ScaNN trees, or in one segment small
    enough that exact search is the better index; "training" during train()."""
    if core.training:
        return "training"
    if core.frozen or core.memtable.n_rows or core.memtable.tombstones or not core.segments:
        return "untrained"
    if all(s.info.kind == KIND_TREE_AH for s in core.segments) or len(core.segments) == 1:
        return "trained"
    return "untrained"


def folder_bytes(folder: str | os.PathLike[str]) -> int:
    """Bytes of the files under `folder` (0 when it does not exist): stats()["disk_bytes"],
    and the tools' disk figures. Links are not followed: a build's scratch folder inside the
    index links to memory files (scann_assets), RAM that the disk figure must not count. A
    file removed during the walk (a merge's) is not counted."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total
