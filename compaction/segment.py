"""An immutable segment: a folder of sealed files holding float32 rows and, for large segments,
a ScaNN searcher over them. Row numbers are the segment-local ids.

    seg-<id>/
      segment.json   sealed JSON: format, n, dim, SearchParams, whether dataset.npy is stored
      vectors.bin    sealed float32 rows (n x dim, C order)
      scann_*, *.pb, *.npy   (tree_ah only) ScaNN's assets, each sealed under its own name

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
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from lsmvec.compaction.filenames import (SCANN_ASSETS_INDEX_FILE, SCANN_DATASET_FILE,
                                  SEGMENT_META_FILE, VECTORS_FILE)
from lsmvec.compaction.scann_assets import (file_context, load_sealed_searcher, seal_searcher,
                                     train_searcher)
from lsmvec.compaction.calibrate import DEFAULT_TARGET_RECALL, calibrate, check_target_recall
from lsmvec.compaction.scann_params import (KIND_BRUTE, KIND_TREE_AH, SearchParams, choose_params,
                                     leaves_for_probes, scann_scores_to_distances)
from lsmvec.compaction.sealed_file import CHUNK_SIZE, read_sealed, read_sealed_range, write_sealed
from lsmvec.compaction.segment_files import (FileEntry, SegmentFiles, check_listing, encode_meta,
                                      expected_entries, parse_meta)
from lsmvec.compaction.exact import search_exact
from lsmvec.compaction.segment_search import empty_result, pad_result, select_live
from lsmvec.wal import fsio
from lsmvec.wal.errors import (ClosedError, CorruptionError, DimensionMismatchError,
                        InvalidArgumentError, InvalidTypeError, InvalidVectorError,
                        storage_error_from)

__all__ = ["FileEntry", "SegmentFiles", "Segment", "build_segment", "build_and_open_segment"]

logger = logging.getLogger(__name__)

_PARALLEL_BATCH = 256
"""Batches at least this large use ScaNN's own thread pool (search_batched_parallel)."""

_CHUNK_CACHE = 16
"""Decrypted chunks of a trained segment's vectors.bin kept for row reads (16 MiB at most)."""

_WIDEN_FETCH = 4
"""When dead rows crowd out live ones, the next round asks ScaNN for this many times more."""


def build_segment(directory: str | os.PathLike[str], vectors: np.ndarray, *, metric: str,
                  key: bytes, context: bytes, n_lists: int | None = None,
                  progress: Callable[[str], None] | None = None,
                  training_threads: int | None = None,
                  target_recall: float = DEFAULT_TARGET_RECALL,
                  **tuning: Any) -> SegmentFiles:
    """Write a segment of ``vectors`` (row i = segment id i) into ``directory``.

    ``directory`` must be a fresh, empty (or absent) temporary folder; the caller renames it
    into place and records the returned ``SegmentFiles`` in its manifest. Every file and the
    folder are fsynced; every write goes through ``wal.fsio.FS``. ``progress`` is called with "vectors", "training", "sealing", "done".
    ``tuning``: see ``scann_params.TUNING_KEYS`` (kind, leaves_to_search, reorder, ...).
    ``target_recall``: a trained segment's default search is calibrated to this mean recall@10
    on a sample of its rows (compaction/calibrate.py) unless ``leaves_to_search`` is given; a
    tree that cannot reach it even searching every leaf is stored exact (kind "brute").

    Raises InvalidTypeError / InvalidVectorError / InvalidArgumentError for bad vectors, metric,
    tuning or a non-empty folder; InvalidKeyError for a bad key; StorageError on I/O failure
    (the caller removes the temporary folder).
    """
    files, _params, _vectors, _searcher = _build(
        Path(directory), vectors, metric, key, context, n_lists, progress, training_threads,
        target_recall, tuning, own_copy=False)
    return files


