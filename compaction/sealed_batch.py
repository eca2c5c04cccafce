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

import hashlib
import mmap
import os
import threading
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lsmvec.compaction.sealed_file import (_CHUNK_AD, _HAS_INTO, _NONCE_TAIL, HEADER_SIZE,
                                           TAG_SIZE, Buffer, _ad_prefix, _check_key,
                                           _chunk_count, _file_key,
                                           _open_readonly, _parse_header, sealed_size)
from lsmvec.wal.errors import CorruptionError, storage_error_from

__all__ = ["MemoryFileRange", "SealedRead", "SealedSha256", "read_sealed_files"]

_RANGE_CHUNKS = 16
"""Chunks (1 MiB each) per decryption task: 32 tasks for a 512 MB file, enough to balance two
to a few dozen threads, few enough that the per-task setup (a key schedule) stays noise."""
_HASH_READ = 4 << 20
"""Bytes per read of a hashing task (fewer system calls than one per chunk)."""
_HASH_COST = 4
"""SHA-256 runs ~4x slower than AES-GCM decryption here (0.83 vs 3.1 GB/s): tasks are started
longest first, the hashes of the big files before everything else."""


class MemoryFileRange(NamedTuple):
    """Bytes [offset, offset + size) of an open file (a memory file) to write the plaintext
    to, chunk by chunk with ``pwrite``: at 1M x 128 that took 0.23 s where decrypting into a
    fresh mapping of the file took 0.5 s (131k page faults), and it releases the GIL."""

    fd: int
    offset: int
    size: int


class SealedRead(NamedTuple):
    """One file to read: ``read_sealed_into``'s arguments (``out`` may also be a
    MemoryFileRange)."""

    path: str | os.PathLike[str]
    key: bytes
    context: bytes
    out: Buffer | MemoryFileRange
    expected_size: int | None = None
    expected_sha256: str | None = None


class _File:
    """An opened, header-checked sealed file and what its tasks share."""

    def __init__(self, number: int, request: SealedRead) -> None:
        self.number = number
        self.path = os.fspath(request.path)
        target = request.out
        self.out = None if isinstance(target, MemoryFileRange) else memoryview(target).cast("B")
        self.target = target if isinstance(target, MemoryFileRange) else None
        out_size = target.size if self.out is None else self.out.nbytes
        self.expected_sha256 = request.expected_sha256
        key = _check_key(request.key)
        self.fd = _open_readonly(self.path)
        try:
            size = os.fstat(self.fd).st_size
            if request.expected_size is not None and size != request.expected_size:
                raise CorruptionError(f"sealed file is {size} bytes, expected "
                                      f"{request.expected_size}", self.path)
            header = os.pread(self.fd, HEADER_SIZE, 0)
            _magic, _version, _flags, chunk_size, salt, total = _parse_header(header, self.path)
            if size != sealed_size(total, chunk_size):
                raise CorruptionError(
                    f"sealed file is {size} bytes but its header describes "
                    f"{sealed_size(total, chunk_size)} (truncated or extended)", self.path,
                    min(size, sealed_size(total, chunk_size)))
            if out_size != total:
                raise CorruptionError(f"sealed file holds {total} bytes, expected "
                                      f"{out_size}", self.path)
        except BaseException:
            self.close()
            raise
        self.size, self.header, self.chunk_size, self.total = size, header, chunk_size, total
        self.count = _chunk_count(total, chunk_size)
        self.file_key = _file_key(key, salt)
        self.prefix = _ad_prefix(request.context, header)

    def close(self) -> None:
        os.close(self.fd)
        if self.out is not None:
            self.out.release()

    def hash_all(self) -> None:
        """The SHA-256 of the whole sealed file, read on its own (CorruptionError on a
        mismatch)."""
        digest = hashlib.sha256()
        buffer = bytearray(min(_HASH_READ, self.size))
        view = memoryview(buffer)
        offset = 0
        while offset < self.size:
            got = os.preadv(self.fd, [view[:min(_HASH_READ, self.size - offset)]], offset)
            if got == 0:
                raise CorruptionError("sealed file truncated while reading", self.path, offset)
            digest.update(view[:got])
            offset += got
        if digest.hexdigest() != self.expected_sha256:
            raise CorruptionError("sealed file does not match its recorded SHA-256", self.path)

    def decrypt(self, first: int, last: int, digest: Any = None) -> None:
        """Authenticate and decrypt chunks [first, last) into ``out`` (``digest``: also hash
        the sealed bytes read, the header first -- the one-pass read of one thread)."""
        aead = AESGCM(self.file_key)
        buffer = bytearray(min(self.total, self.chunk_size) + TAG_SIZE)
        buffer_view = memoryview(buffer)
        plain = bytearray(min(self.total, self.chunk_size)) if self.out is None else None
        chunk_size, total = self.chunk_size, self.total
        if digest is not None:
            digest.update(self.header)
        for index in range(first, last):
            start = index * chunk_size
            length = min(chunk_size, total - start)
            offset = HEADER_SIZE + index * (chunk_size + TAG_SIZE)
            sealed = buffer_view[:length + TAG_SIZE]
            got = _pread_exact(self.fd, sealed, offset)
            if got != len(sealed):
                raise CorruptionError("sealed file truncated while reading", self.path,
                                      offset + got)
            if digest is not None:
                digest.update(sealed)
            nonce = _NONCE_TAIL.pack(index)
            ad = self.prefix + _CHUNK_AD.pack(index, index == self.count - 1)
            into = (memoryview(plain)[:length] if self.out is None  # type: ignore[arg-type]
                    else self.out[start:start + length])
            try:
                if _HAS_INTO:
                    aead.decrypt_into(nonce, sealed, ad, into)
                else:
                    into[:] = aead.decrypt(nonce, bytes(sealed), ad)
            except InvalidTag:
                raise CorruptionError(
                    f"chunk {index} failed authentication (damaged, moved, or wrong key)",
                    self.path, offset) from None
            if self.target is not None:
                _pwrite_all(self.target.fd, into, self.target.offset + start)

    def read_one_pass(self) -> None:
        """Every chunk read once, hashed, authenticated and decrypted (``read_sealed_into``)."""
        digest = hashlib.sha256() if self.expected_sha256 is not None else None
        self.decrypt(0, self.count, digest)
        if digest is not None and digest.hexdigest() != self.expected_sha256:
            raise CorruptionError("sealed file does not match its recorded SHA-256", self.path)


