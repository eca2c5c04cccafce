"""Serialize a trained ScaNN searcher without stalling the parent's other threads.

ScaNN 1.4.2's ``serialize()`` holds the GIL for its whole run (about 0.4 s for 100k x 384),
which freezes every event loop and query thread in the process. On Linux the searcher is
therefore serialized by a forked child: the child shares the searcher copy-on-write, writes
the assets into the (private) scratch folder and exits. The parent waits in ``waitpid`` (GIL
released) -- or first runs the caller's ``during`` work, the build's recall calibration, on the
other core -- and only the fork itself holds the GIL, for a time that grows with the number of
page-table entries to copy: big anonymous mappings are first collapsed into huge pages
(MADV_COLLAPSE, GIL released), which cut it from about 20 ms to about 2 ms at 1.2 GB.

ScaNN's ``dataset.npy`` is the segment's own rows again (the segment's vectors.bin rebuilds it
at load): in the child's scratch it is a FIFO, which a thread of the parent reads as ScaNN
writes it and compares with the rows. Equal (always, with lsmvec's configurations) means
nothing of it was ever stored: at 1M x 128 that spared writing 512 MB into a memory file
(1.4 s, plus the page clearing) and reading it back to compare (0.5 s). A ``dataset.npy`` that
differs makes the parent serialize again in-process, keeping it (never seen; a safety net).

The child runs nothing but ScaNN's serializer, then ``os._exit``: it never touches LMDB, the
log, locks or logging. It first asks the kernel for SIGKILL when the
parent dies (PR_SET_PDEATHSIG), so a parent killed by ``kill -9`` does not leave it running with
the plaintext assets. Any failure or a child that does not finish in time falls back to
serializing in this process (after ``reset()``, which the caller uses to give the scratch folder
its fresh memory-backed links again), so the fork is only ever an optimisation.
``LSMVEC_SERIALIZE_IN_CHILD=0`` turns it off.

The scratch folder may hold symlinks to anonymous memory files of the parent (see
``scann_assets``): ScaNN opens each asset name with a plain ``open(O_TRUNC)``, which writes
through such a link; a name it does not write stays an empty file, which counts as absent.
The dataset FIFO holds no data at rest (a pipe's buffer dies with its processes).
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import io
import logging
import os
import select
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lsmvec.compaction.filenames import SCANN_DATASET_FILE

__all__ = ["serialize_searcher", "trim_heap", "fork_usable", "fork_child", "wait_child", "kill_child",
           "EXIT_FAILED", "CHILD_TIMEOUT_S"]

logger = logging.getLogger(__name__)

CHILD_TIMEOUT_S = 600.0
"""A child still running after this long is killed and the parent serializes itself."""

_EXIT_DONE = 10
EXIT_FAILED = 12
"""A forked child's exit code when its work raised."""
_POLL_S = 0.002
_PIPE_BYTES = 1 << 20  # Linux's default cap for an unprivileged F_SETPIPE_SZ
_WATCH_POLL_S = 0.05
_PR_SET_PDEATHSIG = 1


def fork_usable() -> bool:
    """True where serializing in a forked child is safe and wanted (Linux, not disabled)."""
    if os.environ.get("LSMVEC_SERIALIZE_IN_CHILD", "1") in ("0", "false", "no"):
        return False
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def serialize_searcher(searcher: Any, scratch: Path, vectors: np.ndarray,
                       timeout_s: float | None = None,
                       reset: Callable[[], None] | None = None,
                       during: Callable[[], bool] | None = None,
                       collapse: bool = True) -> tuple[bool, bool]:
    """Serialize ``searcher`` into the folder ``scratch`` (empty, or prepared with links to
    memory files). ``during()`` runs in this thread while a child serializes (before an
    in-process serialize) and says whether the assets are wanted: False kills the child and
    serializes nothing. Returns (serialized, dataset_kept): whether the assets are in
    ``scratch``, and whether ``dataset.npy`` had to be kept there (ScaNN's copy of the rows
    differs from ``vectors``). After a failed child, ``reset()`` restores the folder's
    prepared state (default: remove whatever the child left). ``collapse``: first collapse big
    mappings into huge pages, for a shorter fork (False when a caller waits for the build: the
    collapse takes longer than it saves then). Raises OSError / RuntimeError from an
    in-process serialize, and whatever ``during`` raises."""
    wanted: bool | None = None
    if fork_usable():
        wanted, equal = _serialize_in_child(
            searcher, scratch, vectors, CHILD_TIMEOUT_S if timeout_s is None else timeout_s,
            during, collapse)
        if not wanted:
            return False, False
        if equal:
            return True, False
        if reset is not None:
            reset()
        else:
            for name in os.listdir(scratch):  # whatever a failed child left
                os.unlink(scratch / name)
    if wanted is None and during is not None and not during():
        return False, False
    searcher.serialize(str(scratch), relative_path=True)
    return True, _settle_dataset(scratch, vectors)


