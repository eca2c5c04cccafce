"""The sealed-file format: one encrypted, authenticated, place-bound file (writer + reader).

Every file of a segment is stored this way; nothing of a segment is ever on disk in plaintext.

    header (40 bytes, big-endian)
        magic          8s   b"LSMVSEAL"
        version        u16  1
        flags          u16  0 (reserved; must be 0)
        chunk_size     u32  plaintext bytes per chunk, 1 .. 1 MiB
        salt           16s  random per file
        plaintext_len  u64
    chunks, count = max(1, ceil(plaintext_len / chunk_size))
        AES-256-GCM(ciphertext of <= chunk_size bytes) || 16-byte tag

Keys and nonces: the per-file key is HKDF-SHA256(segment_key, salt, info=FILE_KEY_INFO); the
salt is fresh for every file, so the nonce can simply be the chunk number (12 bytes) without
ever repeating under one key.

Associated data of chunk i = u32 len(context) || context || header || u64 i || u8 last. So:
the header (lengths, salt) is authenticated by every chunk; a file moved to another name,
segment or index (a different ``context``) fails; chunks swapped or reordered fail (nonce and
index); a file cut at a chunk boundary fails (plaintext_len says how many chunks there must be,
and the last one carries the flag). An empty plaintext still has one (empty) chunk, so even its
header is authenticated.

Every failure to read -- bad magic, wrong length, a changed byte, a wrong key or context --
raises ``CorruptionError`` naming the file and, when known, the byte offset of the damage.
"""
from __future__ import annotations

import contextlib

import hashlib
import os
import struct
from typing import Any, NamedTuple, Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from lsmvec.wal import fsio
from lsmvec.wal.errors import (CorruptionError, InvalidKeyError, StorageError,
                               storage_error_from)

__all__ = [
    "MAGIC",
    "VERSION",
    "CHUNK_SIZE",
    "HEADER_SIZE",
    "TAG_SIZE",
    "FILE_KEY_INFO",
    "SealedFileInfo",
    "sealed_size",
    "write_sealed",
    "read_sealed",
    "read_sealed_into",
    "read_sealed_range",
    "read_pins",
    "sealed_plaintext_size",
    "MemoryFileRange",
    "SealedReader",
]

MAGIC = b"LSMVSEAL"
VERSION = 1
CHUNK_SIZE = 1 << 20
"""1 MiB: large enough that per-chunk overhead (one AEAD call, 16 bytes) is negligible, small
enough that a damaged byte is located to within 1 MiB and buffers stay small."""
TAG_SIZE = 16
FILE_KEY_INFO = b"lsmvec/v1/segment-file"
KEY_SIZE = 32

_HEADER = struct.Struct(">8sHHI16sQ")
HEADER_SIZE = _HEADER.size
_CHUNK_AD = struct.Struct(">QB")
_CONTEXT_LEN = struct.Struct(">I")
_SALT_SIZE = 16
_NONCE_TAIL = struct.Struct(">4xQ")  # 12-byte big-endian chunk number
_HAS_INTO = hasattr(AESGCM, "encrypt_into") and hasattr(AESGCM, "decrypt_into")
_HASH_READ = 4 << 20
"""Bytes per read of ``SealedReader.hash_all`` (fewer system calls than one per chunk)."""
Buffer = Union[bytes, bytearray, memoryview]


class SealedFileInfo(NamedTuple):
    """What a writer produced: the on-disk size, the SHA-256 of the sealed bytes (hex; "" since
    the writer stopped computing it: see write_sealed), and the header's random salt (hex): it
    derives the file's key, so AES-GCM authenticates every byte of the file against it -- a
    reader given the salt needs no checksum (``expected_salt``)."""

    size: int
    sha256: str
    salt: str = ""


def read_pins(sha256: str, salt: str = "") -> dict[str, Any]:
    """read_sealed's keyword arguments pinning the file a manifest names: its salt when
    recorded (the salt derives the file's key: GCM, checking every chunk anyway, refuses any
    other file, even another build's authentic one), else its SHA-256 (a second pass over
    every byte: 0.43 s of the 645 MB a 1M x 128 segment unseals at open)."""
    return {"expected_salt": bytes.fromhex(salt)} if salt else {"expected_sha256": sha256}


