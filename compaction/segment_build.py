"""Building a segment folder: the rows sealed, and for a large segment a ScaNN tree trained,
calibrated and sealed. ``Segment`` (segment.py) opens and searches what this writes.

A trained build overlaps its independent steps, since the caller of ``train()`` waits for it:
  * vectors.bin is sealed (AES-GCM, SHA-256, write, fsync) by a helper thread while ScaNN
    trains (1.35 s of a 1M x 128 build ran alone before, 0.16 s at 60k x 384);
  * the recall calibration runs in this process while a forked child serializes ScaNN's
    assets (scann_serialize; 4.0 s and 8.9 s at 1M x 128 ran one after the other before).
"""
from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from lsmvec.compaction.calibrate import DEFAULT_TARGET_RECALL, calibrate, check_target_recall
from lsmvec.compaction.compactor import BACKGROUND, BuildBudget, Helper
from lsmvec.compaction.filenames import SEGMENT_META_FILE, SIDECAR_FILES, VECTORS_FILE
from lsmvec.compaction.scann_assets import file_context, seal_searcher, train_searcher
from lsmvec.compaction.scann_params import KIND_BRUTE, KIND_TREE_AH, SearchParams, choose_params
from lsmvec.compaction.sealed_file import SealedFileInfo, write_sealed
from lsmvec.compaction.segment_files import FileEntry, SegmentFiles, encode_meta
from lsmvec.wal import fsio
from lsmvec.wal.errors import (InvalidArgumentError, InvalidTypeError, InvalidVectorError,
                               storage_error_from)

if TYPE_CHECKING:
    from lsmvec.compaction.segment import Segment

__all__ = ["build_segment", "build_and_open_segment"]

logger = logging.getLogger(__name__)


def build_segment(directory: str | os.PathLike[str], vectors: np.ndarray, *, metric: str,
                  key: bytes, context: bytes, n_lists: int | None = None,
                  progress: Callable[[str], None] | None = None,
                  budget: BuildBudget = BACKGROUND,
                  target_recall: float = DEFAULT_TARGET_RECALL,
                  sidecars: Mapping[str, bytes] | None = None,
                  **tuning: Any) -> SegmentFiles:
    """Write a segment of ``vectors`` (row i = segment id i) into ``directory``.

    ``directory`` must be a fresh, empty (or absent) temporary folder; the caller renames it
    into place and records the returned ``SegmentFiles`` in its manifest. Every file and the
    folder are fsynced; every write goes through ``wal.fsio.FS``. ``progress`` is called with
    "vectors", "training", "sealing", "done". ``budget``: ScaNN's training threads and whether
    a caller waits (compactor.BuildBudget; an explicit ``train()`` passes
    ``BuildBudget.for_caller()``: every usable core; background merges one).
    ``tuning``: see ``scann_params.TUNING_KEYS`` (kind, leaves_to_search, reorder, ...).
    ``target_recall``: a trained segment's default search is calibrated to this mean recall@10
    on a sample of its rows (compaction/calibrate.py) unless ``leaves_to_search`` is given; a
    tree that cannot reach it even searching every leaf, or only at a query cost near an exact
    scan's, is stored exact (kind "brute", the reason in its params' ``fallback``).
    ``sidecars``: {name in ``filenames.SIDECAR_FILES``: bytes} sealed into the folder with the
    rows, under the same context (e.g. the engine's full-text index); read back with
    ``segment_files.read_sidecar``.

    Raises InvalidTypeError / InvalidVectorError / InvalidArgumentError for bad vectors, metric,
    tuning or a non-empty folder; InvalidKeyError for a bad key; StorageError on I/O failure
    (the caller removes the temporary folder).
    """
    files, _params, _vectors, _searcher = _build(
        Path(directory), vectors, metric, key, context, n_lists, progress, budget,
        target_recall, tuning, sidecars, own_copy=False)
    return files


def build_and_open_segment(directory: str | os.PathLike[str], vectors: np.ndarray, *,
                           metric: str, key: bytes, context: bytes, n_lists: int | None = None,
                           progress: Callable[[str], None] | None = None,
                           budget: BuildBudget = BACKGROUND,
                           target_recall: float = DEFAULT_TARGET_RECALL,
                           sidecars: Mapping[str, bytes] | None = None, borrow: bool = False,
                           **tuning: Any) -> tuple[SegmentFiles, "Segment"]:
    """``build_segment``, plus the searchable ``Segment`` kept from the build (no re-read and
    no ScaNN reload; the folder may be renamed afterwards). The segment keeps its own copy of
    the rows, so the caller may reuse ``vectors`` -- unless ``borrow``: the caller promises
    they never change again (a frozen memtable's rows), and an exact segment keeps them as
    they are (a flush of 100k x 384 copied 154 MB into fresh pages: 0.23 s, 1.5 us a row).
    Same errors."""
    from lsmvec.compaction.segment import Segment
    files, params, rows, searcher = _build(
        Path(directory), vectors, metric, key, context, n_lists, progress, budget,
        target_recall, tuning, sidecars, own_copy=not borrow)
    rows_file = next(e for e in files.files if e.name == VECTORS_FILE)
    return files, Segment(params, rows, searcher, (Path(directory) / VECTORS_FILE, key,
                                                   file_context(context, VECTORS_FILE),
                                                   rows_file.salt_bytes))


