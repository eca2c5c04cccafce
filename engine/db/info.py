"""What an open index reports about itself: stats, training state, verify (split from core)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from lsmvec.compaction.scann_params import KIND_TREE_AH


class CoreInfo:
    """Mixed into IndexCore: read-only reports over its state."""

    def stats(self) -> dict[str, Any]:
        with self.read_lock():
            return {
                "vectors": self._live,
                "memtable_rows": self.memtable.n_rows,
                "memtable_live": self.memtable.n_live,
                "memtable_bytes": self.memtable.payload_bytes,
                "frozen_memtables": len(self.frozen),
                "tombstones": len(self.memtable.tombstones) + sum(len(t.tombstones) for t in self.frozen),
                "segments": [{"id": s.id, "rows": s.n_rows, "kind": s.info.kind,
                              "n_lists": s.info.n_lists,
                              "dead_rows": int(np.count_nonzero(s.persisted))} for s in self.segments],
                "checkpoint_lsn": self.manifest.checkpoint_lsn,
                "last_lsn": self.wal.next_lsn - 1,
                "wal_bytes": self.wal.bytes_on_disk,
                "wal_files": self.wal.file_count,
                "disk_bytes": _folder_bytes(self.folder),
                "training_state": self.training_state(),
                "background_error": repr(self._flusher.error or self._merger.error)
                if (self._flusher.error or self._merger.error) else None,
            }

    def verify(self) -> dict[str, Any]:
        """Check every checksum and tag; report (never raise) what is damaged."""
        from lsmvec.db.verify import verify_index
        with self.flush_lock, self.merge_lock:  # no segment switch while it cross-checks
            return verify_index(self)

    def n_lists(self) -> int | None:
        trained = [s.info.n_lists for s in self.segments if s.info.kind == KIND_TREE_AH]
        return max(trained) if trained else None

    def training_state(self) -> str:
        """"trained": everything sits in segments that are ScaNN trees, or in one segment small
        enough that exact search is the better index; "training" during train()."""
        if self._training:
            return "training"
        if self.frozen or self.memtable.n_rows or self.memtable.tombstones or not self.segments:
            return "untrained"
        if all(s.info.kind == KIND_TREE_AH for s in self.segments) or len(self.segments) == 1:
            return "trained"
        return "untrained"



def _folder_bytes(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                continue
    return total
