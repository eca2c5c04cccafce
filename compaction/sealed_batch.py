"""Several sealed files read at once (a segment load): the checks of ``read_sealed_into``, with
the plaintext written into open files (memory files) rather than mapped buffers.

Opening a 1M x 128 trained segment unseals 645 MB (vectors.bin 512 MB as ScaNN's dataset.npy,
hashed_dataset.npy 128 MB, ...). Decrypting into a fresh mapping of a memory file cost 0.5 s
of page faults for the 512 MB alone; each 1 MiB chunk decrypted into a small buffer and
``pwrite``-n into the file costs 0.23 s (``MemoryFileRange``): unsealing went from 1.25 s to
1.0 s of the reopen.

``threads`` > 1 runs the checks as independent tasks instead: each file's SHA-256 is one
sequential task over its sealed bytes (hashlib releases the GIL), its chunks are authenticated
and decrypted in ranges of ``_RANGE_CHUNKS`` (the reads and writes release it too), the longest
tasks first. On the shared 2-core reference machine that was slower (1.3-1.8 s vs 1.0 s: the
checksum reads each file a second time, and no core was idle), so the load uses one thread;
the option stays for machines with idle cores, measured with ``bench_train --reopen
--unseal-threads 2``. Either way nothing returns before every task of every file has ended,
and a failure -- the first damaged chunk of the first damaged file, else a SHA-256 mismatch --
raises exactly what ``read_sealed_into`` would. No task waits on another (no lock is held
across a read), and the threads are always joined.
"""
from __future__ import annotations

import os
import threading
from typing import NamedTuple

from lsmvec.compaction.sealed_file import Buffer, MemoryFileRange, SealedReader, read_sealed_into
from lsmvec.wal.errors import CorruptionError, storage_error_from

__all__ = ["MemoryFileRange", "SealedRead", "read_sealed_files"]

_RANGE_CHUNKS = 16
"""Chunks (1 MiB each) per decryption task: 32 tasks for a 512 MB file, enough to balance two
to a few dozen threads, few enough that the per-task setup (a key schedule) stays noise."""
_HASH_COST = 4
"""SHA-256 runs ~4x slower than AES-GCM decryption here (0.83 vs 3.1 GB/s): tasks are started
longest first, the hashes of the big files before everything else."""


class SealedRead(NamedTuple):
    """One file to read: ``read_sealed_into``'s arguments (``out`` may also be a
    MemoryFileRange)."""

    path: str | os.PathLike[str]
    key: bytes
    context: bytes
    out: Buffer | MemoryFileRange
    expected_size: int | None = None
    expected_sha256: str | None = None
    expected_salt: bytes | None = None


def read_sealed_files(requests: list[SealedRead], threads: int) -> None:
    """``read_sealed_into`` of every request, on up to ``threads`` threads (1: one after the
    other, each file in one pass). Returns when every file was wholly read and checked; raises what
    ``read_sealed_into`` raises for the first bad file (in ``requests`` order), its first
    damaged chunk before a SHA-256 mismatch. Output buffers may then hold partial plaintext."""
    if threads <= 1:  # one file after the other, each in one pass: read, hash, decrypt
        for r in requests:
            read_sealed_into(r.path, r.key, r.context, r.out, expected_size=r.expected_size,
                             expected_sha256=r.expected_sha256, expected_salt=r.expected_salt)
        return
    files: list[SealedReader] = []
    try:
        for request in requests:
            files.append(_reader(request))
        tasks: list[tuple[int, int, int, int, int]] = []  # (-cost, file, kind, first, last)
        for number, f in enumerate(files):
            if f.expected_sha256 is not None:
                tasks.append((-f.size * _HASH_COST, number, 1, 0, 0))
            for first in range(0, f.count, _RANGE_CHUNKS):
                last = min(f.count, first + _RANGE_CHUNKS)
                cost = min(f.total, last * f.chunk_size) - first * f.chunk_size
                tasks.append((-max(1, cost), number, 0, first, last))
        tasks.sort()
        failures = _run(files, tasks, max(1, min(int(threads), len(tasks))))
        if failures:
            # what the one-thread reader raises: the first file's first damaged chunk, and a
            # checksum mismatch only when every chunk authenticated; an interrupt before all
            raise min(failures, key=lambda f: f[0])[1]
    except OSError as exc:  # opening a file
        raise storage_error_from(exc, f"read {requests[len(files)].path}"
                                 if len(files) < len(requests) else "read sealed files") from exc
    finally:
        for f in files:
            f.close()


def _reader(request: SealedRead) -> SealedReader:
    return SealedReader(request.path, request.key, request.context, request.out,
                        request.expected_size, request.expected_sha256, request.expected_salt)


def _run(files: list[SealedReader], tasks: list[tuple[int, int, int, int, int]],
         threads: int) -> list[tuple[tuple[int, int, int, int], BaseException]]:
    """Run ``tasks`` on ``threads`` threads (this one included); the failures, with their
    rank. After anything but a CorruptionError (an I/O error, an interrupt) no task starts."""
    lock = threading.Lock()
    pending = iter(tasks)
    failures: list[tuple[tuple[int, int, int, int], BaseException]] = []
    failed_files: set[int] = set()
    stop = False

    def work() -> None:
        nonlocal stop
        while True:
            with lock:
                task = None if stop else next(pending, None)
            if task is None:
                return
            _cost, number, kind, first, last = task
            if number in failed_files:
                continue  # that file is already known bad: its first error is what counts
            try:
                if kind:
                    files[number].hash_all()
                else:
                    files[number].decrypt(first, last)
            except BaseException as exc:  # ranked and re-raised by the caller
                damaged = isinstance(exc, CorruptionError)
                if isinstance(exc, OSError):
                    exc = storage_error_from(exc, f"read {files[number].path}")
                with lock:
                    failures.append(((int(damaged), number, kind, first), exc))
                    stop = stop or not damaged
                    if kind == 0:
                        failed_files.add(number)

    helpers = [threading.Thread(target=work, name="lsmvec-unseal", daemon=True)
               for _ in range(threads - 1)]
    for helper in helpers:
        helper.start()
    try:
        work()
    finally:
        for helper in helpers:
            helper.join()
    return failures
