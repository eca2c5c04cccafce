"""The memtable: the newest writes, in memory, searchable exactly.

Rows are append-only in contiguous float32 arrays that grow geometrically; an overwrite appends a
new row and marks the old one dead, a delete marks the row dead and leaves a tombstone so the id
stays hidden in older sources (frozen memtables, segments) until a flush makes that permanent.
Callers serialise mutation (the index's write lock); readers run under the read side of it.

Staging: `stage(vectors, ids)` copies a batch's rows past the ones readers see and looks its
ids up, before its log record is durable (the write queue's stager runs it while the leader
seals, writes and syncs the record); the upsert that applies the record then only publishes
them. One thread stages and applies at a time
(the write queue's leader and its stager), so rows past n_rows belong to it; a reader never
looks past n_rows. A staged token that no longer fits (the table was frozen, another upsert
took the rows) is ignored and the upsert copies again.
"""
from __future__ import annotations

from typing import Iterator

import msgpack
import numpy as np

from lsmvec.compaction.exact import search_exact
from lsmvec.compaction.row_gather import fresh_rows, gather_rows

_MIN_CAPACITY = 256
TOMBSTONE = -1


class Staged:
    """What stage() did for one batch: its rows (start, n) copied under generation `gen`; the
    batch's ids this table already held (`older`) while it had seen `mutations` writes; and
    {id: row} of the batch (`rows`), which row_of takes in one dict update."""

    __slots__ = ("table", "gen", "start", "n", "mutations", "older", "rows")

    def __init__(self, table: "Memtable", gen: int, start: int, n: int, mutations: int,
                 older: set[str] | None, rows: dict[str, int] | None):
        self.table, self.gen, self.start, self.n = table, gen, start, n
        self.mutations, self.older, self.rows = mutations, older, rows


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
        self._staged_rows = 0  # rows copied past n_rows by stage(), not yet published
        self._stage_gen = 0  # bumped when an upsert overwrites staged rows: their tokens die
        self._mutations = 0  # upserts + deletes applied: a staged `older` set is current while equal
        # Reserve what the table will hold before it is frozen: np.empty touches no page, and
        # growth by copying (a full copy per doubling) disappears from the write path.
        self._expected_bytes = expected_bytes
        self._expected_rows = expected_bytes // (4 * dimension) if dimension else 0

    # -- writes -------------------------------------------------------------------------------

    def _reserve(self, extra: int) -> None:
        """Room for `extra` rows past n_rows (staged rows count as used: they are kept)."""
        need = self.n_rows + extra
        cap = self._vectors.shape[0]
        if need <= cap:
            return
        used = self.n_rows + self._staged_rows
        new_cap = max(_MIN_CAPACITY, cap * 2, need, self._expected_rows + need if cap == 0 else 0)
        # plain pages (row_gather.fresh_rows): with NumPy's huge-page advice, 100k x 384 durable
        # ingest ran at 107k rows/s against 162k (median of 8, one process, alternating)
        vecs = fresh_rows(new_cap, self.dimension)
        vecs[:used] = self._vectors[:used]
        norms = np.empty(new_cap, np.float32)
        norms[:used] = self._sqnorms[:used]
        dead = np.ones(new_cap, bool)
        dead[:self.n_rows] = self._dead[:self.n_rows]
        self._vectors, self._sqnorms, self._dead = vecs, norms, dead

    def stage(self, vectors: np.ndarray, ids: list[str] | None = None) -> Staged | None:
        """Copy `vectors` into the rows after n_rows (and after rows staged before), which no
        reader sees; with `ids`, also look up which of them this table holds and build their
        row map (per 1000 ids against a 42k-id table here: 0.13 ms, a lookup that spares the
        apply two of them -- its own and IndexCore._shadow's -- and 0.06 ms). Returns the token
        `upsert(..., staged=token)` publishes them with, or None when this table cannot take
        them now. Reads row_of without a lock: only the caller's own applies change it."""
        if self.frozen or self.dimension is None or vectors.shape[1] != self.dimension:
            return None
        n = len(vectors)
        self._reserve(self._staged_rows + n)
        start = self.n_rows + self._staged_rows
        self._vectors[start:start + n] = vectors
        if self.metric != "cosine":
            self._sqnorms[start:start + n] = np.einsum("nd,nd->n", vectors, vectors)
        self._staged_rows += n
        mutations = self._mutations  # read before row_of: a later apply makes `older` stale
        if ids is None:
            return Staged(self, self._stage_gen, start, n, mutations, None, None)
        older = self.row_of.keys() & ids
        # update(dict) into row_of: 95 us per 1000 new ids, update(zip(...)): 120-200 us
        rows = dict(zip(ids, range(start, start + n)))
        return Staged(self, self._stage_gen, start, n, mutations, older, rows)

    def staged_older(self, staged: Staged | None) -> set[str] | None:
        """The ids of the staged batch this table holds, if `staged` is this table's and no
        write has changed the table since it was staged; else None (look them up)."""
        if staged is None or staged.table is not self or staged.mutations != self._mutations:
            return None
        return staged.older

    def upsert(self, lsn: int, ids: list[str], vectors: np.ndarray, contents: list,
               metadata: list, *, staged: Staged | None = None,
               older: set[str] | None = None) -> None:
        """Append a batch (ids unique within it); earlier rows of the same ids die. `staged`:
        stage()'s token for these vectors (used when it still fits, else they are copied
        again); `older`: the ids of the batch this table holds now, when the caller knows them
        (staged_older), saving a pass over row_of."""
        assert not self.frozen, "a frozen memtable is immutable"
        if self.dimension is None:
            self.dimension = int(vectors.shape[1])
            self._vectors = np.zeros((0, self.dimension), np.float32)
            self._expected_rows = self._expected_bytes // (4 * self.dimension)
        n = len(ids)
        start = self.n_rows
        new_rows: dict[str, int] | None = None
        if (staged is not None and staged.table is self and staged.gen == self._stage_gen
                and staged.start == start and staged.n == n):
            self._staged_rows -= n  # the rows are in place: publish them
            new_rows = staged.rows
        else:
            self._reserve(n)
            self._vectors[start:start + n] = vectors
            if self.metric != "cosine":
                self._sqnorms[start:start + n] = np.einsum("nd,nd->n", vectors, vectors)
            if self._staged_rows:  # overwritten: every outstanding token dies
                self._staged_rows = 0
                self._stage_gen += 1
        self._dead[start:start + n] = False
        row_of, tomb = self.row_of, self.tombstones
        if row_of:
            if older is None:
                older = row_of.keys() & set(ids)
            for item_id in older:  # older rows of these ids die
                self._dead[row_of[item_id]] = True
        row_of.update(new_rows if new_rows is not None else zip(ids, range(start, start + n)))
        if tomb:
            tomb.difference_update(ids)
        self.ids.extend(ids)
        self.contents.extend(contents)
        self.metadata.extend(metadata)
        self.n_rows = start + n
        self._mutations += 1
        content_bytes = sum(map(len, filter(None, contents))) if any(contents) else 0
        self.payload_bytes += vectors.nbytes + content_bytes + 64 * n
        self.last_lsn = lsn

    def delete(self, lsn: int, ids: list[str]) -> None:
        """Kill the ids' rows here and leave tombstones that hide older versions elsewhere."""
        assert not self.frozen, "a frozen memtable is immutable"
        self._mutations += 1
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

    def dead_flags(self) -> np.ndarray:
        """Per row: whether it is dead (deleted, or shadowed by a newer version): a read-only
        view that writers under the write lock keep updating."""
        view = self._dead[:self.n_rows]
        view.flags.writeable = False
        return view

    def live_rows(self) -> np.ndarray:
        """Rows of the ids this table holds live (not shadowed by a newer table's version)."""
        rows = np.fromiter(self.row_of.values(), np.int64, len(self.row_of))
        return rows[~self._dead[rows]]

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
        n = len(self.row_of)
        if n == self.n_rows:  # every row live (a bulk load): they are rows 0..n-1, in order
            # A read-only view, not a copy: published rows are never written again, and a
            # gather of a 64 MB table into fresh pages took 0.05-0.27 s of the flush here.
            vectors = self._vectors[:n].view()
            vectors.flags.writeable = False
            return list(self.ids[:n]), vectors, list(self.contents[:n]), list(self.metadata[:n])
        rows = np.fromiter(sorted(self.row_of.values()), np.int64, n)
        ids = [self.ids[r] for r in rows]
        return (ids, gather_rows(self._vectors, rows), [self.contents[r] for r in rows],
                [self.metadata[r] for r in rows])