def build_and_open_segment(directory: str | os.PathLike[str], vectors: np.ndarray, *,
                           metric: str, key: bytes, context: bytes, n_lists: int | None = None,
                           progress: Callable[[str], None] | None = None,
                           training_threads: int | None = None,
                           target_recall: float = DEFAULT_TARGET_RECALL,
                           **tuning: Any) -> tuple[SegmentFiles, Segment]:
    """``build_segment``, plus the searchable ``Segment`` kept from the build (no re-read and
    no ScaNN reload; the folder may be renamed afterwards). The segment keeps its own copy of
    the rows, so the caller may reuse ``vectors``. Same errors."""
    files, params, rows, searcher = _build(
        Path(directory), vectors, metric, key, context, n_lists, progress, training_threads,
        target_recall, tuning, own_copy=True)
    return files, Segment(params, rows, searcher, (Path(directory) / VECTORS_FILE, key,
                                                   file_context(context, VECTORS_FILE)))


def _build(directory: Path, vectors: np.ndarray, metric: str, key: bytes, context: bytes,
           n_lists: int | None, progress: Callable[[str], None] | None,
           training_threads: int | None, target_recall: float, tuning: dict[str, Any], *,
           own_copy: bool) -> tuple[SegmentFiles, SearchParams, np.ndarray, Any]:
    started = time.monotonic()
    vectors = _checked_vectors(vectors)
    n, dim = vectors.shape
    params = choose_params(n, dim, metric, n_lists=n_lists, **tuning)
    target_recall = check_target_recall(target_recall)
    # A trained Segment keeps no rows of its own (ScaNN holds them): no private copy then.
    copied = own_copy and params.kind != KIND_TREE_AH
    if copied:
        vectors = vectors.copy()
    _prepare_directory(directory)
    report = progress or (lambda stage: None)
    report("vectors")
    sealed = {VECTORS_FILE: write_sealed(directory / VECTORS_FILE, vectors, key,
                                         file_context(context, VECTORS_FILE))}
    searcher = None
    dataset_stored = False
    if params.kind == KIND_TREE_AH:
        report("training")
        searcher = train_searcher(vectors, params, training_threads)
        if tuning.get("leaves_to_search") is None:  # explicit leaves are the caller's choice
            calibration = calibrate(searcher.searcher, vectors, params, target_recall)
            params = calibration.params
            if not calibration.reached:
                logger.warning("segment of %d x %d: recall@10 %.3f < target %.2f even at "
                               "every leaf; storing it exact (brute)", n, dim,
                               params.calibrated_recall, target_recall)
                searcher = None
                params = SearchParams(kind=KIND_BRUTE, metric=metric, distance=params.distance)
                if own_copy and not copied:
                    vectors = vectors.copy()
                    copied = True
    if params.kind == KIND_TREE_AH:
        report("sealing")
        assets, dataset_stored = seal_searcher(searcher, vectors, directory, key, context)
        sealed.update(assets)
    sealed[SEGMENT_META_FILE] = write_sealed(
        directory / SEGMENT_META_FILE, encode_meta(params, n, dim, dataset_stored), key,
        file_context(context, SEGMENT_META_FILE))
    _fsync_directory(directory)
    report("done")
    files = SegmentFiles(
        files=tuple(FileEntry(name, info.size, info.sha256)
                    for name, info in sorted(sealed.items())),
        n=n, dim=dim, metric=metric, kind=params.kind, n_lists=params.num_leaves)
    logger.info("built %s segment of %d x %d (%s) in %s in %.2fs", params.kind, n, dim, metric,
                directory, time.monotonic() - started)
    if copied:
        vectors.setflags(write=False)
    return files, params, vectors, searcher


def _checked_vectors(vectors: np.ndarray) -> np.ndarray:
    """C-contiguous float32 rows, all finite."""
    if not isinstance(vectors, np.ndarray):
        raise InvalidTypeError(f"vectors must be a numpy array, got {type(vectors).__name__}")
    if vectors.ndim != 2 or vectors.shape[0] < 1 or vectors.shape[1] < 1:
        raise InvalidVectorError(f"vectors must be a non-empty (n, d) array, got shape "
                                 f"{vectors.shape}")
    if not np.issubdtype(vectors.dtype, np.floating):
        raise InvalidTypeError(f"vectors must be floating point, got {vectors.dtype}")
    rows = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(rows).all():
        raise InvalidVectorError("vectors contain NaN or inf (they would corrupt the index)")
    return rows