def sealed_size(plaintext_len: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Exact on-disk size of a sealed file holding ``plaintext_len`` bytes."""
    return HEADER_SIZE + plaintext_len + TAG_SIZE * _chunk_count(plaintext_len, chunk_size)


def _chunk_count(plaintext_len: int, chunk_size: int) -> int:
    return max(1, -(-plaintext_len // chunk_size))


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise InvalidKeyError(f"segment key must be bytes, got {type(key).__name__}")
    key = bytes(key)
    if len(key) != KEY_SIZE:
        raise InvalidKeyError(f"segment key must be {KEY_SIZE} bytes, got {len(key)}")
    return key


def _file_key(key: bytes, salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt,
                info=FILE_KEY_INFO).derive(key)


def _file_aead(key: bytes, salt: bytes) -> AESGCM:
    return AESGCM(_file_key(key, salt))


def _ad_prefix(context: bytes, header: bytes) -> bytes:
    context = bytes(context)
    return _CONTEXT_LEN.pack(len(context)) + context + header


def write_sealed(path: str | os.PathLike[str], data: bytes | bytearray | memoryview,
                 key: bytes, context: bytes, *, chunk_size: int = CHUNK_SIZE) -> SealedFileInfo:
    """Seal ``data`` into a new file at ``path`` and fsync it (not its folder: the caller
    fsyncs the folder once after all its files). Every file-system call goes through
    ``wal.fsio.FS`` (fault-injection and power-loss tests replace it).

    ``data`` may be any C-contiguous buffer (bytes, numpy array); it is read in place, chunk by
    chunk, never concatenated. No SHA-256 is made (``sha256`` ""): the recorded salt pins the
    file, GCM authenticates every byte (the digest cost ~1 us a 1.5 KB row of every flush).
    Raises InvalidKeyError for a key that is not 32 bytes, ValueError for a bad chunk size,
    StorageError when the file system fails (the partial file is removed),
    FileExistsError-as-StorageError when ``path`` exists (files are never overwritten).
    """
    key = _check_key(key)
    if not 1 <= chunk_size <= CHUNK_SIZE:
        raise ValueError(f"chunk_size must be in 1..{CHUNK_SIZE}, got {chunk_size}")
    view = memoryview(data).cast("B")
    total = view.nbytes
    salt = os.urandom(_SALT_SIZE)
    header = _HEADER.pack(MAGIC, VERSION, 0, chunk_size, salt, total)
    aead = _file_aead(key, salt)
    prefix = _ad_prefix(context, header)
    count = _chunk_count(total, chunk_size)
    out = bytearray(min(total, chunk_size) + TAG_SIZE)
    out_view = memoryview(out)
    path = os.fspath(path)
    fs = fsio.FS  # every create / write / sync / close / unlink goes through the seam
    try:
        fd = fs.open_for_append(path, exclusive=True)  # O_EXCL, 0600; a fresh file: appends
    except OSError as exc:
        raise storage_error_from(exc, f"create {path}") from exc
    try:
        try:
            ahead: tuple[bytes, ...] = (header,)  # the header goes out with the first chunk
            for index in range(count):
                start = index * chunk_size
                piece = view[start:start + chunk_size]
                last = index == count - 1
                nonce = _NONCE_TAIL.pack(index)
                ad = prefix + _CHUNK_AD.pack(index, last)
                sealed = out_view[:len(piece) + TAG_SIZE]
                if _HAS_INTO:
                    aead.encrypt_into(nonce, piece, ad, sealed)
                else:  # cryptography < 44: one extra copy per chunk
                    sealed[:] = aead.encrypt(nonce, bytes(piece), ad)
                fs.write_all(fd, (*ahead, sealed))
                ahead = ()
            fs.fsync(fd)
        finally:
            fs.close(fd)
    except OSError as exc:
        _unlink_quietly(path)
        raise storage_error_from(exc, f"write {path}") from exc
    except BaseException:
        _unlink_quietly(path)
        raise
    return SealedFileInfo(HEADER_SIZE + total + TAG_SIZE * count, "", salt.hex())


def read_sealed(path: str | os.PathLike[str], key: bytes, context: bytes, *,
                expected_size: int | None = None, expected_sha256: str | None = None,
                expected_salt: bytes | None = None) -> bytearray:
    """Open a sealed file and return its plaintext (a fresh bytearray: ``np.frombuffer`` on it
    gives an array without another copy).

    Raises CorruptionError (with the path, and the chunk's offset when one fails to
    authenticate) when the file is missing, shorter or longer than its header says, has a bad
    magic / version / flags / chunk size, does not match ``expected_size`` or
    ``expected_sha256`` (hex SHA-256 of the whole sealed file) or ``expected_salt`` (the
    header's salt: the file a manifest names, not another one written under the same name and
    key -- say by a crashed build -- which GCM alone would accept), or any chunk fails AES-GCM
    authentication (a changed byte, wrong key, wrong context). Raises InvalidKeyError for a key
    that is not 32 bytes; StorageError for other I/O failures.
    """
    return _read(path, key, context, expected_size, expected_sha256, None, expected_salt)


def read_sealed_into(path: str | os.PathLike[str], key: bytes, context: bytes,
                     out: Buffer | MemoryFileRange, *, expected_size: int | None = None,
                     expected_sha256: str | None = None, threads: int = 1,
                     expected_salt: bytes | None = None) -> None:
    """``read_sealed`` into the writable buffer ``out``, which must hold exactly the plaintext
    (e.g. an uninitialised numpy array, or a memory file's mapping: no zero-filled bytearray and
    no copy), or into a MemoryFileRange (each chunk pwritten into the file). Every chunk is
    authenticated before it is decrypted into ``out``; on an error ``out`` holds part of the
    plaintext. Same errors as ``read_sealed``, and CorruptionError when the plaintext is not
    ``len(out)`` bytes. ``threads`` > 1: the checksum and the chunks
    are checked on that many threads (sealed_batch), for a caller that waits."""
    if threads > 1:
        from lsmvec.compaction.sealed_batch import SealedRead, read_sealed_files
        read_sealed_files([SealedRead(path, key, context, out, expected_size, expected_sha256,
                                      expected_salt)], threads)
        return
    _read(path, key, context, expected_size, expected_sha256, out, expected_salt)


def sealed_plaintext_size(path: str | os.PathLike[str], expected_size: int | None = None) -> int:
    """The plaintext length the header of a sealed file declares, checked against the file's
    size (and ``expected_size``) but NOT authenticated: only for sizing a buffer that
    ``read_sealed_into`` then fills, which authenticates the header with every chunk. Raises
    CorruptionError like ``read_sealed`` for a missing file or an inconsistent header."""
    path = os.fspath(path)
    fd = _open_readonly(path)
    try:
        return _checked_header(fd, path, expected_size)[4]
    except OSError as exc:
        raise storage_error_from(exc, f"read {path}") from exc
    finally:
        os.close(fd)


def _parse_header(header: bytes, path: str) -> tuple:
    """The header's fields; CorruptionError for a short or unsupported header."""
    if len(header) < HEADER_SIZE:
        raise CorruptionError(f"sealed file header truncated ({len(header)} bytes)", path, 0)
    magic, version, flags, chunk_size, salt, total = _HEADER.unpack(header)
    if magic != MAGIC:
        raise CorruptionError("not a sealed file (bad magic)", path, 0)
    if version != VERSION or flags != 0:
        raise CorruptionError(f"unsupported sealed file version {version} flags {flags}", path, 0)
    if not 1 <= chunk_size <= CHUNK_SIZE:
        raise CorruptionError(f"bad chunk size {chunk_size} in header", path, 0)
    return magic, version, flags, chunk_size, salt, total


def _checked_header(fd: int, path: str, expected_size: int | None,
                    expected_salt: bytes | None = None) -> tuple[int, bytes, int, bytes, int]:
    """(file size, header, chunk size, salt, plaintext length) of an open sealed file: its size
    checked against ``expected_size`` and against what its header describes -- before anything
    of the header's claimed length is allocated -- and its salt against ``expected_salt``.
    CorruptionError otherwise."""
    size = os.fstat(fd).st_size
    if expected_size is not None and size != expected_size:
        raise CorruptionError(f"sealed file is {size} bytes, expected {expected_size}", path)
    header = os.pread(fd, HEADER_SIZE, 0)
    _magic, _version, _flags, chunk_size, salt, total = _parse_header(header, path)
    _check_salt(salt, expected_salt, path)
    if size != sealed_size(total, chunk_size):
        raise CorruptionError(
            f"sealed file is {size} bytes but its header describes "
            f"{sealed_size(total, chunk_size)} (truncated or extended)", path,
            min(size, sealed_size(total, chunk_size)))
    return size, header, chunk_size, salt, total


def _check_salt(salt: bytes, expected: bytes | None, path: str) -> None:
    if expected is not None and salt != expected:
        raise CorruptionError("sealed file is not the one its manifest names (its salt differs: "
                              "another build's file under this name)", path, 0)


def _read(path: str | os.PathLike[str], key: bytes, context: bytes, expected_size: int | None,
          expected_sha256: str | None, out: Buffer | MemoryFileRange | None,
          expected_salt: bytes | None = None) -> bytearray | None:
    path = os.fspath(path)
    try:
        reader = SealedReader(path, key, context, out, expected_size, expected_sha256,
                              expected_salt)
    except StorageError:
        raise  # opening it (_open_readonly says what failed)
    except OSError as exc:
        raise storage_error_from(exc, f"read {path}") from exc
    try:
        reader.read_one_pass()
    except OSError as exc:
        raise storage_error_from(exc, f"read {path}") from exc
    finally:
        reader.close()
    return reader.plaintext


class MemoryFileRange(NamedTuple):
    """Bytes [offset, offset + size) of an open file (a memory file) to write the plaintext
    to, chunk by chunk with ``pwrite``: at 1M x 128 that took 0.23 s where decrypting into a
    fresh mapping of the file took 0.5 s (131k page faults), and it releases the GIL."""

    fd: int
    offset: int
    size: int


class SealedReader:
    """A sealed file opened and its header checked (sizes, format, the plaintext length against
    ``out``), to be read into ``out``: a writable buffer, a MemoryFileRange, or None (a fresh
    bytearray, ``plaintext``, allocated only after the checks). ``read_one_pass`` reads every
    chunk once -- hashed, authenticated, decrypted: ``read_sealed`` --; sealed_batch splits the
    same work into tasks for several threads (``decrypt`` of a chunk range, ``hash_all``).
    Always ``close()`` it. Raises CorruptionError / InvalidKeyError like ``read_sealed``, and
    OSError for the caller to report."""

    def __init__(self, path: str | os.PathLike[str], key: bytes, context: bytes,
                 out: Buffer | MemoryFileRange | None, expected_size: int | None = None,
                 expected_sha256: str | None = None, expected_salt: bytes | None = None) -> None:
        self.path = os.fspath(path)
        self.target = out if isinstance(out, MemoryFileRange) else None
        self.out = (None if out is None or self.target is not None
                    else memoryview(out).cast("B"))
        self.plaintext: bytearray | None = None
        self.expected_sha256 = expected_sha256
        try:
            key = _check_key(key)
            self.fd = _open_readonly(self.path)
        except BaseException:
            self._release()
            raise
        try:
            self.size, self.header, self.chunk_size, salt, self.total = _checked_header(
                self.fd, self.path, expected_size, expected_salt)
            want = (self.target.size if self.target is not None
                    else self.out.nbytes if self.out is not None else self.total)
            if want != self.total:
                raise CorruptionError(f"sealed file holds {self.total} bytes, expected {want}",
                                      self.path)
        except BaseException:
            self.close()
            raise
        if out is None:
            self.plaintext = bytearray(self.total)
            self.out = memoryview(self.plaintext)
        self.count = _chunk_count(self.total, self.chunk_size)
        self.file_key = _file_key(key, salt)
        self.prefix = _ad_prefix(context, self.header)

    def _release(self) -> None:
        if self.out is not None:
            self.out.release()

    def close(self) -> None:
        os.close(self.fd)
        self._release()

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
            if got != len(sealed):  # the file shrank under us
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
                else:  # cryptography < 44: one extra copy per chunk
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


def read_sealed_range(path: str | os.PathLike[str], key: bytes, context: bytes, start: int,
                      length: int, expected_salt: bytes | None = None) -> bytes:
    """Plaintext bytes [start, start + length) of a sealed file, decrypting only the chunks
    that hold them (each chunk authenticates on its own; its number and the header are bound
    into its associated data). Raises CorruptionError like read_sealed; ValueError for a range
    outside the plaintext."""
    key = _check_key(key)
    path = os.fspath(path)
    fd = _open_readonly(path)
    try:
        header = os.pread(fd, HEADER_SIZE, 0)
        _magic, _version, _flags, chunk_size, salt, total = _parse_header(header, path)
        _check_salt(salt, expected_salt, path)
        if start < 0 or length < 0 or start + length > total:
            raise ValueError(f"range {start}+{length} outside {total} plaintext bytes")
        aead = _file_aead(key, salt)
        prefix = _ad_prefix(context, header)
        count = _chunk_count(total, chunk_size)
        out = bytearray()
        first, last = start // chunk_size, (start + max(length, 1) - 1) // chunk_size
        for index in range(first, last + 1):
            offset = HEADER_SIZE + index * (chunk_size + TAG_SIZE)
            size = min(chunk_size, total - index * chunk_size)
            sealed = os.pread(fd, size + TAG_SIZE, offset)
            if len(sealed) != size + TAG_SIZE:
                raise CorruptionError("sealed file truncated", path, offset)
            try:
                out += aead.decrypt(_NONCE_TAIL.pack(index), sealed,
                                    prefix + _CHUNK_AD.pack(index, index == count - 1))
            except InvalidTag:
                raise CorruptionError(f"chunk {index} failed authentication", path, offset) from None
        skip = start - first * chunk_size
        return bytes(out[skip:skip + length])
    except OSError as exc:
        raise storage_error_from(exc, f"read {path}") from exc
    finally:
        os.close(fd)


def _open_readonly(path: str) -> int:
    """Raises CorruptionError when the file is missing, StorageError for other failures."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise CorruptionError("sealed file is missing", path) from exc
    except OSError as exc:
        raise storage_error_from(exc, f"open {path}") from exc


def _pread_exact(fd: int, view: memoryview, offset: int) -> int:
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            break
        done += got
    return done


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        done = os.pwrite(fd, data, offset)
        if done <= 0:  # cannot happen for a regular or memory file; never spin on it
            raise OSError(f"pwrite wrote nothing at offset {offset}")
        data, offset = data[done:], offset + done


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):  # cleanup after a failure: the failure is reported
        fsio.FS.remove(path)
