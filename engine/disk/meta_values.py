"""The store's meta values (engine/disk/store.py): msgpack objects sealed under their names, and
how a big one is cut into pieces that each fit in an LMDB B-tree leaf.

A value whose msgpack bytes are at most CHUNK is stored as it always was: one sealed value under
its name, bound to the name. A bigger one leaves under its name a sealed head -- the msgpack
extension ``ExtType(17, pieces u32 | tag 8 B)`` -- and its bytes in CHUNK-sized pieces under
``name#<index, 8 digits>``, each sealed apart, bound to the name, its index, the piece count and
the random tag of the write that cut them (a piece of another value, another write or another
place fails to open). Stores written before pieces existed hold only whole values and read the
same; a build without this module reads a cut value as malformed.
"""
from __future__ import annotations

import os
import struct
from typing import Any, Callable

import lmdb
import msgpack

from lsmvec.disk.crypto import IndexCipher
from lsmvec.errors import CorruptionError

CHUNK = 1900
"""Largest meta value (msgpack bytes) stored in one piece; a larger one (a segment's row ids:
14 B a row, 700 KB for 50,000 rows; its dead set, its term index) is cut into pieces this size.
Sealed (+28 B) with its key, a piece fits in a B-tree leaf (LMDB's limit there is 2,038 B on
4 KiB pages), so no meta value needs LMDB overflow pages: a run of free pages as long as the
value, which LMDB's fragmented free list seldom holds. Whole, every merge's row ids went to the
end of data.mdb (it grew by 3.4 pages per 1,000 rows merged with 2,400 free pages in the file:
2.3x its used pages after 2 minutes of mixed writes, and climbing)."""

_CHUNKED = 17
_HEAD = struct.Struct("<I8s")


def unpack(data: bytes, path: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        raise CorruptionError("undecodable store value", path) from None


def piece_key(name: bytes, index: int | None) -> bytes:
    """Key of piece `index` of a cut value (None: the prefix of them all). Names hold no '#':
    b"rows/1#" is no prefix of b"rows/10#..." ."""
    return name + b"#" if index is None else b"%s#%08d" % (name, index)


class MetaValues:
    """Seals and opens the meta values of one index (its cipher; `path` names the store file
    in a CorruptionError)."""

    def __init__(self, cipher: IndexCipher, path: str) -> None:
        self._cipher, self._path = cipher, path

    def _aad(self, name: bytes) -> bytes:
        return b"%s|meta|%s" % (self._cipher.uuid, name)

    def _piece_aad(self, name: bytes, index: int, count: int, tag: bytes) -> bytes:
        return b"%s|meta-piece|%s|%d|%d|%s" % (self._cipher.uuid, name, index, count, tag)

    def items(self, name: bytes, obj: Any) -> list[tuple[bytes, bytes]]:
        """The (key, sealed value) pairs that store `obj` under `name`: one pair, or the head
        and its pieces when the packed value is over CHUNK."""
        seal = self._cipher.store.seal
        body = msgpack.packb(obj, use_bin_type=True)
        if len(body) <= CHUNK:
            return [(name, seal(body, self._aad(name)))]
        count, tag = -(-len(body) // CHUNK), os.urandom(8)
        head = msgpack.packb(msgpack.ExtType(_CHUNKED, _HEAD.pack(count, tag)))
        view = memoryview(body)
        return [(name, seal(head, self._aad(name)))] + [
            (piece_key(name, i), seal(view[i * CHUNK:(i + 1) * CHUNK],
                                      self._piece_aad(name, i, count, tag)))
            for i in range(count)]

    def read(self, get: Callable[[bytes], bytes | None], name: bytes) -> Any:
        """The opened, decoded value `name` (None when there is none); `get` reads a key in the
        caller's transaction (the pieces of a cut value come from the same snapshot). A value
        or piece that fails to open or decode, or a missing piece, is a CorruptionError."""
        raw = get(name)
        if raw is None:
            return None
        obj = unpack(self._cipher.store.open(raw, self._aad(name), self._path), self._path)
        if not isinstance(obj, msgpack.ExtType):
            return obj
        if obj.code != _CHUNKED or len(obj.data) != _HEAD.size:
            raise CorruptionError(f"malformed store value {name!r}", self._path)
        count, tag = _HEAD.unpack(obj.data)
        parts = []
        for i in range(count):
            piece = get(piece_key(name, i))
            if piece is None:
                raise CorruptionError(f"store value {name!r} lost piece {i} of {count}",
                                      self._path)
            parts.append(self._cipher.store.open(piece, self._piece_aad(name, i, count, tag),
                                                 self._path))
        return unpack(b"".join(parts), self._path)

    @staticmethod
    def drop_pieces(txn: lmdb.Transaction, db: Any, name: bytes) -> None:
        """Delete the pieces stored for `name` (nothing is opened). Pieces are numbered from 0
        without gaps (a value and its pieces change in one transaction), so each is deleted by
        its exact key until one is missing. Not with a cursor: LMDB asserts (SIGABRT) in
        mdb_cursor_next on some damaged B-tree pages, and this runs at every open's manifest
        write -- the corruption fuzz planted a zeroed page that killed the interpreter here."""
        index = 0
        while txn.delete(piece_key(name, index), db=db):
            index += 1