def _build(directory: Path, vectors: np.ndarray, metric: str, key: bytes, context: bytes,
           n_lists: int | None, progress: Callable[[str], None] | None,
           budget: BuildBudget, target_recall: float, tuning: dict[str, Any],
           sidecars: Mapping[str, bytes] | None, *,
           own_copy: bool) -> tuple[SegmentFiles, SearchParams, np.ndarray, Any]:
    started = time.monotonic()
    vectors = _checked_vectors(vectors)
    n, dim = vectors.shape
    params = choose_params(n, dim, metric, n_lists=n_lists, **tuning)
    target_recall = check_target_recall(target_recall)
    if not isinstance(budget, BuildBudget):
        raise InvalidTypeError(f"budget must be a BuildBudget, got {type(budget).__name__}")
    sidecars = dict(sidecars or {})
    for name in sidecars:
        if name not in SIDECAR_FILES:
            raise InvalidArgumentError(f"sidecars: {name!r} is not a segment sidecar file "
                                       f"(allowed: {', '.join(sorted(SIDECAR_FILES))})")
    # A trained Segment keeps no rows of its own (ScaNN holds them): no private copy then.
    copied = own_copy and params.kind != KIND_TREE_AH
    if copied:
        vectors = vectors.copy()
    _prepare_directory(directory)
    report = progress or (lambda stage: None)
    report("vectors")
    rows_file = Helper(functools.partial(write_sealed, directory / VECTORS_FILE, vectors, key,
                                         file_context(context, VECTORS_FILE)),
                       "lsmvec-seal-rows", in_background=params.kind == KIND_TREE_AH)
    sealed: dict[str, SealedFileInfo] = {}
    searcher = None
    dataset_stored = False
    try:
        if params.kind == KIND_TREE_AH:
            report("training")
            searcher = train_searcher(vectors, params, budget.training_threads)
            trained = params
            calibration = None

            def during_serialize() -> bool:  # runs while a child serializes the assets
                nonlocal calibration
                if tuning.get("leaves_to_search") is not None:
                    return True  # explicit leaves are the caller's choice
                calibration = calibrate(searcher.searcher, vectors, trained, target_recall)
                if calibration.keep_tree:
                    return True
                if trained.reorder_precision != "float32":
                    # An exact segment holds float32 rows in memory: 4x an int8 tier's re-scoring
                    # data, the very memory the caller chose the precision to save. Keep the
                    # tree at its best measured setting (calibrated_recall says what it reaches).
                    logger.warning("segment of %d x %d (%s re-scoring) kept as a tree although %s",
                                   n, dim, trained.reorder_precision, calibration.fallback or
                                   f"target recall {target_recall:.2f} is not reached")
                    return True
                return False

            report("sealing")
            out = seal_searcher(searcher, vectors, directory, key, context,
                                during=during_serialize, collapse=not budget.caller_waits)
            if calibration is not None:
                params = calibration.params
            if out is None:  # the calibration said: target missed, or exact is as cheap
                fallback = ((calibration.fallback if calibration is not None else "") or
                            f"exact: target recall {target_recall:.2f} not reached")
                logger.warning("segment of %d x %d stored exact (brute): %s", n, dim, fallback)
                searcher = None
                params = SearchParams(kind=KIND_BRUTE, metric=metric, distance=params.distance,
                                      fallback=fallback)
                if own_copy and not copied:
                    vectors = vectors.copy()
                    copied = True
            else:
                assets, dataset_stored = out
                sealed.update(assets)
    except BaseException:
        rows_file.wait()  # the helper's writes end before the caller removes the folder
        raise
    sealed[VECTORS_FILE] = rows_file.result()
    for name, data in sorted(sidecars.items()):
        sealed[name] = write_sealed(directory / name, data, key, file_context(context, name))
    sealed[SEGMENT_META_FILE] = write_sealed(
        directory / SEGMENT_META_FILE, encode_meta(params, n, dim, dataset_stored), key,
        file_context(context, SEGMENT_META_FILE))
    _fsync_directory(directory)
    report("done")
    files = SegmentFiles(
        files=tuple(FileEntry(name, info.size, info.sha256, info.salt)
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
    # A float64 sum of float32 rows cannot overflow, so it is finite exactly when every value
    # is: one pass, no n x d bool temporary (0.06 s vs 0.41 s for isfinite().all() at 1M x 128).
    if not np.isfinite(rows.sum(dtype=np.float64)):
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
