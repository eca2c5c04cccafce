"""Serialize a trained ScaNN searcher without stalling the parent's other threads.

ScaNN 1.4.2's ``serialize()`` holds the GIL for its whole run (about 0.4 s for 100k x 384),
which freezes every event loop and query thread in the process. On Linux the searcher is
therefore serialized by a forked child: the child shares the searcher copy-on-write, writes
the assets into the (private) scratch folder, drops ``dataset.npy`` when it equals the
segment's own rows, and exits with a code saying which. The parent waits in ``waitpid``
(GIL released); only the fork itself holds the GIL, for a time that grows with the number of
page-table entries to copy: big anonymous mappings are first collapsed into huge pages
(MADV_COLLAPSE, GIL released), which cut it from about 20 ms to about 2 ms at 1.2 GB.

The child runs nothing but ScaNN's serializer and a file comparison, then ``os._exit``: it
never touches LMDB, the log, locks or logging. It first asks the kernel for SIGKILL when the
parent dies (PR_SET_PDEATHSIG), so a parent killed by ``kill -9`` does not leave it running with
the plaintext assets. Any failure or a child that does not finish in time falls back to
serializing in this process (after ``reset()``, which the caller uses to give the scratch folder
its fresh memory-backed links again), so the fork is only ever an optimisation.
``LSMVEC_SERIALIZE_IN_CHILD=0`` turns it off.

The scratch folder may hold symlinks to anonymous memory files of the parent (see
``scann_assets``): ScaNN opens each asset name with a plain ``open(O_TRUNC)``, which writes
through such a link; a name it does not write stays an empty file, which counts as absent.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lsmvec.compaction.filenames import SCANN_DATASET_FILE

__all__ = ["serialize_searcher", "fork_usable", "CHILD_TIMEOUT_S"]

logger = logging.getLogger(__name__)

CHILD_TIMEOUT_S = 600.0
"""A child still running after this long is killed and the parent serializes itself."""

_EXIT_DATASET_DROPPED = 10
_EXIT_DATASET_KEPT = 11
_EXIT_FAILED = 12
_POLL_S = 0.002
_PR_SET_PDEATHSIG = 1


def fork_usable() -> bool:
    """True where serializing in a forked child is safe and wanted (Linux, not disabled)."""
    if os.environ.get("LSMVEC_SERIALIZE_IN_CHILD", "1") in ("0", "false", "no"):
        return False
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def serialize_searcher(searcher: Any, scratch: Path, vectors: np.ndarray,
                       timeout_s: float | None = None,
                       reset: Callable[[], None] | None = None) -> bool:
    """Serialize ``searcher`` into the folder ``scratch`` (empty, or prepared with links to
    memory files); returns whether ``dataset.npy`` had to be kept (ScaNN's copy of the rows
    differs from ``vectors``). After a failed child, ``reset()`` restores the folder's prepared
    state (default: remove whatever the child left). Raises OSError / RuntimeError from an
    in-process serialize."""
    if fork_usable():
        kept = _serialize_in_child(searcher, scratch, vectors,
                                   CHILD_TIMEOUT_S if timeout_s is None else timeout_s)
        if kept is not None:
            return kept
        if reset is not None:
            reset()
        else:
            for name in os.listdir(scratch):  # whatever a failed child left
                os.unlink(scratch / name)
    searcher.serialize(str(scratch), relative_path=True)
    return _settle_dataset(scratch, vectors)


def _serialize_in_child(searcher: Any, scratch: Path, vectors: np.ndarray,
                        timeout_s: float) -> bool | None:
    """None when the child failed or timed out (the caller serializes itself)."""
    _trim_heap()  # fewer resident pages: the fork copies their page tables holding the GIL
    _collapse_to_huge_pages()  # and far fewer page-table entries for the rest
    prctl = _libc("prctl")  # looked up before the fork: no dlopen in the child
    parent = os.getpid()
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():  # 3.12+ warns about fork in a threaded process
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError as exc:
        logger.warning("cannot fork to serialize ScaNN (%s); serializing in-process", exc)
        return None
    if pid == 0:  # child: never return into the parent's frames
        code = _EXIT_FAILED
        try:
            if prctl is not None:  # die with the parent (its memory files die with it anyway)
                prctl(ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGKILL),
                      ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
            if os.getppid() != parent:  # the parent died before the prctl took effect
                os._exit(code)
            searcher.serialize(str(scratch), relative_path=True)
            code = _EXIT_DATASET_KEPT if _settle_dataset(scratch, vectors) else _EXIT_DATASET_DROPPED
        finally:
            os._exit(code)
    logger.debug("forked ScaNN serialize child %d in %.1f ms", pid,
                 (time.perf_counter() - started) * 1000)
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            logger.warning("ScaNN serialize child %d ran over %.0fs; killed it, serializing "
                           "in-process", pid, timeout_s)
            return None
        time.sleep(_POLL_S)
    code = os.waitstatus_to_exitcode(status)
    if code in (_EXIT_DATASET_DROPPED, _EXIT_DATASET_KEPT):
        return code == _EXIT_DATASET_KEPT
    logger.warning("ScaNN serialize child %d ended with status %d; serializing in-process",
                   pid, code)
    return None


@functools.lru_cache(maxsize=None)
def _libc(name: str, *argtypes: Any) -> Any:
    """glibc's function `name` through ctypes (which releases the GIL around each call), or
    None where there is no glibc."""
    try:
        function = getattr(ctypes.CDLL("libc.so.6", use_errno=True), name)
    except (OSError, AttributeError):
        return None
    if argtypes:
        function.argtypes = list(argtypes)
    return function


def _trim_heap() -> None:
    """Return glibc's free heap pages (ScaNN training leaves tens of MB per arena) to the
    system."""
    malloc_trim = _libc("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)


_MADV_COLLAPSE = 25  # Linux 6.1+
_HUGE = 2 << 20
COLLAPSE_MIN_BYTES = 8 << 20
"""Anonymous mappings at least this big are collapsed into huge pages before the fork."""
_COLLAPSE_STEP = 32 << 20


def _collapse_to_huge_pages() -> None:
    """madvise(MADV_COLLAPSE) every big private anonymous mapping (malloc's big chunks: ScaNN's
    training buffers, sealed-file reads): the fork copies one entry per 2 MiB huge page
    instead of 512 per 4 KiB page, which on this kind of VM took a 1.2 GB process's fork from
    ~20 ms to ~2 ms of GIL held. The collapse copies memory, but in a syscall that ctypes runs
    with the GIL released. Kernels without MADV_COLLAPSE refuse it (EINVAL), as they may refuse
    a single mapping; nothing else changes then."""
    madvise = _libc("madvise", ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if madvise is None:
        return
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.readlines()
    except OSError:
        return
    for line in lines:
        fields = line.split()
        if len(fields) != 5 or fields[1] != "rw-p":  # private anonymous only; not [heap], whose
            continue  # pages every thread's small allocations keep touching while they move
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        lo, hi = (lo + _HUGE - 1) & ~(_HUGE - 1), hi & ~(_HUGE - 1)
        if hi - lo < COLLAPSE_MIN_BYTES:
            continue
        for start in range(lo, hi, _COLLAPSE_STEP):  # in steps, so threads waiting to map or
            madvise(start, min(_COLLAPSE_STEP, hi - start), _MADV_COLLAPSE)  # unmap get turns
            time.sleep(0)  # (a refusal -- EINVAL, EAGAIN -- leaves that range as it is)


def _settle_dataset(scratch: Path, vectors: np.ndarray) -> bool:
    """Remove ScaNN's ``dataset.npy`` when it equals ``vectors`` bit for bit (the segment's
    vectors.bin rebuilds it at load: half the disk). Returns whether it was kept. An empty
    file (a prepared link ScaNN did not write) counts as absent."""
    path = scratch / SCANN_DATASET_FILE
    if not path.exists() or path.stat().st_size == 0:
        return False
    if _dataset_matches(path, vectors):
        path.unlink()
        return False
    return True


def _dataset_matches(path: Path, vectors: np.ndarray) -> bool:
    with open(path, "rb") as f:
        major, _minor = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if major == 1
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        if shape != vectors.shape or fortran or dtype != np.dtype("<f4"):
            return False
        stored = np.fromfile(f, dtype="<f4", count=vectors.size)
    # Bit-for-bit (as uint32) so -0.0 vs 0.0 counts as a difference; no extra copies.
    return stored.size == vectors.size and np.array_equal(
        stored.view(np.uint32), vectors.reshape(-1).view(np.uint32))
