"""ScaNN searchers in and out of sealed segment files, through a private plaintext scratch folder.

ScaNN 1.4.2 only reads and writes plaintext folders. So a build serializes into a scratch
folder (memory-backed /dev/shm when usable, mode 0700), seals each asset into the segment under
its own name, and removes the scratch at once; a load does the reverse. The scratch is removed
in a ``finally`` on every path, so plaintext never outlives the call.

Safety rules from reliability.md: ScaNN never gets docids (its loader unpickles
``scann_docids.pkl``), assets are serialized with relative paths so a segment folder can move,
and only names from ``filenames.SCANN_ASSET_FILES`` are ever sealed or loaded.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from scann.scann_ops.py import scann_ops_pybind

from compaction.filenames import (SCANN_ASSET_FILES, SCANN_ASSETS_INDEX_FILE,
                                  SCANN_DATASET_FILE, SCANN_DOCIDS_FILE, SCRATCH_PREFIX)
from compaction.scann_params import SearchParams
from compaction.scann_serialize import serialize_searcher
from compaction.sealed_file import SealedFileInfo, read_sealed, write_sealed
from wal.errors import CorruptionError, LsmvecError, storage_error_from

__all__ = [
    "SHM_DIR",
    "file_context",
    "make_scratch_dir",
    "remove_scratch_dir",
    "train_searcher",
    "seal_searcher",
    "load_sealed_searcher",
]

logger = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
_CONTEXT_LEN = struct.Struct(">I")
_ASSET_PATH_RE = re.compile(r'asset_path:\s*"([^"]*)"')


def file_context(context: bytes, name: str) -> bytes:
    """Associated data binding one file to its segment (``context``: index | segment id) and
    to its own name; length-prefixed so no two (context, name) pairs collide."""
    return _CONTEXT_LEN.pack(len(context)) + bytes(context) + name.encode("utf-8")


def make_scratch_dir(fallback_parent: Path) -> Path:
    """A fresh 0700 folder for plaintext ScaNN files: under /dev/shm when it is a writable
    folder (never touches a disk), else under ``fallback_parent``. Raises StorageError."""
    parent = SHM_DIR if SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK | os.X_OK) else None
    try:
        if parent is not None:
            try:
                return Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=parent))
            except OSError:
                logger.warning("cannot use %s for ScaNN scratch; using %s", parent,
                               fallback_parent)
        return Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=fallback_parent))
    except OSError as exc:
        raise storage_error_from(exc, f"create ScaNN scratch folder in {fallback_parent}") from exc


def remove_scratch_dir(path: Path) -> None:
    """Delete a scratch folder and its plaintext; a failure is logged, never raised (the
    caller is usually already handling another error)."""
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        logger.error("could not remove ScaNN scratch folder %s", path)


def default_training_threads() -> int:
    """Threads ScaNN trains with unless told: every usable core but one (at least one), so
    training leaves a core to the application -- an event loop above all. On the 2-vCPU
    benchmark VM, training on both made the host stall the whole VM for 20-30 ms at a time
    (a separate idle process saw the same gaps); on one it never did, for about 35% more
    training time. ``LSMVEC_TRAINING_THREADS=N`` sets it (0: every core)."""
    raw = os.environ.get("LSMVEC_TRAINING_THREADS")
    if raw is not None:
        if raw.strip().isdigit():
            return int(raw)
        logger.warning("LSMVEC_TRAINING_THREADS=%r is not an int >= 0; using the default", raw)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def train_searcher(vectors: np.ndarray, params: SearchParams,
                   training_threads: int | None = None) -> scann_ops_pybind.ScannSearcher:
    """Train a tree + asymmetric-hashing + exact-reorder ScaNN searcher over ``vectors``, with
    ``training_threads`` (None: ``default_training_threads()``; 0: ScaNN's own default, every
    core). Rows are ScaNN's own datapoint indexes: no docids, ever."""
    if training_threads is None:
        training_threads = default_training_threads()
    builder = scann_ops_pybind.builder(vectors, max(1, min(10, vectors.shape[0])),
                                       params.distance)
    builder = builder.tree(num_leaves=params.num_leaves,
                           num_leaves_to_search=params.leaves_to_search,
                           training_sample_size=params.training_sample_size,
                           training_iterations=params.training_iterations)
    builder = builder.score_ah(params.dims_per_block,
                               anisotropic_quantization_threshold=params.anisotropic_threshold,
                               training_sample_size=params.training_sample_size)
    builder = builder.reorder(params.reorder)
    if training_threads:
        builder = builder.set_n_training_threads(training_threads)
    return builder.build()