class SealedSha256:
    """The SHA-256 of one sealed file, computed on a helper thread from the moment this is made
    until ``check`` (or ``join``) -- always call one of them, in a ``finally``: the thread is
    then joined. It hashes a read-only map of the file in ONE ``hashlib`` call, which releases
    the GIL for the whole file: ScaNN's ``load_searcher`` holds the GIL for its 1.2 s, so a
    loop of reads and updates would stall at its first read until the load ended, while this
    one runs beside it on another core (488 MB sealed vectors.bin: 0.53 s, a third of the load).
    A map can fault (SIGBUS) if another process cuts the file while it is hashed; the store's
    data.mdb is mapped the same way, and the index is locked while it is opened.

    Who may use it (scann_assets.load_sealed_searcher, for the sealed rows only): a caller whose
    file is also read with every chunk AES-GCM-authenticated before anything is done with its
    plaintext. GCM with the file's context (index uuid, segment id, name), header (salt,
    length), chunk number and last-chunk flag already proves each byte was written by this
    index for this place; what the SHA-256 adds is only WHICH write it was: a segment id can be
    reused after a crash (a build whose manifest edit never committed), so a file of that
    crashed build, put back, would authenticate. Rows are plain float32 of the manifest's shape:
    loading the wrong ones cannot misguide ScaNN, and the load is thrown away on a mismatch."""

    def __init__(self, path: str | os.PathLike[str], expected_size: int,
                 expected_sha256: str) -> None:
        self.path = os.fspath(path)
        self._expected = (expected_size, expected_sha256)
        self._digest: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lsmvec-unseal-sha256",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            fd = _open_readonly(self.path)
            try:
                size = os.fstat(fd).st_size
                if size != self._expected[0]:
                    raise CorruptionError(f"sealed file is {size} bytes, expected "
                                          f"{self._expected[0]}", self.path)
                with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mapped:
                    mapped.madvise(mmap.MADV_SEQUENTIAL)
                    self._digest = hashlib.sha256(mapped).hexdigest()
            finally:
                os.close(fd)
        except BaseException as exc:  # re-raised by check()
            self._error = exc

    def join(self) -> None:
        self._thread.join()

    def check(self) -> None:
        """Wait for the hash; CorruptionError when the file does not match its recorded
        SHA-256 (or its size), StorageError when it could not be read."""
        self._thread.join()
        if isinstance(self._error, OSError):
            raise storage_error_from(self._error, f"read {self.path}") from self._error
        if self._error is not None:
            raise self._error
        if self._digest != self._expected[1]:
            raise CorruptionError("sealed file does not match its recorded SHA-256", self.path)


def read_sealed_files(requests: list[SealedRead], threads: int) -> None:
    """``read_sealed_into`` of every request, on up to ``threads`` threads (1: one after the
    other, each file in one pass). Returns when every file was wholly read and checked; raises what
    ``read_sealed_into`` raises for the first bad file (in ``requests`` order), its first
    damaged chunk before a SHA-256 mismatch. Output buffers may then hold partial plaintext."""
    if threads <= 1:  # one file after the other, each in one pass: read, hash, decrypt
        for number, request in enumerate(requests):
            try:
                one = _File(number, request)
            except OSError as exc:
                raise storage_error_from(exc, f"read {request.path}") from exc
            try:
                one.read_one_pass()
            except OSError as exc:
                raise storage_error_from(exc, f"read {one.path}") from exc
            finally:
                one.close()
        return
    files: list[_File] = []
    try:
        for number, request in enumerate(requests):
            files.append(_File(number, request))
        tasks: list[tuple[int, int, int, int, int]] = []  # (-cost, file, kind, first, last)
        for f in files:
            if f.expected_sha256 is not None:
                tasks.append((-f.size * _HASH_COST, f.number, 1, 0, 0))
            for first in range(0, f.count, _RANGE_CHUNKS):
                last = min(f.count, first + _RANGE_CHUNKS)
                cost = min(f.total, last * f.chunk_size) - first * f.chunk_size
                tasks.append((-max(1, cost), f.number, 0, first, last))
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


def _run(files: list[_File], tasks: list[tuple[int, int, int, int, int]],
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


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        done = os.pwrite(fd, data, offset)
        if done <= 0:  # cannot happen for a regular or memory file; never spin on it
            raise OSError(f"pwrite wrote nothing at offset {offset}")
        data, offset = data[done:], offset + done


def _pread_exact(fd: int, view: memoryview, offset: int) -> int:
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            break
        done += got
    return done
