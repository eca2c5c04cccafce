"""The engine's WAL payloads: one upsert or delete call = one record (LevelDB's WriteBatch).

Upsert payload: u32 header length | msgpack header {ids, contents, metadata, dim} | raw float32
rows. Vectors travel as raw bytes, never as lists of Python floats, so encoding and replay are
one memcpy each. Payloads are sealed by the engine before they reach the log (see crypto).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import msgpack
import numpy as np

from lsmvec.errors import CorruptionError

KIND_UPSERT = 1
KIND_DELETE = 2
_U32 = struct.Struct("<I")


@dataclass
class UpsertRecord:
    ids: list[str]
    vectors: np.ndarray
    contents: list[bytes | None]
    metadata: list[dict | None]


def encode_upsert(ids: list[str], vectors: np.ndarray, contents: list, metadata: list
                  ) -> list[bytes | memoryview]:
    """The payload as its parts (length, msgpack header, raw float32 rows): the log seals and
    writes them without joining them first. b"".join() gives the payload as one buffer."""
    header = msgpack.packb({"ids": ids, "contents": contents, "metadata": metadata,
                            "dim": int(vectors.shape[1]) if vectors.ndim == 2 else 0},
                           use_bin_type=True)
    return [_U32.pack(len(header)), header,
            memoryview(np.ascontiguousarray(vectors, np.float32)).cast("B")]


def encode_delete(ids: list[str]) -> bytes:
    return msgpack.packb(ids, use_bin_type=True)


def _unpack(data: bytes | memoryview, path: str | None, offset: int | None):
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, TypeError) as exc:
        raise CorruptionError(f"undecodable log payload ({exc.__class__.__name__})", path, offset) from None


def decode_upsert(payload: bytes, path: str | None = None, offset: int | None = None) -> UpsertRecord:
    """Raises CorruptionError when the payload does not decode to a well-formed batch."""
    view = memoryview(payload)
    if len(view) < 4:
        raise CorruptionError("upsert payload too short", path, offset)
    (hlen,) = _U32.unpack_from(view)
    if hlen > len(view) - 4:
        raise CorruptionError("upsert payload header overruns the record", path, offset)
    head = _unpack(view[4:4 + hlen], path, offset)
    try:
        ids, contents, metadata, dim = head["ids"], head["contents"], head["metadata"], head["dim"]
        n = len(ids)
        body = view[4 + hlen:]
        if len(contents) != n or len(metadata) != n or len(body) != n * dim * 4:
            raise ValueError("lengths disagree")
        vectors = np.frombuffer(body, dtype=np.float32).reshape(n, dim) if n else np.zeros((0, dim), np.float32)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptionError(f"malformed upsert payload ({exc})", path, offset) from None
    return UpsertRecord(ids, vectors, contents, metadata)


def decode_delete(payload: bytes, path: str | None = None, offset: int | None = None) -> list[str]:
    ids = _unpack(payload, path, offset)
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise CorruptionError("malformed delete payload", path, offset)
    return ids