def seal_searcher(searcher: scann_ops_pybind.ScannSearcher, vectors: np.ndarray,
                  directory: Path, key: bytes, context: bytes,
                  ) -> tuple[dict[str, SealedFileInfo], bool]:
    """Serialize ``searcher`` into a scratch folder and seal every asset into ``directory``
    under its own name. ScaNN's ``dataset.npy`` is left out when its rows equal ``vectors``
    byte for byte (it is rebuilt from ``vectors.bin`` at load: half the disk). The serialize
    runs in a forked child where possible (see ``scann_serialize``).

    Returns ({name: SealedFileInfo}, dataset_stored). Raises LsmvecError when ScaNN wrote a
    file name this module does not know (refusing to seal blindly), StorageError on I/O errors.
    """
    scratch = make_scratch_dir(directory.parent)
    try:
        dataset_stored = serialize_searcher(searcher, scratch, vectors)
        names = sorted(os.listdir(scratch))
        unknown = [name for name in names if name not in SCANN_ASSET_FILES]
        if unknown or SCANN_ASSETS_INDEX_FILE not in names:
            raise LsmvecError(f"ScaNN wrote unexpected assets {unknown or names}; "
                              f"refusing to seal them (is ScaNN a different version?)")
        sealed: dict[str, SealedFileInfo] = {}
        for name in names:
            data = (scratch / name).read_bytes()
            sealed[name] = write_sealed(directory / name, data, key, file_context(context, name))
        return sealed, dataset_stored
    except OSError as exc:
        raise storage_error_from(exc, f"serialize ScaNN searcher for {directory}") from exc
    finally:
        remove_scratch_dir(scratch)


def load_sealed_searcher(directory: Path, asset_files: dict[str, tuple[int, str]],
                         vectors: np.ndarray, key: bytes, context: bytes,
                         loader: Callable[[str], scann_ops_pybind.ScannSearcher] | None = None,
                         ) -> scann_ops_pybind.ScannSearcher:
    """Unseal the ScaNN assets ``{name: (size, sha256)}`` of ``directory`` into a fresh scratch
    folder (plus ``dataset.npy`` rebuilt from ``vectors`` when not stored), load the searcher,
    and remove the scratch before returning (also on error).

    The caller has already checked that the folder holds exactly the expected names. Raises
    CorruptionError when an asset fails authentication or its checksum, when the asset list
    names a path outside the folder, or when ScaNN rejects the assets.
    """
    scratch = make_scratch_dir(directory.parent)
    try:
        for name, (size, sha256) in asset_files.items():
            if name not in SCANN_ASSET_FILES:
                raise CorruptionError("not a ScaNN asset name", str(directory / name))
            data = read_sealed(directory / name, key, file_context(context, name),
                               expected_size=size, expected_sha256=sha256)
            if name == SCANN_ASSETS_INDEX_FILE:
                _check_asset_paths(bytes(data), directory / name)
            _write_private(scratch / name, data)
        if SCANN_DATASET_FILE not in asset_files:
            with open(scratch / SCANN_DATASET_FILE, "xb") as f:
                np.lib.format.write_array(f, vectors, allow_pickle=False)
        if (scratch / SCANN_DOCIDS_FILE).exists():  # cannot happen: the folder is ours
            raise CorruptionError("refusing to load a ScaNN docids pickle", str(scratch))
        load = loader or scann_ops_pybind.load_searcher
        try:
            return load(str(scratch))
        except (RuntimeError, ValueError) as exc:
            raise CorruptionError(f"ScaNN rejected the segment's assets: {exc}",
                                  str(directory)) from exc
    except OSError as exc:
        raise storage_error_from(exc, f"unseal ScaNN assets of {directory}") from exc
    finally:
        remove_scratch_dir(scratch)


def _check_asset_paths(pbtxt: bytes, path: Path) -> None:
    """Every asset path must be a bare known name (relative to the scratch folder): an
    absolute or ``..`` path would make ScaNN read outside the segment."""
    for asset in _ASSET_PATH_RE.findall(pbtxt.decode("utf-8", errors="replace")):
        if asset not in SCANN_ASSET_FILES:
            raise CorruptionError(f"ScaNN asset list names {asset!r}", str(path))


def _write_private(path: Path, data: bytes | bytearray) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(fd, "wb", closefd=True) as f:
        f.write(data)