def _serialize_in_child(searcher: Any, scratch: Path, vectors: np.ndarray, timeout_s: float,
                        during: Callable[[], bool] | None,
                        collapse: bool = True) -> tuple[bool, bool]:
    """(wanted, done): ``during``'s answer, and whether the child serialized with a
    ``dataset.npy`` equal to ``vectors`` (False: it failed, timed out, or the dataset differs;
    the caller serializes itself)."""
    trim_heap()  # fewer resident pages: the fork copies their page tables holding the GIL
    if collapse:
        _collapse_to_huge_pages()  # and far fewer page-table entries for the rest
    dataset = scratch / SCANN_DATASET_FILE
    if os.path.lexists(dataset):
        os.unlink(dataset)  # a prepared memory link: ScaNN writes into the FIFO instead
    watch = _DatasetWatch(dataset, vectors)
    started = time.perf_counter()

    def work() -> int:
        searcher.serialize(str(scratch), relative_path=True)
        return _EXIT_DONE

    try:
        pid = fork_child(work)
    except OSError as exc:
        watch.finish()
        os.unlink(dataset)
        logger.warning("cannot fork to serialize ScaNN (%s); serializing in-process", exc)
        return (during() if during is not None else True), False
    logger.debug("forked ScaNN serialize child %d in %.1f ms", pid,
                 (time.perf_counter() - started) * 1000)
    code = None
    try:
        wanted = during() if during is not None else True
        if wanted:
            code = wait_child(pid, timeout_s)
    finally:
        if code is None:  # not wanted, or during() raised: the child's work is not needed
            kill_child(pid)
        equal = watch.finish()
        os.unlink(dataset)
    if not wanted:
        return False, False
    if code != _EXIT_DONE:
        logger.warning("ScaNN serialize child %d %s; serializing in-process", pid,
                       "ran over its time and was killed" if code is None
                       else f"ended with status {code}")
        return True, False
    if not equal:
        logger.warning("ScaNN's dataset.npy differs from the segment's rows; serializing "
                       "in-process to keep it")
    return True, equal


def fork_child(work: Callable[[], int]) -> int:
    """Fork a child that runs ``work()`` and exits with its code (EXIT_FAILED if it raises),
    never returning into the caller's frames; it first asks the kernel for SIGKILL when this
    process dies (PR_SET_PDEATHSIG), so a ``kill -9`` of the parent does not leave it running
    with plaintext. Returns its pid. Raises OSError when the fork fails."""
    prctl = _libc("prctl")  # looked up before the fork: no dlopen in the child
    parent = os.getpid()
    with warnings.catch_warnings():  # 3.12+ warns about fork in a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid:
        return pid
    code = EXIT_FAILED  # the child, from here on
    try:
        if prctl is not None:  # die with the parent (its memory files die with it anyway)
            prctl(ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGKILL),
                  ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
        if os.getppid() == parent:  # else the parent died before the prctl took effect
            code = work()
    finally:
        os._exit(code)


def wait_child(pid: int, timeout_s: float) -> int | None:
    """The child's exit code, or None when it ran over ``timeout_s`` (it is left running)."""
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            return None
        time.sleep(_POLL_S)


