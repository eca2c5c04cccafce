"""An immutable segment: a folder of sealed files holding float32 rows and, for large segments,
a ScaNN searcher over them. Row numbers are the segment-local ids.

    seg-<id>/
      segment.json   sealed JSON: format, n, dim, SearchParams, whether dataset.npy is stored
      vectors.bin    sealed float32 rows (n x dim, C order)
      scann_*, *.pb, *.npy   (tree_ah only) ScaNN's assets, each sealed under its own name
      text.idx       (optional sidecar) the engine's full-text index, opaque here

Every file is bound (AES-GCM associated data) to the caller's ``context`` (index uuid and
segment id) and to its own name, so a file moved, swapped or copied between segments or
indexes fails to open. ``build_segment`` writes into a fresh folder the caller then renames
into place; ``Segment.open`` first checks that the folder holds exactly the files the manifest
names (sizes and SHA-256 too), so nothing unexpected -- like a planted ``scann_docids.pkl`` --
ever reaches ScaNN.
"""
from __future__ import annotations

import logging
import math
import os
import time
import weakref
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from lsmvec.compaction.filenames import (SCANN_ASSETS_INDEX_FILE, SCANN_DATASET_FILE,
                                  SEGMENT_META_FILE, SIDECAR_FILES, VECTORS_FILE)
from lsmvec.compaction.scann_assets import SealedRows, file_context, load_sealed_searcher
from lsmvec.compaction.scann_params import (KIND_TREE_AH, SearchParams, leaves_for_probes,
                                            scann_scores_to_distances)
from lsmvec.compaction.sealed_file import (CHUNK_SIZE, read_pins, read_sealed,
                                           read_sealed_into, read_sealed_range)
from lsmvec.compaction.segment_build import build_and_open_segment, build_segment
from lsmvec.compaction.segment_files import (FileEntry, SegmentFiles, check_listing,
                                             expected_entries, parse_meta)
from lsmvec.compaction.exact import search_exact
from lsmvec.compaction.row_gather import gather_rows
from lsmvec.compaction.segment_search import empty_result, pad_result, select_live
from lsmvec.wal.errors import (ClosedError, CorruptionError, DimensionMismatchError,
                               InvalidArgumentError)

__all__ = ["FileEntry", "SegmentFiles", "Segment", "build_segment", "build_and_open_segment"]

logger = logging.getLogger(__name__)

_PARALLEL_BATCH = 256
"""Batches at least this large use ScaNN's own thread pool (search_batched_parallel)."""

_CHUNK_CACHE = 16
"""Decrypted chunks of a trained segment's vectors.bin kept for row reads (16 MiB at most)."""

_WIDEN_FETCH = 4
"""When dead rows crowd out live ones, the next round asks ScaNN for this many times more."""


_UNSEAL_THREADS = 2
"""Threads unsealing a trained segment's files at open, when the machine has two cores and
every file is pinned by its salt (no checksum pass): the same decryption work in ranges
(sealed_batch). 1M x 128 (645 MB), quiet machine, 6 fresh processes each: open + first query
2.09 s against 2.31 s on one thread. With checksums (segments from before salts) each file
would be read twice, which lost on a busy machine: one thread then."""


def _unseal_threads(entries: Iterable[FileEntry]) -> int:
    if any(not e.salt for e in entries):
        return 1
    return max(1, min(_UNSEAL_THREADS, len(os.sched_getaffinity(0))))


def _read_rows(rows: SealedRows, key: bytes) -> np.ndarray:
    """A segment's vectors.bin as a read-only (n, dim) float32 array (uninitialised memory the
    decryption fills: no zero-filled buffer first). Raises CorruptionError like read_sealed."""
    out = np.empty(rows.shape, np.float32)
    read_sealed_into(rows.path, key, rows.context, out, expected_size=rows.size,
                     **read_pins(rows.sha256, rows.salt))
    out.setflags(write=False)
    return out


