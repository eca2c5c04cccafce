"""A live segment as the engine sees it: the ScaNN/brute Segment, its row -> id map, and which
rows are dead.

Two dead sets: `persisted` is what LMDB says (rows superseded or deleted by flushed writes);
`dead` adds rows shadowed by newer writes still in memtables. Only `persisted` is ever written
back: a memtable write may still be lost (durability="os" and a power cut), and then its
shadowing must not have outlived it.
"""
from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from lsmvec.compaction.filenames import (ROW_IDS_FILE, TEXT_INDEX_FILE, parse_segment_dir_name,
                                         segment_dir_name)
from lsmvec.compaction.exact import search_exact
from lsmvec.compaction.segment import FileEntry, Segment
from lsmvec.compaction.segment_files import read_sidecar

from lsmvec.disk.filenames import SEGMENTS_DIR
from lsmvec.errors import CorruptionError
from lsmvec.disk.item_values import ItemValues
from lsmvec.disk.store import Store
from lsmvec.db.item_cache import ItemCache, key as cache_key
from lsmvec.db.term_index import TermIndex
from lsmvec.db.text_index import TextIndex
from lsmvec.db.filter_masks import segment_mask
from lsmvec.db.row_ids import RowIds
from lsmvec.db.version import SegmentInfo, read_dead, read_row_ids, read_terms, read_text

# Rows asked of a segment per round when a filter rejects most of them.
_FILTER_FETCH_FACTOR = 4
# A filter leaving at most this many rows (or 1/_PREFILTER_SHARE of the segment) is answered by
# exact search over those rows: cheaper than asking ScaNN for rows it would mostly discard,
# and exact.
_PREFILTER_MIN_ROWS = 4096
_PREFILTER_SHARE = 0.15
# Gathered vectors of a plan's rows are cached per segment (a few plans, bounded bytes).
_SUBMATRIX_MAX_BYTES = 64 << 20
_SUBMATRIX_CACHE = 8
# A trained segment keeps no rows (ScaNN holds its own copy): gathering a plan's rows decrypts
# every 1 MiB chunk holding one (~0.35 ms each). Up to this many, the exact path gathers them;
# more (a 10% filter touches every chunk: 88 of them, ~100 ms, at 60k x 384), and the plan is
# answered like a wide one, by ScaNN with the other rows excluded (60k MiniLM, a 10% filter:
# 1.8 ms, against 0.44 ms exact over cached rows) -- until the plan is asked for again and
# the cache has room, or it has been asked for more often than the entry it would evict (so
# plans cycling through more entries than the cache holds keep most of them cached instead
# of decrypting at every query: 45 ms a query before).
_GATHER_MAX_CHUNKS = 16
_ASKS_KEPT = 256