def _prepare_directory(directory: Path) -> None:
    try:
        fsio.mkdir(directory, exist_ok=True)
        leftovers = os.listdir(directory)
    except OSError as exc:
        raise storage_error_from(exc, f"prepare segment folder {directory}") from exc
    if leftovers:
        raise InvalidArgumentError(f"segment build folder {directory} is not empty "
                                   f"({sorted(leftovers)[:5]})")


def _fsync_directory(directory: Path) -> None:
    try:
        fsio.fsync_dir(directory)
    except OSError as exc:
        raise storage_error_from(exc, f"fsync {directory}") from exc


class Segment:
    """A searchable, read-only segment held in memory. Safe for concurrent searches from many
    threads (ScaNN searches are const and release the GIL; no state changes per search)."""

    __slots__ = ("_params", "_vectors", "_norms", "_searcher", "_scann", "_n", "_dim",
                 "_metric", "_reorder", "_lazy", "_closed", "_chunks", "__weakref__")

    def __init__(self, params: SearchParams, vectors: np.ndarray, searcher: Any = None,
                 lazy: tuple[Path, bytes, bytes] | None = None) -> None:
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
                               expected_size=entry.size, expected_sha256=entry.sha256)

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
                  if name not in (SEGMENT_META_FILE, VECTORS_FILE)}
        if (params.kind == KIND_TREE_AH) != bool(assets) or (
                assets and (SCANN_ASSETS_INDEX_FILE not in assets
                            or (SCANN_DATASET_FILE in assets) != dataset_stored)):
            raise CorruptionError(f"segment files {sorted(expected)} do not fit a "
                                  f"{params.kind} segment", meta_path)
        raw = unseal(VECTORS_FILE)
        if len(raw) != n * dim * 4:
            raise CorruptionError(f"vectors hold {len(raw)} bytes, expected {n} x {dim} float32",
                                  str(directory / VECTORS_FILE))
        vectors = np.frombuffer(raw, dtype=np.float32).reshape(n, dim)
        vectors.setflags(write=False)
        searcher = None
        if assets:
            searcher = load_sealed_searcher(
                directory, {name: (e.size, e.sha256) for name, e in assets.items()},
                vectors, key, context)
        logger.debug("opened %s segment %s (%d x %d) in %.3fs", params.kind, directory, n, dim,
                     time.monotonic() - started)
        return cls(params, vectors, searcher,
                   (directory / VECTORS_FILE, key, file_context(context, VECTORS_FILE)))

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
        path, key, context = self._lazy  # type: ignore[misc]
        rows = np.frombuffer(read_sealed(path, key, context), np.float32).reshape(self._n, self._dim)
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

    def _chunk(self, number: int) -> bytes:
        """One decrypted 1 MiB chunk of vectors.bin; the last few are kept, since the rows a
        get() asks for usually cluster (a batch of neighbours, a range of ids)."""
        chunk = self._chunks.get(number)
        if chunk is None:
            path, key, context = self._lazy  # type: ignore[misc]
            total = self._n * self._dim * 4
            chunk = read_sealed_range(path, key, context, number * CHUNK_SIZE,
                                      min(CHUNK_SIZE, total - number * CHUNK_SIZE))
            if len(self._chunks) >= _CHUNK_CACHE:
                self._chunks.pop(next(iter(self._chunks)), None)
            self._chunks[number] = chunk
        return chunk

    def relocate(self, directory: str | os.PathLike[str]) -> None:
        """The folder was renamed (temporary name -> final): read rows from there."""
        self._chunks.clear()
        if self._lazy is not None:
            self._lazy = (Path(directory) / VECTORS_FILE, *self._lazy[1:])

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