class Segment:
    """A searchable, read-only segment held in memory. Safe for concurrent searches from many
    threads (ScaNN searches are const and release the GIL; no state changes per search)."""

    __slots__ = ("_params", "_vectors", "_norms", "_searcher", "_scann", "_n", "_dim",
                 "_metric", "_reorder", "_lazy", "_closed", "_chunks", "__weakref__")

    def __init__(self, params: SearchParams, vectors: np.ndarray, searcher: Any = None,
                 lazy: tuple[Path, bytes, bytes, bytes | None] | None = None) -> None:
        """Wrap rows and (for tree_ah) a loaded ScaNN searcher; use ``open`` or
        ``build_and_open_segment`` rather than calling this directly.

        A trained segment does not keep its rows: ScaNN holds them for its exact reorder, and a
        second copy would double the index's memory. ``lazy`` (vectors.bin, key, context)
        reads them back from the sealed file when asked (get, merge, filters)."""
        self._params = params
        self._closed = False
        self._chunks: dict[int, bytes] = {}  # recently decrypted chunks of vectors.bin (row reads)
        self._lazy = lazy if searcher is not None else None
        self._vectors: np.ndarray | None = vectors if self._lazy is None else None
        self._n, self._dim = vectors.shape
        self._metric = params.metric
        self._searcher = searcher
        self._scann = searcher.searcher if searcher is not None else None  # pybind object
        self._reorder = params.reorder
        self._norms = (np.einsum("nd,nd->n", vectors, vectors)
                       if searcher is None and params.metric != "cosine" else None)

    # ------------------------------------------------------------------ open
    @classmethod
    def open(cls, directory: str | os.PathLike[str],
             expected_files: SegmentFiles | Iterable[FileEntry | tuple[str, int, str]], *,
             key: bytes, context: bytes, metric: str) -> Segment:
        """Open a committed segment folder.

        Raises CorruptionError (naming the file) when the folder is missing, holds any name the
        manifest does not list (e.g. a planted ``scann_docids.pkl``) or a non-regular file,
        lacks a listed file, a size or SHA-256 differs, a file fails authentication (damaged,
        moved between segments or indexes, wrong key), or the segment was built for another
        metric / shape. Nothing reaches ScaNN before all checks pass. StorageError on I/O errors.
        """
        started = time.monotonic()
        directory = Path(directory)
        described = expected_files if isinstance(expected_files, SegmentFiles) else None
        expected = expected_entries(
            described.files if described is not None else expected_files, directory)
        check_listing(directory, expected)

        def unseal(name: str) -> bytearray:
            entry = expected[name]
            return read_sealed(directory / name, key, file_context(context, name),
                               expected_size=entry.size, **entry.pins())

        meta_path = str(directory / SEGMENT_META_FILE)
        params, n, dim, dataset_stored = parse_meta(unseal(SEGMENT_META_FILE), meta_path)
        if params.metric != metric:
            raise CorruptionError(f"segment was built for metric {params.metric!r}, "
                                  f"opened as {metric!r}", meta_path)
        if described is not None and (described.n, described.dim, described.kind) != (
                n, dim, params.kind):
            raise CorruptionError("segment does not match its manifest description "
                                  f"(n={n}, dim={dim}, kind={params.kind})", meta_path)
        assets = {name: expected[name] for name in expected
                  if name not in (SEGMENT_META_FILE, VECTORS_FILE) and name not in SIDECAR_FILES}
        if (params.kind == KIND_TREE_AH) != bool(assets) or (
                assets and (SCANN_ASSETS_INDEX_FILE not in assets
                            or (SCANN_DATASET_FILE in assets) != dataset_stored)):
            raise CorruptionError(f"segment files {sorted(expected)} do not fit a "
                                  f"{params.kind} segment", meta_path)
        rows_file = expected[VECTORS_FILE]
        rows = SealedRows(directory / VECTORS_FILE, rows_file.size, rows_file.sha256,
                          file_context(context, VECTORS_FILE), (n, dim), rows_file.salt)
        if assets and not dataset_stored:
            # A trained segment keeps no rows (ScaNN holds them): vectors.bin is authenticated
            # and decrypted straight into the memory file ScaNN loads as its dataset.
            vectors = np.broadcast_to(np.float32(0), (n, dim))  # the shape, no memory
            dataset: np.ndarray | SealedRows = rows
        else:
            vectors = _read_rows(rows, key)  # every byte authenticated, even if ScaNN has its own
            dataset = vectors
        searcher = load_sealed_searcher(
            directory, {name: (e.size, e.sha256, e.salt) for name, e in assets.items()},
            dataset, key, context, threads=_unseal_threads(expected.values())
        ) if assets else None
        logger.debug("opened %s segment %s (%d x %d) in %.3fs", params.kind, directory, n, dim,
                     time.monotonic() - started)
        return cls(params, vectors, searcher,
                   (directory / VECTORS_FILE, key, file_context(context, VECTORS_FILE),
                    rows_file.salt_bytes))

    # ------------------------------------------------------------ properties
    @property
    def n(self) -> int:
        """Number of rows (live and dead: the segment never changes)."""
        return self._n

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def kind(self) -> str:
        """"brute" (exact numpy scan) or "tree_ah" (ScaNN)."""
        return self._params.kind

    @property
    def n_lists(self) -> int:
        """ScaNN leaves (0 for brute segments)."""
        return self._params.num_leaves

    @property
    def params(self) -> SearchParams:
        return self._params

    @property
    def vectors(self) -> np.ndarray:
        """The rows, read-only (row i = segment id i); for a trained segment, read back from
        its sealed file on each access. Raises ClosedError after close()."""
        if self._closed:
            raise ClosedError("segment is closed")
        if self._vectors is not None:
            return self._vectors
        path, key, context, salt = self._lazy  # type: ignore[misc]
        rows = np.empty((self._n, self._dim), np.float32)  # filled by the decryption: no memset
        read_sealed_into(path, key, context, rows, expected_salt=salt)
        rows.setflags(write=False)
        return rows

    def row(self, index: int) -> np.ndarray:
        """One row; a trained segment decrypts only the chunk that holds it."""
        if self._closed:
            raise ClosedError("segment is closed")
        if self._vectors is not None:
            return self._vectors[index]
        size = self._dim * 4
        start = index * size
        first, last = start // CHUNK_SIZE, (start + size - 1) // CHUNK_SIZE
        blob = b"".join(self._chunk(c) for c in range(first, last + 1))
        offset = start - first * CHUNK_SIZE
        return np.frombuffer(blob[offset:offset + size], np.float32)

    @property
    def rows_resident(self) -> bool:
        """Whether the rows are held in memory (an untrained segment) rather than read back
        from the sealed file (a trained one: ScaNN holds its own copy)."""
        return self._vectors is not None

    def _chunk_span(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first, last) chunk of vectors.bin holding each row (a row may straddle two)."""
        start = np.asarray(rows, np.int64) * (self._dim * 4)
        return start // CHUNK_SIZE, (start + self._dim * 4 - 1) // CHUNK_SIZE

    def chunks_holding(self, rows: np.ndarray) -> int:
        """How many 1 MiB chunks gather(rows) decrypts (0 when the rows are in memory)."""
        if self._vectors is not None or not len(rows):
            return 0
        first, last = self._chunk_span(rows)
        return int(np.union1d(first, last).size)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """``vectors[rows]`` as a fresh C-contiguous array; a trained segment decrypts only
        the chunks holding them, each run of consecutive chunks in one read."""
        if self._closed:
            raise ClosedError("segment is closed")
        rows = np.asarray(rows, np.int64)
        if self._vectors is not None:
            return gather_rows(self._vectors, rows)
        out = np.empty((len(rows), self._dim), np.float32)
        if not len(rows):
            return out
        path, key, context, salt = self._lazy  # type: ignore[misc]
        total = self._n * self._dim * 4
        first, last = self._chunk_span(rows)
        needed = np.union1d(first, last)
        if 2 * needed.size > -(-total // CHUNK_SIZE):  # most of the file: one pass into place
            return gather_rows(self.vectors, rows)
        breaks = np.flatnonzero(np.diff(needed) > 1) + 1
        for run in np.split(needed, breaks):
            lo, hi = int(run[0]) * CHUNK_SIZE, min((int(run[-1]) + 1) * CHUNK_SIZE, total)
            floats = np.frombuffer(read_sealed_range(path, key, context, lo, hi - lo, salt),
                                   np.float32)
            inside = np.flatnonzero((first >= run[0]) & (first <= run[-1]))
            at = (rows[inside] * (self._dim * 4) - lo) // 4
            out[inside] = floats[at[:, None] + np.arange(self._dim)]
        return out

    def _chunk(self, number: int) -> bytes:
        """One decrypted 1 MiB chunk of vectors.bin; the last few are kept, since the rows a
        get() asks for usually cluster (a batch of neighbours, a range of ids)."""
        chunk = self._chunks.get(number)
        if chunk is None:
            path, key, context, salt = self._lazy  # type: ignore[misc]
            total = self._n * self._dim * 4
            chunk = read_sealed_range(path, key, context, number * CHUNK_SIZE,
                                      min(CHUNK_SIZE, total - number * CHUNK_SIZE), salt)
            if len(self._chunks) >= _CHUNK_CACHE:
                self._chunks.pop(next(iter(self._chunks)), None)
            self._chunks[number] = chunk
        return chunk

    def relocate(self, directory: str | os.PathLike[str]) -> None:
        """The folder was renamed (temporary name -> final): read rows from there."""
        self._chunks.clear()
        if self._lazy is not None:
            self._lazy = (Path(directory) / VECTORS_FILE, *self._lazy[1:])

    def hold_rows_file(self) -> None:
        """Keep vectors.bin open and read it through that descriptor from now on, so the rows
        stay readable after the folder is deleted (a reader process whose segment the writer
        merged away: an open file outlives its name). Closed when the Segment is freed."""
        if self._lazy is None or str(self._lazy[0]).startswith("/proc/self/fd/"):
            return
        path, key, context, salt = self._lazy
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise CorruptionError("segment file is missing", str(path)) from None
        weakref.finalize(self, os.close, fd)
        self._lazy = (Path(f"/proc/self/fd/{fd}"), key, context, salt)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Drop the rows and the searcher (memory is freed once no search still uses them)."""
        self._closed = True
        self._chunks.clear()
        self._vectors = None
        self._norms = None
        self._searcher = None
        self._scann = None

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self._n}x{self._dim}"
        return f"<Segment {self.kind} {self._metric} {state} n_lists={self.n_lists}>"

    # ---------------------------------------------------------------- search
    def search(self, queries: np.ndarray, k: int, *, n_probes: int | None = None,
               exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest live rows of each query.

        ``queries``: (q, dim) float32 (a 1-D vector is taken as one query); under "cosine"
        they must be unit vectors. ``n_probes``: leaves searched in a tree_ah segment (None =
        the segment's default; ignored by brute segments, which are exact). ``exclude``: a
        boolean mask of length n marking dead rows; dead rows are never returned and k live
        rows are returned whenever the search reaches that many (the search widens itself).

        Returns (rows int64 (q, k), distances float32 (q, k)), ascending; -1 / +inf pad a
        result with fewer than k rows. Distances are exact: recomputed from the rows (brute)
        or ScaNN's exact reorder scores (trained). Raises ClosedError after close(),
        DimensionMismatchError, InvalidArgumentError.
        """
        if self._closed:
            raise ClosedError("segment is closed")
        vectors = self._vectors
        if not isinstance(queries, np.ndarray):
            queries = np.asarray(queries, dtype=np.float32)
        if queries.dtype != np.float32 or not queries.flags.c_contiguous:
            queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self._dim:
            raise DimensionMismatchError(f"queries have shape {queries.shape}, segment "
                                         f"dimension is {self._dim}")
        if k < 1:
            raise InvalidArgumentError(f"k must be >= 1, got {k}")
        if exclude is not None and (exclude.shape != (self._n,) or exclude.dtype != np.bool_):
            raise InvalidArgumentError(f"exclude must be a bool mask of shape ({self._n},), "
                                       f"got {exclude.shape}")
        if queries.shape[0] == 0:
            return empty_result(0, k)
        scann = self._scann
        if scann is None:
            rows, distances = search_exact(vectors, queries, k, self._metric,
                                           sqnorms=self._norms, dead=exclude)
            return pad_result(rows, distances, k)
        return self._search_tree(scann, queries, k, n_probes, exclude)

    def search_one(self, query: np.ndarray, k: int, n_probes: int | None = None,
                   exclude: np.ndarray | None = None, n_excluded: int = 0
                   ) -> tuple[list[int], list[float]] | None:
        """``search`` of one query for a caller that already checked it -- a C-contiguous
        float32 (dim,) vector (unit under cosine), k >= 1, ``exclude`` as in search() holding
        ``n_excluded`` True rows (or None) -- without the checks and array reshaping. Returns
        (rows, distances) as lists (the float32 distances as Python floats), ascending, or None
        when this path cannot answer alone (a brute or closed segment, k rows not found, many
        excluded rows): search() then does, with the same result. Each numpy call here costs
        2-3 us on the cold caches a ScaNN search leaves behind (of a ~150 us query)."""
        scann = self._scann
        if scann is None or k > self._n - n_excluded or n_excluded > 4 * k:
            return None
        leaves = (self._params.leaves_to_search if n_probes is None
                  else leaves_for_probes(self._params, n_probes))
        # what _search_tree asks for: k + the excluded rows (a ScaNN call yields them all)
        fetch = k + n_excluded if exclude is not None else k
        found, scores = scann.search(query, fetch, max(self._reorder, fetch), leaves)
        if exclude is not None:
            live = ~exclude[found]
            found, scores = found[live][:k], scores[live][:k]
        if found.shape[0] != k:
            return None
        if self._metric == "cosine":  # scann_scores_to_distances, one call fewer (float32 in,
            return found.tolist(), (1.0 - scores).tolist()  # float32 out)
        return found.tolist(), scann_scores_to_distances(self._metric, scores).tolist()

    def _search_tree(self, scann: Any, queries: np.ndarray, k: int,
                     n_probes: int | None, exclude: np.ndarray | None,
                     ) -> tuple[np.ndarray, np.ndarray]:
        n = self._n
        num_leaves = self._params.num_leaves
        leaves = leaves_for_probes(self._params, n_probes)
        metric = self._metric
        if exclude is None and queries.shape[0] == 1 and k <= n:  # the hot path
            found, scores = scann.search(queries[0], k, max(self._reorder, k), leaves)
            if found.shape[0] == k:  # ScaNN's reorder is exact and sorted best first
                return (found.astype(np.int64).reshape(1, -1),
                        scann_scores_to_distances(metric, scores).reshape(1, -1))
        dead = 0 if exclude is None else int(np.count_nonzero(exclude))
        if dead >= n:
            return empty_result(queries.shape[0], k)
        reachable = min(k, n - dead)  # the most live rows any search can return
        cap = min(n, k + dead)  # asking for this many always yields `reachable` live rows
        if dead <= 4 * k:
            fetch = cap
        else:  # expect k / live_share candidates for k live ones, with margin; and reorder
            # deeper as the live share shrinks: the k-th live row sits ~1/share deeper in the
            # ranking (measured, 200k x 128 at 10% live: recall 0.68 -> 0.997 with sqrt scaling)
            share = (n - dead) / n
            fetch = min(cap, max(math.ceil(1.5 * k / share) + 16,
                                 math.ceil(self._reorder / math.sqrt(share))))
        rows, distances = select_live(*self._candidates(scann, queries, fetch, leaves), k, exclude)
        short = rows[:, reachable - 1] < 0
        if not short.any():
            return rows, distances
        # Rare path: dead rows crowded out live ones, or the searched leaves held too few
        # rows. Widen both for the short queries until they are full or nothing can grow.
        pending = np.flatnonzero(short)
        while pending.size:
            grown = (min(cap, fetch * _WIDEN_FETCH), min(num_leaves, leaves * 2))
            if grown == (fetch, leaves):
                break
            fetch, leaves = grown
            sub_rows, sub_distances = select_live(
                *self._candidates(scann, queries[pending], fetch, leaves), k, exclude)
            rows[pending] = sub_rows
            distances[pending] = sub_distances
            pending = pending[sub_rows[:, reachable - 1] < 0]
        return rows, distances

    def _candidates(self, scann: Any, queries: np.ndarray, fetch: int,
                    leaves: int) -> tuple[np.ndarray, np.ndarray]:
        """ScaNN's candidate rows and exact distances (q, <= fetch), best first; -1 / +inf
        where it found fewer."""
        pre_reorder = max(self._reorder, fetch)
        if queries.shape[0] == 1:
            found, scores = scann.search(queries[0], fetch, pre_reorder, leaves)
            return (found.astype(np.int64)[None, :],
                    scann_scores_to_distances(self._metric, scores)[None, :])
        parallel = queries.shape[0] >= _PARALLEL_BATCH
        found, scores = scann.search_batched(queries, fetch, pre_reorder, leaves, parallel,
                                             _PARALLEL_BATCH)
        rows = found.astype(np.int64)
        distances = scann_scores_to_distances(self._metric, scores).astype(np.float32)
        padding = np.isnan(scores)  # search_batched pads short results with row 0 / NaN
        if padding.any():
            rows[padding] = -1
            distances[padding] = np.inf
        return rows, distances
