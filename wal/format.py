"""The on-disk format of one log record, shared by the writer and the reader (LevelDB log_format.h).

A log file is a plain sequence of records, no file header, no padding::

    offset  size  field
    0       4     magic    MAGIC_BYTES: finds record starts when scanning past damage
    4       4     crc32c   of every byte after this field: length | kind | lsn | payload
    8       4     length   payload bytes, at most MAX_PAYLOAD
    12      1     kind     chosen by the caller (1..254); KIND_CLOSE (255) marks a clean close
    13      8     lsn      log sequence number: +1 per record, across files, never reused
    21      len   payload

All integers are little-endian. A record is intact when its magic matches, its length fits in
the file and its checksum matches; the reader decides what a damaged record means (recovery.py).
Tags and kinds are append-only: never renumber them.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Union

import crc32c

from .errors import InvalidTypeError

__all__ = [
    "Buffer",
    "MAGIC_BYTES",
    "MAGIC",
    "HEADER",
    "HEADER_SIZE",
    "CRC_START",
    "MAX_PAYLOAD",
    "KIND_CLOSE",
    "MIN_DATA_KIND",
    "MAX_DATA_KIND",
    "is_data_kind",
    "encode_header",
    "encode_record",
    "record_crc",
    "payload_parts",
    "join_parts",
]

Buffer = Union[bytes, bytearray, memoryview]

MAGIC_BYTES = b"\x89LWR"  # the high-bit byte catches 7-bit mangling, as PNG's signature does
MAGIC: int = struct.unpack("<I", MAGIC_BYTES)[0]
HEADER = struct.Struct("<IIIBQ")  # magic | crc32c | length | kind | lsn
HEADER_SIZE = HEADER.size  # 21
CRC_START = 8  # the checksum covers the header from this offset on, then the payload
_COVERED_HEADER = struct.Struct("<IBQ")  # length | kind | lsn

MAX_PAYLOAD = 1 << 30  # 1 GiB: a larger length field can only be damage
KIND_CLOSE = 255  # written by a clean close, empty payload, never yielded by replay
MIN_DATA_KIND = 1  # 0 is reserved so a zeroed header never names a valid kind
MAX_DATA_KIND = 254


def is_data_kind(kind: object) -> bool:
    """True for a kind a caller may append (1..254)."""
    return type(kind) is int and MIN_DATA_KIND <= kind <= MAX_DATA_KIND


def record_crc(lsn: int, kind: int, parts: Sequence[Buffer], length: int) -> int:
    """The crc32c of length | kind | lsn | payload, computed part by part (no concatenation)."""
    crc = crc32c.crc32c(_COVERED_HEADER.pack(length, kind, lsn))
    for part in parts:
        crc = crc32c.crc32c(part, crc)
    return crc


def encode_header(lsn: int, kind: int, parts: Sequence[Buffer], length: int) -> bytes:
    """The 21-byte header of a record whose payload is the concatenation of `parts` (`length`
    bytes in all). Raises ValueError when length exceeds MAX_PAYLOAD."""
    if length > MAX_PAYLOAD:
        raise ValueError(f"record payload of {length} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(MAGIC, record_crc(lsn, kind, parts, length), length, kind, lsn)


def encode_record(lsn: int, kind: int, payload: Buffer) -> bytes:
    """One whole record as bytes (tests and tools; the writer avoids this copy)."""
    return encode_header(lsn, kind, (payload,), len(memoryview(payload).cast("B"))) + bytes(payload)


def payload_parts(payload: object) -> tuple[list[Buffer], int]:
    """A payload (bytes-like, or a list / tuple of bytes-like parts) as a list of byte buffers
    and its total size, without copying. Raises InvalidTypeError for anything else, including
    non-contiguous buffers."""
    items = payload if isinstance(payload, (list, tuple)) else (payload,)
    parts: list[Buffer] = []
    size = 0
    for item in items:
        if isinstance(item, bytes):
            parts.append(item)
            size += len(item)
            continue
        try:
            view = memoryview(item).cast("B")  # type: ignore[arg-type]
        except TypeError:
            raise InvalidTypeError(f"a log payload must be a C-contiguous bytes-like object or a "
                                   f"list of them, got {type(item).__name__}") from None
        parts.append(view)
        size += view.nbytes
    return parts, size


def join_parts(parts: Sequence[Buffer]) -> bytes:
    """The parts as one bytes object (no copy for a single bytes part)."""
    if len(parts) == 1 and isinstance(parts[0], bytes):
        return parts[0]
    return b"".join(parts)
