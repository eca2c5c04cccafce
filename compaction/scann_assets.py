"""ScaNN searchers in and out of sealed segment files, with no plaintext file that can outlive us.

ScaNN 1.4.2 only reads and writes folders of files. So every asset ScaNN is to read or write
lives in an anonymous memory file (``memfd_create``) of this process, and the folder ScaNN is
given -- a private scratch folder, 0700, under memory-backed /dev/shm when usable, else beside
the segment -- holds only symlinks named by the asset names pointing at
``/proc/<our pid>/fd/<n>``. ScaNN opens the names with a plain ``open`` (``O_TRUNC`` when
writing, also in the forked serialize child of ``scann_serialize``), which goes through the
links. The plaintext therefore exists only in memory that the kernel frees when the process
dies, even by ``kill -9``: a folder left behind holds dangling links and nothing else.

A build prepares a link for every name of ``filenames.SCANN_ASSET_FILES``, lets ScaNN serialize,
and seals each asset it wrote (a non-empty memory file) into the segment under its own name; a
load unseals each asset into a memory file (plus ``dataset.npy`` rebuilt from the rows when not
stored) and hands the folder to ScaNN. The folder and the memory files are removed in a
``finally`` on every path. Where memory files or /proc are missing, the assets are plain 0600
files in the scratch folder, as before.

Scratch folders are named ``lsmvec-scann-<pid>-<pid namespace>-<random>`` and every
``make_scratch_dir`` first sweeps (``sweep_stale_scratch``) the folders of its two parents whose
process no longer exists in our pid namespace (never a live one's; other namespaces are left
alone), and folders of the old unnamed format older than an hour: leftovers of a ``kill -9``.

Safety rules from reliability.md: ScaNN never gets docids (its loader unpickles
``scann_docids.pkl``), assets are serialized with relative paths so a segment folder can move,
only names from ``filenames.SCANN_ASSET_FILES`` are ever sealed or loaded, and a loaded asset
list may name nothing but those bare names.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import io
import logging
import mmap
import os
import re
import shutil
import stat
import struct
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import numpy as np
from scann.scann_ops.py import scann_builder, scann_ops_pybind

from lsmvec.compaction.filenames import (SCANN_ASSET_FILES, SCANN_ASSETS_INDEX_FILE,
                                  SCANN_DATASET_FILE, SCANN_DOCIDS_FILE, SCRATCH_PREFIX,
                                  is_legacy_scratch_dir_name, parse_scratch_dir_name,
                                  scratch_dir_prefix)
from lsmvec.compaction.scann_logging import set_scann_log_level
from lsmvec.compaction.scann_params import SearchParams
from lsmvec.compaction.scann_serialize import serialize_searcher
from lsmvec.compaction.sealed_batch import MemoryFileRange, SealedRead, read_sealed_files
from lsmvec.compaction.sealed_file import (SealedFileInfo, read_pins, read_sealed,
                                           sealed_plaintext_size,
                                           write_sealed)
from lsmvec.wal.errors import CorruptionError, LsmvecError, storage_error_from

__all__ = [
    "SHM_DIR",
    "LEGACY_SCRATCH_MAX_AGE_S",
    "file_context",
    "make_scratch_dir",
    "remove_scratch_dir",
    "sweep_stale_scratch",
    "train_searcher",
    "seal_searcher",
    "load_sealed_searcher",
    "SealedRows",
]

logger = logging.getLogger(__name__)
set_scann_log_level()  # ScaNN's INFO / WARNING lines stay off fd 2 (see scann_logging)

SHM_DIR = Path("/dev/shm")
LEGACY_SCRATCH_MAX_AGE_S = 3600.0
"""A scratch folder of the old format (no owner pid in its name) this much older than its last
change is a crash leftover: no build or load keeps its scratch for more than seconds."""
_CONTEXT_LEN = struct.Struct(">I")
_ASSET_PATH_RE = re.compile(r'asset_path:\s*"([^"]*)"')


def file_context(context: bytes, name: str) -> bytes:
    """Associated data binding one file to its segment (``context``: index | segment id) and
    to its own name; length-prefixed so no two (context, name) pairs collide."""
    return _CONTEXT_LEN.pack(len(context)) + bytes(context) + name.encode("utf-8")


# ----------------------------------------------------------------------------- scratch folders

def make_scratch_dir(fallback_parent: Path) -> Path:
    """A fresh 0700 folder named after this process (``lsmvec-scann-<pid>-<pidns>-<random>``):
    under /dev/shm when it is a writable folder, else under ``fallback_parent``. Sweeps the
    leftovers of dead processes from both first. Raises StorageError."""
    parent = SHM_DIR if SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK | os.X_OK) else None
    sweep_stale_scratch([p for p in (parent, fallback_parent) if p is not None])
    prefix = scratch_dir_prefix(os.getpid(), _pid_namespace())
    try:
        if parent is not None:
            try:
                return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
            except OSError:
                logger.warning("cannot use %s for ScaNN scratch; using %s", parent,
                               fallback_parent)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=fallback_parent))
    except OSError as exc:
        raise storage_error_from(exc, f"create ScaNN scratch folder in {fallback_parent}") from exc


def remove_scratch_dir(path: Path) -> None:
    """Delete a scratch folder and its links (or plaintext files); a failure is logged, never
    raised (the caller is usually already handling another error)."""
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        logger.error("could not remove ScaNN scratch folder %s", path)


def sweep_stale_scratch(parents: Iterable[Path], now: float | None = None) -> list[Path]:
    """Remove the scratch folders under ``parents`` that no live process owns: named after a
    pid of our pid namespace that no longer exists, or of the old unnamed format and older
    than LEGACY_SCRATCH_MAX_AGE_S. Only our own user's real folders are touched; a pid that
    exists (even another user's, or a zombie) keeps its folder, and so does any folder of
    another pid namespace. Never raises; returns the folders removed."""
    now = time.time() if now is None else now
    namespace = _pid_namespace()
    removed: list[Path] = []
    for parent in parents:
        try:
            with os.scandir(parent) as entries:
                candidates = [e for e in entries if e.name.startswith(SCRATCH_PREFIX)]
        except OSError:
            continue
        for entry in candidates:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue
            owner = parse_scratch_dir_name(entry.name)
            if owner is not None:
                pid, pid_ns = owner
                stale = pid_ns == namespace and not _pid_alive(pid)
            else:
                stale = (is_legacy_scratch_dir_name(entry.name)
                         and now - st.st_mtime > LEGACY_SCRATCH_MAX_AGE_S)
            if stale:
                path = Path(entry.path)
                remove_scratch_dir(path)
                if not os.path.lexists(path):
                    # housekeeping, nothing for a user to act on: info, not a line on a CLI's
                    # stderr (a killed process's folder swept by the next build or load)
                    logger.info("removed ScaNN scratch folder %s left by a dead process",
                                   path)
                    removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid < 1:
        return True  # not a process we could have been: never sweep on it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: it exists (another user's)
        return True
    return True


@functools.lru_cache(maxsize=None)
def _pid_namespace() -> int:
    """The inode of our pid namespace (0 when /proc does not say): pids are only comparable
    within one namespace (containers may share /dev/shm or the index folder)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


# ----------------------------------------------------------------------------- assets in memory

@functools.lru_cache(maxsize=None)
def _memory_files_usable() -> bool:
    return hasattr(os, "memfd_create") and os.path.isdir(f"/proc/{os.getpid()}/fd")


class _ScratchAssets:
    """The assets of one scratch folder: memory files reached through symlinks (or, where
    that is impossible, plain 0600 files). ``close_files()`` frees the memory files."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.fds: dict[str, int] = {}
        self.maps: list[mmap.mmap] = []
        self.plain_fds: list[int] = []  # plain files being filled (no memory files)
        self.in_memory = _memory_files_usable()

    def link(self, name: str) -> int | None:
        """A fresh empty memory file for ``name``, linked from the folder; None when memory
        files cannot be used (the caller then writes a plain file)."""
        if not self.in_memory:
            return None
        try:
            fd = os.memfd_create(f"lsmvec-{name}", os.MFD_CLOEXEC)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.EOPNOTSUPP):
                raise  # EMFILE, ENOMEM: a real failure
            return self._no_memory(f"memfd_create: {exc}")
        self.fds[name] = fd
        link = self.scratch / name
        os.symlink(f"/proc/{os.getpid()}/fd/{fd}", link)
        try:
            seen = os.stat(link)
        except OSError as exc:
            seen = exc
        mine = os.fstat(fd)
        if isinstance(seen, OSError) or (mine.st_dev, mine.st_ino) != (seen.st_dev, seen.st_ino):
            os.unlink(link)
            os.close(self.fds.pop(name))
            return self._no_memory(f"{link} does not reach it ({seen})")
        return fd

    def _no_memory(self, why: str) -> None:
        self.in_memory = False  # plain files from now on, for this folder
        logger.warning("ScaNN scratch %s cannot use memory files (%s); using plain files",
                       self.scratch, why)
        return None

    def prepare(self, names: Iterable[str]) -> None:
        """Empty the folder and free any memory file, then link a fresh one per name."""
        self.close_files()
        for name in os.listdir(self.scratch):
            os.unlink(self.scratch / name)
        for name in sorted(names):
            if self.link(name) is None:
                break

    def _target(self, name: str) -> tuple[int, bool]:
        """(descriptor to write ``name``'s contents to, whether the writer closes it)."""
        fd = self.link(name)
        if fd is not None:
            return fd, False
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        return os.open(self.scratch / name, flags, 0o600), True

    def write(self, name: str, data: bytes | bytearray) -> None:
        fd, owned = self._target(name)
        with open(fd, "wb", closefd=owned) as f:
            f.write(data)

    def sized(self, name: str, size: int) -> int:
        """A descriptor of the fresh ``size``-byte asset ``name`` for decryptions written
        straight into it (``sealed_batch.MemoryFileRange``: no plaintext buffer of the file's
        size); open until ``close_files``."""
        fd, owned = self._target(name)
        if owned:
            self.plain_fds.append(fd)
        os.ftruncate(fd, size)
        return fd

    def write_array(self, name: str, array: np.ndarray) -> None:
        fd, owned = self._target(name)
        with open(fd, "wb", closefd=owned) as f:
            np.lib.format.write_array(f, array, allow_pickle=False)

    def written(self) -> dict[str, bytes | mmap.mmap]:
        """{name: contents} of every asset in the folder: a link of ours whose memory file is
        not empty (an empty one was not written), mapped read-only rather than copied (128 MB
        of hashed rows at 1M x 128; the maps close with ``close_files``), or a plain file
        (ScaNN replaced the link, or no memory files). Memory files no longer linked are freed.
        Raises LsmvecError for a name this module does not know: nothing is sealed blindly."""
        names = sorted(os.listdir(self.scratch))
        unknown = [name for name in names if name not in SCANN_ASSET_FILES]
        if unknown:
            raise LsmvecError(f"ScaNN wrote unexpected assets {unknown}; refusing to seal "
                              f"them (is ScaNN a different version?)")
        for name in [n for n in self.fds if n not in names]:  # e.g. a dropped dataset.npy
            os.close(self.fds.pop(name))
        out: dict[str, bytes | mmap.mmap] = {}
        for name in names:
            path = self.scratch / name
            if name in self.fds and path.is_symlink():
                size = os.fstat(self.fds[name]).st_size
                if size:
                    out[name] = mmap.mmap(self.fds[name], size, prot=mmap.PROT_READ)
                    self.maps.append(out[name])
                continue
            if path.is_symlink() or not path.is_file():
                raise LsmvecError(f"ScaNN scratch entry {name} is not an asset file")
            if self.in_memory:
                logger.warning("ScaNN replaced the memory link %s with a plain file", path)
            out[name] = path.read_bytes()
        return out

    def close_files(self) -> None:
        for mapped in self.maps:
            with contextlib.suppress(BufferError):  # a view still held (an error's traceback):
                mapped.close()  # the map closes when that view goes
        self.maps.clear()
        for fd in [*self.fds.values(), *self.plain_fds]:
            os.close(fd)
        self.fds.clear()
        self.plain_fds.clear()


# ----------------------------------------------------------------------------- searchers

_REORDER_TYPES = {"float32": scann_builder.ReorderType.FLOAT32,
                  "bfloat16": scann_builder.ReorderType.BFLOAT16,
                  "int8": scann_builder.ReorderType.INT8}
"""SearchParams.reorder_precision -> ScaNN's ReorderType."""


def train_searcher(vectors: np.ndarray, params: SearchParams,
                   training_threads: int) -> scann_ops_pybind.ScannSearcher:
    """Train a tree + asymmetric-hashing + exact-reorder ScaNN searcher over ``vectors`` with
    ``training_threads`` threads (>= 1: the caller decides -- every core for an explicit
    ``train()``, one for a background merge; see ``compactor.usable_cores``). Rows are ScaNN's
    own datapoint indexes: no docids, ever. Raises ValueError for fewer than one thread."""
    if isinstance(training_threads, bool) or not isinstance(training_threads, int) \
            or training_threads < 1:
        raise ValueError(f"training_threads must be an int >= 1, got {training_threads!r}")
    builder = scann_ops_pybind.builder(vectors, max(1, min(10, vectors.shape[0])),
                                       params.distance)
    builder = builder.tree(num_leaves=params.num_leaves,
                           num_leaves_to_search=params.leaves_to_search,
                           training_sample_size=params.training_sample_size,
                           training_iterations=params.training_iterations)
    builder = builder.score_ah(params.dims_per_block,
                               anisotropic_quantization_threshold=params.anisotropic_threshold,
                               training_sample_size=params.training_sample_size)
    builder = builder.reorder(params.reorder, quantize=_REORDER_TYPES[params.reorder_precision])
    return builder.set_n_training_threads(training_threads).build()


def seal_searcher(searcher: scann_ops_pybind.ScannSearcher, vectors: np.ndarray,
                  directory: Path, key: bytes, context: bytes,
                  during: Callable[[], bool] | None = None, collapse: bool = True,
                  ) -> tuple[dict[str, SealedFileInfo], bool] | None:
    """Serialize ``searcher`` through a scratch folder of memory-file links and seal every
    asset it wrote into ``directory`` under its own name. ScaNN's ``dataset.npy`` is left out
    when its rows equal ``vectors`` byte for byte (it is rebuilt from ``vectors.bin`` at load:
    half the disk). The serialize runs in a forked child where possible (see
    ``scann_serialize``), and ``during()`` -- the build's calibration -- meanwhile runs here;
    when it returns False nothing is serialized or sealed and the result is None. ``collapse``:
    see ``serialize_searcher``.

    Returns ({name: SealedFileInfo}, dataset_stored). Raises LsmvecError when ScaNN wrote a
    file name this module does not know or left out an asset its list names (refusing to seal
    blindly), StorageError on I/O errors, and whatever ``during`` raises.
    """
    scratch = make_scratch_dir(directory.parent)
    assets = _ScratchAssets(scratch)
    try:
        assets.prepare(SCANN_ASSET_FILES)
        serialized, dataset_stored = serialize_searcher(
            searcher, scratch, vectors, reset=lambda: assets.prepare(SCANN_ASSET_FILES),
            during=during, collapse=collapse)
        if not serialized:
            return None
        written = assets.written()
        if SCANN_ASSETS_INDEX_FILE not in written:
            raise LsmvecError(f"ScaNN wrote no {SCANN_ASSETS_INDEX_FILE} (only "
                              f"{sorted(written)}); refusing to seal (is ScaNN a different "
                              f"version?)")
        listed = set(_ASSET_PATH_RE.findall(
            bytes(written[SCANN_ASSETS_INDEX_FILE]).decode("utf-8", errors="replace")))
        missing = sorted(listed - set(written) - {SCANN_DATASET_FILE})
        if missing:
            raise LsmvecError(f"ScaNN's asset list names {missing} but it wrote no such file")
        sealed: dict[str, SealedFileInfo] = {}
        for name in sorted(written):
            sealed[name] = write_sealed(directory / name, written[name], key,
                                        file_context(context, name))
        return sealed, dataset_stored
    except OSError as exc:
        raise storage_error_from(exc, f"serialize ScaNN searcher for {directory}") from exc
    finally:
        remove_scratch_dir(scratch)
        assets.close_files()


class SealedRows(NamedTuple):
    """A sealed file of a segment as the manifest records it (``shape``: for vectors.bin, the
    rows a load turns into ScaNN's ``dataset.npy``)."""

    path: Path
    size: int
    sha256: str
    context: bytes
    """The file's own associated data (``file_context(segment context, file name)``)."""
    shape: tuple[int, int] | None = None
    salt: str = ""
    """The header's salt as the manifest records it ("" for segments from before: then the
    SHA-256 is checked; sealed_file.read_pins)."""


def load_sealed_searcher(directory: Path, asset_files: dict[str, tuple[int, str, str]],
                         rows: np.ndarray | SealedRows, key: bytes, context: bytes,
                         loader: Callable[[str], scann_ops_pybind.ScannSearcher] | None = None,
                         threads: int = 1) -> scann_ops_pybind.ScannSearcher:
    """Unseal the ScaNN assets ``{name: (size, sha256, salt)}`` of ``directory`` into memory files
    linked from a fresh scratch folder -- each authenticated and decrypted chunk by chunk into
    its memory file, no plaintext buffer of its size -- plus ``dataset.npy`` rebuilt from ``rows``
    when not stored (an array, or the sealed vectors.bin decrypted the same way: at 1M x 128
    that spared a zero-filled 512 MB buffer and a 512 MB copy), load the searcher, and remove
    the folder and free the memory files before returning (also on error). Every file is
    wholly checked (AES-GCM, size, SHA-256) before ScaNN reads a byte of the folder
    (sealed_batch: the plaintext is written into the memory files with pwrite, 1.25 s -> 1.0 s
    of unsealing at 1M x 128). ``threads`` > 1 spreads the checks; on the shared 2-core
    reference machine two were slower (1.3-1.8 s vs 1.0 s at 1M x 128: the
    checksum then reads each file a second time, and no core was idle), hence one by default.

    The caller has already checked that the folder holds exactly the expected names. Raises
    CorruptionError when an asset (or the sealed rows) fails authentication or its checksum,
    when the asset list names a path outside the folder, or when ScaNN rejects the assets.
    """
    scratch = make_scratch_dir(directory.parent)
    assets = _ScratchAssets(scratch)
    try:
        listed: set[str] = set()
        unseal: list[SealedRead] = []  # every other file, checked together below
        for name, (size, sha256, salt) in asset_files.items():
            if name not in SCANN_ASSET_FILES:
                raise CorruptionError("not a ScaNN asset name", str(directory / name))
            if name == SCANN_ASSETS_INDEX_FILE:
                data = read_sealed(directory / name, key, file_context(context, name),
                                   expected_size=size, **read_pins(sha256, salt))
                listed = _check_asset_paths(bytes(data), directory / name)
                assets.write(name, data)
                continue
            path = directory / name
            plain = sealed_plaintext_size(path, size)
            unseal.append(SealedRead(path, key, file_context(context, name),
                                     MemoryFileRange(assets.sized(name, plain), 0, plain),
                                     size, **read_pins(sha256, salt)))
        # rebuilt only where ScaNN's list names it: a bfloat16 / int8 reorder has no float32
        # dataset, and handing ScaNN one anyway would cost the memory the precision saves
        if SCANN_DATASET_FILE not in asset_files and SCANN_DATASET_FILE in listed:
            if isinstance(rows, SealedRows):
                header = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    header, {"descr": "<f4", "fortran_order": False, "shape": tuple(rows.shape)})
                head = header.getvalue()
                plain = rows.shape[0] * rows.shape[1] * 4
                fd = assets.sized(SCANN_DATASET_FILE, len(head) + plain)
                os.pwrite(fd, head, 0)  # 128 bytes: one write
                unseal.append(SealedRead(rows.path, key, rows.context,
                                         MemoryFileRange(fd, len(head), plain), rows.size,
                                         **read_pins(rows.sha256, rows.salt)))
            else:
                assets.write_array(SCANN_DATASET_FILE, rows)
        read_sealed_files(unseal, threads)
        if os.path.lexists(scratch / SCANN_DOCIDS_FILE):  # cannot happen: the folder is ours
            raise CorruptionError("refusing to load a ScaNN docids pickle", str(scratch))
        load = loader or scann_ops_pybind.load_searcher
        try:
            searcher = load(str(scratch))
        except (RuntimeError, ValueError) as exc:
            raise CorruptionError(f"ScaNN rejected the segment's assets: {exc}",
                                  str(directory)) from exc
        return searcher
    except OSError as exc:
        raise storage_error_from(exc, f"unseal ScaNN assets of {directory}") from exc
    finally:
        remove_scratch_dir(scratch)
        assets.close_files()


def _check_asset_paths(pbtxt: bytes, path: Path) -> set[str]:
    """The asset names ScaNN's list holds. Every asset path must be a bare known name (relative
    to the scratch folder): an absolute or ``..`` path would make ScaNN read outside the
    segment."""
    listed = set()
    for asset in _ASSET_PATH_RE.findall(pbtxt.decode("utf-8", errors="replace")):
        if asset not in SCANN_ASSET_FILES:
            raise CorruptionError(f"ScaNN asset list names {asset!r}", str(path))
        listed.add(asset)
    return listed