def id_index_of(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(sorted in-process string hashes of `ids`, the row of each): SegmentSource.id_index."""
    hashes = np.fromiter(map(hash, ids), np.int64, len(ids))
    order = np.argsort(hashes, kind="stable")
    return hashes[order], order


class SegmentSource:
    def __init__(self, info: SegmentInfo, segment: Segment, ids: Sequence[str], persisted: np.ndarray,
                 store: Store, terms: TermIndex | None,
                 id_index: tuple[np.ndarray, np.ndarray] | None = None):
        """`terms` None: read from `store` at first use (the terms property)."""
        self.info = info
        self.id: int = info.id  # a plain attribute: read for every hit hydrated
        self._terms = terms
        self._terms_lock = threading.Lock()
        self.text: TextIndex | None = None  # full-text index (db/text_index.py), if any
        self.segment = segment
        # Packed (row_ids.py: ~14 bytes a row, not ~65 as str objects) and invisible to the
        # garbage collector: a list of a million ids would be walked by every full collection
        # (a GIL pause that grows with the index: 11 ms at 100k rows).
        self.ids: RowIds = ids if isinstance(ids, RowIds) else RowIds(ids)
        self.persisted = persisted
        self.n_dead = int(np.count_nonzero(persisted))  # kept up to date: no count per query
        # the dead rows in memory: persisted's own array until a row dies (copied then), so a
        # segment with none dead holds one mask, not two (60 KB at 60k rows)
        self.dead = persisted.copy() if self.n_dead else persisted
        self.any_dead = self.n_dead > 0
        self.store = store
        # decrypted store values of this segment's rows (set by IndexCore.add_segment)
        self.cache: ItemCache | None = None
        self._subs: dict[tuple, tuple] = {}
        self._asks: dict[tuple, int] = {}  # plan -> how often its rows were asked for
        self._spec_masks: dict[tuple, np.ndarray | None] = {}
        self._by_hash = id_index

    def for_view(self, info: SegmentInfo, persisted: np.ndarray, store: Store) -> "SegmentSource":
        """This segment as a later version of the index sees it (a reader's next view): the
        same immutable rows, ids, term and text indexes and searcher; that version's dead rows
        and store."""
        source = SegmentSource(info, self.segment, self.ids, persisted, store, self._terms,
                               self._by_hash)
        source.text = self.text
        return source

    @property
    def n_rows(self) -> int:
        return self.info.rows

    @property
    def terms(self) -> TermIndex:
        """The segment's term index (db/term_index.py), read from the store at its first use:
        an index never filtered never holds it. MiniLM 60k with ~80 bytes of metadata a row
        (unique titles and numbers: 120k terms): 5 MB packed, plus the ~9 MB of store pages
        it is read from -- a tenth of the trained index's resident memory. A segment's terms
        never change while it lives, and a merge reads them before it retires the segment
        (jobs.py remaps them), so the store still holds them whenever they are first asked."""
        terms = self._terms
        if terms is None:
            with self._terms_lock:
                terms = self._terms
                if terms is None:
                    terms = self._terms = read_terms(self.store, self.id, self.info.rows)
        return terms

    def kill(self, row: int) -> None:
        if not self.dead[row]:
            if self.dead is self.persisted:
                self.dead = self.dead.copy()
            self.dead[row] = True
            self.n_dead += 1
            self.any_dead = True
            if self.cache is not None:
                self.cache.discard(self.id, (row,))

    def mark_dead(self, rows: np.ndarray) -> None:
        """Rows a committed flush or merge made dead (persisted) -- also dead in memory."""
        newly = np.flatnonzero(rows & ~self.dead)
        self.dead = self.dead | rows  # a new array: never writes into a persisted set
        self.persisted = rows
        self.n_dead = int(np.count_nonzero(self.dead))
        self.any_dead = self.n_dead > 0
        if self.cache is not None and len(newly):
            self.cache.discard(self.id, newly.tolist())

    def id_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted in-process string hashes of the row ids, their rows): 16 bytes per row,
        built once (flushes and merges build it in the background before installing the
        segment; racing builders build the same thing)."""
        index = self._by_hash
        if index is None:
            index = self._by_hash = id_index_of(self.ids)
        return index

    def rows_of(self, ids: Sequence[str],
                probe: tuple[np.ndarray, np.ndarray] | None = None) -> list[int]:
        """The rows holding any of `ids` (live or dead; ids are unique within a segment), in
        no particular order. Vectorised hash probes, no store access. `probe`:
        id_index_of(ids), for a caller probing several segments with the same ids -- hashed
        and sorted once, and sorted probes search faster (1,000 new ids against a 120k-row
        segment: 53 us instead of 98)."""
        hashes, order = self.id_index()
        if not len(hashes) or not ids:
            return []
        wanted, wanted_at = probe if probe is not None else id_index_of(ids)
        pos = np.searchsorted(hashes, wanted)
        hit = np.flatnonzero(hashes[np.minimum(pos, len(hashes) - 1)] == wanted)
        out = []
        for i in hit.tolist():
            j, item_id, h = int(pos[i]), ids[int(wanted_at[i])], wanted[i]
            while j < len(hashes) and hashes[j] == h:
                row = int(order[j])
                if self.ids[row] == item_id:
                    out.append(row)
                    break
                j += 1
        return out

    def live_rows_of(self, ids: Sequence[str],
                     probe: tuple[np.ndarray, np.ndarray] | None = None) -> list[int]:
        """Rows holding one of `ids` that the store still points at (not persisted dead): what a
        newer write of those ids supersedes here. `probe`: as rows_of's."""
        return [row for row in self.rows_of(ids, probe) if not self.persisted[row]]

    def check_unstored(self, item_id: str) -> None:
        """Raise CorruptionError when the store has no entry for `item_id` but this segment
        holds a row of it the store must still point at (not persisted dead)."""
        expected = self.live_rows_of([item_id])  # LMDB pages carry no checksum: cross-check
        if expected:
            raise CorruptionError(f"the store lost the entry of an item that segment {self.id} "
                                  f"row {expected[0]} holds (damaged LMDB page? run verify)",
                                  self.store.path)

    def live_rows(self) -> np.ndarray:
        """Rows the store still points at (memtable shadowing aside): what a merge must carry."""
        return np.flatnonzero(~self.persisted)

    def search(self, queries: np.ndarray, k: int, *, flt=None, n_probes: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        if flt is None or flt.is_match_all:
            # no mask when nothing is dead: the segment's single-query fast path
            return self.segment.search(queries, k, n_probes=n_probes,
                                       exclude=self.dead if self.any_dead else None)
        if flt.plan is not None:
            plan = flt.plan
            return self._planned(queries, k, tuple(tuple(c) if isinstance(c, list) else c
                                                   for c in plan), self.terms.mask(plan), flt,
                                 n_probes)
        key = ("spec", repr(flt.spec))
        mask = self._spec_mask(key, flt.spec)
        if mask is not None:
            return self._planned(queries, k, key, mask, flt, n_probes)
        return self._filtered(queries, k, flt, n_probes)

    def _spec_mask(self, key: tuple, spec) -> np.ndarray | None:
        """The exact row mask of a filter without a term plan ($ne, $nin, $exists, $or, $nor,
        $not...) from filter_masks.py, cached like plan masks; None when the index cannot
        decide it, or would have to test every distinct string ($regex / $contains: their cost
        grows with the segment, so such filters post-filter the nearest rows instead)."""
        if key in self._spec_masks:
            return self._spec_masks[key]
        mask = None
        if "'$regex'" not in key[1] and "'$contains'" not in key[1]:
            found, exact = segment_mask(spec, self.terms)
            if exact:
                mask = found
                mask.setflags(write=False)
        if len(self._spec_masks) >= _SUBMATRIX_CACHE * 8:
            self._spec_masks.pop(next(iter(self._spec_masks)))
        self._spec_masks[key] = mask
        return mask

    def _planned(self, queries: np.ndarray, k: int, key: tuple, mask: np.ndarray | None, flt,
                 n_probes: int | None) -> tuple[np.ndarray, np.ndarray]:
        """An exact row mask from the term index (`key` names it for the caches). Up to
        PREFILTER_SHARE of the segment: exact search over just those rows (their vectors
        gathered once per mask and cached). More: ANN with the other rows excluded, searching
        proportionally more leaves, since the nearest matching rows lie farther out than the
        nearest rows."""
        if mask is None:  # this segment cannot decide the plan exactly
            return self._filtered(queries, k, flt, n_probes)
        count = int(np.count_nonzero(mask))
        if count == 0:
            return np.full((len(queries), 0), -1, np.int64), np.zeros((len(queries), 0), np.float32)
        dim = self.segment.dim
        if (count <= max(_PREFILTER_MIN_ROWS, int(self.info.rows * _PREFILTER_SHARE))
                and count * dim * 4 <= _SUBMATRIX_MAX_BYTES and self._gatherable(key, mask)):
            rows, sub, norms = self._submatrix(key, mask)
            found, dists = search_exact(sub, queries, k, self.segment.metric, sqnorms=norms,
                                        dead=self.dead[rows])
            return rows[found], dists
        params = self.segment.params
        if params.num_leaves:
            base = n_probes or params.leaves_to_search
            n_probes = min(params.num_leaves, int(np.ceil(base * self.info.rows / count)))
        return self.segment.search(queries, k, n_probes=n_probes, exclude=~mask | self.dead)

    def _gatherable(self, key: tuple, mask: np.ndarray) -> bool:
        """Whether the exact path may gather `mask`'s rows: cached, in memory, in at most
        _GATHER_MAX_CHUNKS chunks of a trained segment's sealed rows, or worth caching (see
        _GATHER_MAX_CHUNKS)."""
        asks = self._asks
        if len(asks) >= _ASKS_KEPT:
            asks.clear()
        asks[key] = count = asks.get(key, 0) + 1
        segment = self.segment
        if (key in self._subs or segment.rows_resident
                or segment.chunks_holding(np.flatnonzero(mask)) <= _GATHER_MAX_CHUNKS):
            return True
        if count < 2:
            return False
        if len(self._subs) < _SUBMATRIX_CACHE:
            return True
        return count > asks.get(next(iter(self._subs)), 0)

    def _submatrix(self, key: tuple, mask: np.ndarray):
        cached = self._subs.get(key)
        if cached is None:
            rows = np.flatnonzero(mask)
            sub = self.segment.gather(rows)
            norms = np.einsum("nd,nd->n", sub, sub) if self.segment.metric != "cosine" else None
            cached = (rows, sub, norms)
            if len(self._subs) >= _SUBMATRIX_CACHE:
                self._subs.pop(next(iter(self._subs)))
            self._subs[key] = cached
        return cached

    def _filtered(self, queries: np.ndarray, k: int, flt, n_probes: int | None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Post-filter with widening: fetch more until k rows match or the segment is exhausted."""
        live = self.info.rows - self.n_dead
        out_rows = np.full((len(queries), k), -1, np.int64)
        out_dist = np.full((len(queries), k), np.inf, np.float32)
        verdict: dict[int, bool] = {}
        for qi in range(len(queries)):
            fetch = min(live, k * _FILTER_FETCH_FACTOR)
            while True:
                rows, dists = self.segment.search(queries[qi:qi + 1], max(fetch, 1), n_probes=n_probes,
                                                  exclude=self.dead)
                rows, dists = rows[0], dists[0]
                valid = rows >= 0
                rows, dists = rows[valid], dists[valid]
                unknown = [int(r) for r in rows if int(r) not in verdict]
                if unknown:  # through the cache: the hits' metadata is then not opened again
                    items = segment_items(self.store, self.cache, [(self, r) for r in unknown])
                    for r, item in zip(unknown, items):
                        verdict[r] = flt.matches(item[2])
                keep = [j for j, r in enumerate(rows) if verdict[int(r)]][:k]
                if len(keep) >= k or fetch >= live or len(rows) < fetch:
                    out_rows[qi, :len(keep)] = rows[keep]
                    out_dist[qi, :len(keep)] = dists[keep]
                    break
                fetch = min(live, fetch * _FILTER_FETCH_FACTOR)
        return out_rows, out_dist


def _bodies(store: Store, cache: ItemCache | None, wanted: list[tuple[SegmentSource, int]],
            keys: list[int]) -> tuple[list[bytes], list[int]]:
    """The plaintext store body ([id, contents, metadata]: ItemValues.decode_body) of each
    (segment source, live row): from the cache; a bare row's ([id, None, None]: its id is the
    row's) made here, with no store read; the rest in one store read transaction (one AES-GCM
    open each); and the positions read from the store, which the caller checks and then
    caches. Raises CorruptionError when the store has no value for the row's item,
    places it elsewhere, or holds it bare where the segment says it has a body (store and
    segments disagree: a damaged or tampered store)."""
    bodies = cache.get_many(keys) if cache is not None else [None] * len(keys)
    if None not in bodies:
        return bodies, []  # type: ignore[return-value]
    missing = [i for i, body in enumerate(bodies) if body is None]
    first: dict[int, int] = {}  # a row twice in a batch is read once
    for i in missing:
        source, row = wanted[i]
        if source.ids.is_bare(row):
            bodies[i] = ItemValues.bare_body(source.ids[row])
        else:
            first.setdefault(keys[i], i)
    unique = list(first.values())
    read = store.get_bodies([wanted[i][0].ids[wanted[i][1]] for i in unique]) if unique else []
    for i, got in zip(unique, read):
        source, row = wanted[i]
        if got is None:
            raise CorruptionError(f"segment {source.id} row {row} has no item in the store",
                                  store.path)
        if got[0] != source.id or got[1] != row:
            raise CorruptionError(f"segment {source.id} row {row}: the store places its item "
                                  f"at segment {got[0]} row {got[1]}", store.path)
        if got[2] is None:
            raise CorruptionError(f"segment {source.id} row {row}: the store holds its item "
                                  f"without the body the segment says it has", store.path)
        bodies[i] = got[2]
    for i in missing:  # a row asked twice: read once
        if bodies[i] is None:
            bodies[i] = bodies[first[keys[i]]]
    return bodies, unique  # type: ignore[return-value]


def segment_items(store: Store, cache: ItemCache | None, wanted: list[tuple[SegmentSource, int]],
                  keys: list[int] | None = None) -> list[list]:
    """[id, contents, metadata] of each (segment source, live row) -- their store bodies
    (``_bodies``; `keys`: their cache keys when the caller has them), decoded by one msgpack
    call into objects of the caller's own. A body read from the store now must hold its row's
    id (CorruptionError otherwise) before it is cached: a cached one did when it was read."""
    if keys is None:
        keys = [cache_key(source.id, row) for source, row in wanted]
    bodies, read = _bodies(store, cache, wanted, keys)
    items = store.values.decode_bodies(bodies)
    for i in read:
        source, row = wanted[i]
        if items[i][0] != source.ids[row]:
            raise CorruptionError(f"segment {source.id} row {row}: its store value holds "
                                  f"another id", store.path)
    if read and cache is not None:
        cache.put_many([(keys[i], bodies[i]) for i in read])
    return items


def segment_folder(folder: Path, segment_id: int) -> Path:
    return folder / SEGMENTS_DIR / segment_dir_name(segment_id)


def open_segment(folder: Path, info: SegmentInfo, store: Store, *, key: bytes, context: bytes,
                 metric: str) -> SegmentSource:
    """Load one manifest segment. Raises CorruptionError naming the file when anything differs."""
    path = segment_folder(folder, info.id)
    segment = Segment.open(path, [FileEntry.of(f) for f in info.files], key=key,
                           context=context, metric=metric)
    if segment.n != info.rows:
        raise CorruptionError(f"segment {info.id} holds {segment.n} rows, manifest says {info.rows}", path)
    raw = read_sidecar(path, info.files, ROW_IDS_FILE, key=key, context=context)
    if raw is None:  # a segment written before ids.bin: its ids are in the store
        ids: RowIds | list[str] = read_row_ids(store, info.id, info.rows)
    else:
        try:
            ids = RowIds.from_bytes(raw, info.rows)
        except ValueError as exc:
            raise CorruptionError(f"row ids of segment {info.id} are malformed ({exc})",
                                  str(path / ROW_IDS_FILE)) from None
        del raw
    persisted = read_dead(store, info.id, info.rows, info.dead)
    source = SegmentSource(info, segment, ids, persisted, store, None)  # terms: at first use
    raw = read_sidecar(path, info.files, TEXT_INDEX_FILE, key=key, context=context)
    if raw is None:
        source.text = read_text(store, info.id, info.rows)
    else:
        try:
            source.text = TextIndex.from_bytes(raw, info.rows)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CorruptionError(f"text index of segment {info.id} is malformed ({exc})",
                                  str(path / TEXT_INDEX_FILE)) from None
    return source


def segment_folder_names(folder: Path) -> list[str]:
    """Names of the finished segment folders (not temporary ones) under the index folder."""
    root = folder / SEGMENTS_DIR
    if not root.is_dir():
        return []
    return sorted(entry.name for entry in root.iterdir()
                  if parse_segment_dir_name(entry.name) is not None)


def collect_orphans(folder: Path, live_ids: set[int]) -> list[str]:
    """Remove segment folders the manifest does not name (crash leftovers, replaced segments)."""
    root = folder / SEGMENTS_DIR
    removed = []
    if not root.is_dir():
        return removed
    for entry in sorted(root.iterdir()):
        seg_id = parse_segment_dir_name(entry.name)
        if seg_id is None or seg_id not in live_ids:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed
