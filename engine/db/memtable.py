"""The memtable: the newest writes, in memory, searchable exactly.

Rows are append-only in contiguous float32 arrays that grow geometrically; an overwrite appends a
new row and marks the old one dead, a delete marks the row dead and leaves a tombstone so the id
stays hidden in older sources (frozen memtables, segments) until a flush makes that permanent.
Callers serialise mutation (the index's write lock); readers run under the read side of it.
"""
from __future__ import annotations

from typing import Iterator

import msgpack
import numpy as np

from lsmvec.compaction.exact import search_exact
from lsmvec.compaction.row_gather import gather_rows

_MIN_CAPACITY = 256
TOMBSTONE = -1


class Memtable:
    """Mutable until frozen; a frozen memtable is only read, then flushed into a segment."""

    def __init__(self, dimension: int | None, metric: str, first_lsn: int = 0,
                 expected_bytes: int = 0):
        self.metric = metric
        self.dimension = dimension
        self.first_lsn = first_lsn
        self.last_lsn = first_lsn - 1 if first_lsn else 0
        self._vectors = np.zeros((0, dimension or 0), np.float32)
        self._sqnorms = np.zeros(0, np.float32)
        self._dead = np.zeros(0, bool)
        self.n_rows = 0
        self.ids: list[str] | tuple[str, ...] = []
        self.contents: list[bytes | None] | tuple = []
        self.metadata: list[dict | None] | tuple = []
        self.row_of: dict[str, int] = {}
        self.tombstones: set[str] = set()
        self.frozen = False
        self.payload_bytes = 0
        # Reserve what the table will hold before it is frozen: np.empty touches no page, and
        # growth by copying (a full copy per doubling) disappears from the write path.
        self._expected_bytes = expected_bytes
        self._expected_rows = expected_bytes // (4 * dimension) if dimension else 0

    # -- writes -------------------------------------------------------------------------------

    def _reserve(self, extra: int) -> None:
        need = self.n_rows + extra
        cap = self._vectors.shape[0]
        if need <= cap:
            return
        new_cap = max(_MIN_CAPACITY, cap * 2, need, self._expected_rows + need if cap == 0 else 0)
        vecs = np.empty((new_cap, self.dimension), np.float32)
        vecs[:self.n_rows] = self._vectors[:self.n_rows]
        norms = np.empty(new_cap, np.float32)
        norms[:self.n_rows] = self._sqnorms[:self.n_rows]
        dead = np.ones(new_cap, bool)
        dead[:self.n_rows] = self._dead[:self.n_rows]
        self._vectors, self._sqnorms, self._dead = vecs, norms, dead

    def upsert(self, lsn: int, ids: list[str], vectors: np.ndarray, contents: list,
               metadata: list) -> None:
        """Append a batch (ids unique within it); earlier rows of the same ids die."""
        assert not self.frozen, "a frozen memtable is immutable"
        if self.dimension is None:
            self.dimension = int(vectors.shape[1])
            self._vectors = np.zeros((0, self.dimension), np.float32)
            self._expected_rows = self._expected_bytes // (4 * self.dimension)
        n = len(ids)
        self._reserve(n)
        start = self.n_rows
        self._vectors[start:start + n] = vectors
        if self.metric != "cosine":
            self._sqnorms[start:start + n] = np.einsum("nd,nd->n", vectors, vectors)
        self._dead[start:start + n] = False
        row_of, tomb = self.row_of, self.tombstones
        if row_of:
            for item_id in row_of.keys() & set(ids):  # older rows of these ids die
                self._dead[row_of[item_id]] = True
        row_of.update(zip(ids, range(start, start + n)))
        if tomb:
            tomb.difference_update(ids)
        self.ids.extend(ids)
        self.contents.extend(contents)
        self.metadata.extend(metadata)
        self.n_rows = start + n
        self.payload_bytes += vectors.nbytes + sum(len(c) for c in contents if c) + 64 * n
        self.last_lsn = lsn

    def delete(self, lsn: int, ids: list[str]) -> None:
        """Kill the ids' rows here and leave tombstones that hide older versions elsewhere."""
        assert not self.frozen, "a frozen memtable is immutable"
        for item_id in ids:
            row = self.row_of.pop(item_id, None)
            if row is not None:
                self._dead[row] = True
            self.tombstones.add(item_id)
        self.payload_bytes += 64 * len(ids)
        self.last_lsn = lsn

    def seal_lists(self) -> None:
        """Freeze: ids, contents and metadata become tuples, which the garbage collector stops
        walking once they hold only untracked objects (str ids, bytes / str contents)."""
        self.ids = tuple(self.ids)
        self.contents = tuple(self.contents)
        self.metadata = tuple(self.metadata)

    def kill_many(self, ids: set[str]) -> None:
        """Hide this memtable's versions of `ids` (a newer memtable now owns them): a set
        intersection, not a loop over `ids`."""
        row_of = self.row_of
        for item_id in ids & row_of.keys():
            self._dead[row_of[item_id]] = True

    # -- reads --------------------------------------------------------------------------------

    def lookup(self, item_id: str) -> int | None:
        """Row of the live version, TOMBSTONE when deleted here, None when unknown here."""
        row = self.row_of.get(item_id)
        if row is not None:
            return row
        return TOMBSTONE if item_id in self.tombstones else None

    def vector(self, row: int) -> np.ndarray:
        return self._vectors[row]

    @property
    def n_live(self) -> int:
        return len(self.row_of)

    def live_items(self) -> Iterator[tuple[str, int]]:
        return iter(self.row_of.items())

    def search(self, queries: np.ndarray, k: int, *, flt=None, n_probes: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k live rows (matching the compiled filter `flt`, if any):
        (rows (q, k'), distances (q, k')). n_probes is meaningless here: always exact."""
        n = self.n_rows
        if n == 0 or not self.row_of:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        dead = self._dead[:n]
        if flt is not None and not flt.is_match_all:
            dead = dead | ~flt.match_many(self.metadata[:n])
        return search_exact(self._vectors[:n], queries, k, self.metric,
                            sqnorms=self._sqnorms[:n] if self.metric != "cosine" else None,
                            dead=dead)

    def hit(self, row: int, dist: float, include: tuple[str, ...]) -> dict:
        """One query result for `row`, with the fields asked for."""
        hit: dict = {"id": self.ids[row]}
        for field in include:
            if field == "distance":
                hit["distance"] = dist
            elif field == "metadata":
                meta = self.metadata[row]
                # A private copy: a caller mutating a result must not change the index.
                hit["metadata"] = msgpack.unpackb(msgpack.packb(meta)) if meta else {}
            elif field == "contents":
                hit["contents"] = self.contents[row]
            elif field == "vector":
                hit["vector"] = self._vectors[row].tolist()
        return hit

    def live_arrays(self) -> tuple[list[str], np.ndarray, list, list]:
        """This table's latest version of each id, in row order (what a flush writes): ids,
        vectors, contents, metadata. Rows a newer memtable shadows are included: the newer
        write supersedes them when it is flushed in turn."""
        rows = np.fromiter(sorted(self.row_of.values()), np.int64, len(self.row_of))
        ids = [self.ids[r] for r in rows]
        return (ids, gather_rows(self._vectors, rows), [self.contents[r] for r in rows],
                [self.metadata[r] for r in rows])