def kill_child(pid: int) -> None:
    """SIGKILL and reap a child (one already reaped is left alone)."""
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


class _DatasetWatch:
    """A FIFO at ``path`` and a thread of this process that reads what the serialize child
    writes into it and compares it, as it streams, with ``vectors`` as ScaNN stores a float32
    dataset (``.npy`` of C-order little-endian rows). Nothing read is kept. ``finish()`` --
    after the child was reaped, so no writer can still come -- says whether the file was
    exactly those rows (or was not written at all: the load rebuilds it either way)."""

    def __init__(self, path: Path, vectors: np.ndarray) -> None:
        os.mkfifo(path, 0o600)
        # Non-blocking: the open needs no writer, and select() does not report a FIFO no
        # writer ever opened as readable (Linux); the thread stops only once told.
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError, AttributeError):  # fewer, bigger hand-overs
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        self._rows = np.ascontiguousarray(vectors, dtype="<f4")
        self._expected = self._rows.reshape(-1).view(np.uint8)
        self._head: bytearray | None = bytearray()
        self._seen = self._pos = 0
        self._same = True
        self._writer_gone = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lsmvec-dataset-watch",
                                        daemon=True)
        self._thread.start()

    def finish(self) -> bool:
        self._writer_gone.set()
        self._thread.join()
        os.close(self._fd)
        if self._seen == 0:
            return True  # not written (not needed by this configuration)
        return self._same and self._head is None and self._pos == self._expected.size

    def _run(self) -> None:
        buffer = memoryview(bytearray(_PIPE_BYTES))
        while True:
            ready, _, _ = select.select([self._fd], [], [], _WATCH_POLL_S)
            got = 0
            if ready:
                try:
                    got = os.readv(self._fd, [buffer])
                except BlockingIOError:
                    continue
                except OSError:  # cannot happen on a FIFO of ours; the child then blocks
                    self._same = False  # and runs into its timeout: nothing is trusted
                    return
            if got:
                self._seen += got
                try:
                    self._take(buffer[:got])
                except Exception:  # a malformed header: not our rows
                    self._same = False
                continue
            if self._writer_gone.is_set():
                return  # drained, and no writer can come any more
            if ready:  # end of file: a writer closed; wait for the child to end
                time.sleep(_WATCH_POLL_S / 10)

    def _take(self, chunk: memoryview) -> None:
        if not self._same:
            return
        if self._head is not None:
            self._head += chunk
            start = _npy_data_offset(self._head, self._rows.shape)
            if start is None:
                return  # need more of the header
            if start < 0:
                self._same = False
                return
            chunk, self._head = memoryview(bytes(self._head[start:])), None
        end = self._pos + len(chunk)
        if end > self._expected.size or not np.array_equal(
                np.frombuffer(chunk, np.uint8), self._expected[self._pos:end]):
            self._same = False
        self._pos = end


def _npy_data_offset(head: bytearray, shape: tuple[int, ...]) -> int | None:
    """Where the data starts in an .npy stream beginning with ``head``: None when more bytes are
    needed, -1 when it is not a C-order little-endian float32 array of ``shape``."""
    if len(head) < 10:
        return None
    if bytes(head[:6]) != b"\x93NUMPY":
        return -1
    major = head[6]
    length_bytes = 2 if major == 1 else 4
    if len(head) < 8 + length_bytes:
        return None
    start = 8 + length_bytes + int.from_bytes(head[8:8 + length_bytes], "little")
    if len(head) < start:
        return None
    stream = io.BytesIO(bytes(head[:start]))
    version = np.lib.format.read_magic(stream)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    got_shape, fortran, dtype = read_header(stream)
    if tuple(got_shape) != tuple(shape) or fortran or dtype != np.dtype("<f4"):
        return -1
    return start


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


def trim_heap() -> None:
    """Return glibc's free heap pages to the system (ScaNN training leaves tens of MB per
    arena; an index open a few MB of freed read buffers). A no-op without glibc."""
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
