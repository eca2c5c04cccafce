"""The store's item values: one on-disk format, its writer and its reader side by side.

An item's LMDB key is the keyed hash of its id (IndexCipher.id_hash). Its value is one of:

  sealed  ``segment u32 | row u32 | AES-GCM(msgpack [id, contents, metadata])``
  bare    ``segment u32 | row u32``  (8 bytes: an item with neither contents nor metadata)

The location is in the clear (it says nothing of the data), so the write path finds the row a
newer version supersedes without a decryption. A sealed body binds (index, key, segment, row)
into its associated data: a value moved to another key or place fails to open.

A bare value seals nothing, so a flush or a merge spends no msgpack and no AES-GCM on such an
item (~2.5-3 us of the ~10 a flushed row cost here, the NumPy overload's rows). What it claims
is checked elsewhere: the segment's ids.bin -- sealed -- holds the id of the row it names and
marks that row bare (RowIds.is_bare). So readers take a bare value only for a row marked bare
whose id is the one asked for (engine/db/reads.py, engine/db/segments.py), a sealed value
stripped to its location is caught, and verify checks every bare key against its row's id
hash (engine/db/verify.py). Sealed values are at least 8 + 12 + 16 bytes: the two forms never
meet in length.
"""
from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from operator import itemgetter

import msgpack
import numpy as np

from lsmvec.disk.crypto import IndexCipher
from lsmvec.disk.meta_values import unpack as _unpack
from lsmvec.errors import CorruptionError

__all__ = ["ItemValues", "StoredItem", "LOCATION", "key_order"]

LOCATION = struct.Struct("<II")
"""segment u32 | row u32: the head of every value, the whole of a bare one."""
_PREPARE_BLOCK = 256
"""Items hashed and sealed between two voluntary GIL releases in a flush (~0.2-0.7 ms of
work: a writer waiting for the GIL waits that long, not the 5 ms switch interval)."""
_KEYS_BLOCK = 1024
"""Ids hashed between two voluntary GIL releases by ItemValues.keys (~0.5 ms of work)."""


def _no_body(contents: object, metadata: object) -> bool:
    return contents is None and metadata is None


_NO_LOCATION = bytes(LOCATION.size)


def key_order(keys: list[bytes]) -> np.ndarray:
    """Positions of `keys` (id hashes: uniformly random bytes) in LMDB's bytewise order, by
    their first 8 bytes (a tie, 1 in 2^64 a pair, only costs locality): a batch read or
    written in this order walks the B-tree's leaves in sequence instead of one random leaf per
    item (1M items, 3-level tree: a get 0.7 us instead of 1.2, a put 0.5-0.9 instead of 1.5).
    0.15 s at 1M keys, against 0.3-0.4 s for a sort of the whole keys."""
    if not keys:
        return np.zeros(0, np.int64)
    width = len(keys[0])
    joined = b"".join(keys)
    if width % 8 or len(joined) != width * len(keys):
        raise ValueError("keys must all be one length, a multiple of 8 bytes")
    prefixes = np.frombuffer(joined, ">u8").reshape(len(keys), width // 8)[:, 0]
    return np.argsort(prefixes.astype(np.uint64))


@dataclass
class StoredItem:
    id: str | None
    """None for a bare value: the id is its segment row's (check `key` against its hash)."""
    segment: int
    row: int
    contents: bytes | None
    metadata: dict | None
    key: bytes = b""


class ItemValues:
    """Makes and reads item values under one index's keys. `path`: the store file, named in
    the CorruptionErrors raised."""

    def __init__(self, cipher: IndexCipher, path: str):
        self._cipher = cipher
        self._path = path

    # -- writer ---------------------------------------------------------------------------------

    def aad(self, key: bytes, segment: int, row: int) -> bytes:
        return b"%s|item|%s|%d|%d" % (self._cipher.uuid, key, segment, row)

    def sealed(self, key: bytes, item_id: str, segment: int, row: int, contents, metadata) -> bytes:
        """The sealed value of one item at (segment, row)."""
        body = msgpack.packb([item_id, contents, metadata], use_bin_type=True)
        return LOCATION.pack(segment, row) + self._cipher.store.seal(body, self.aad(key, segment, row))

    def prepare(self, ids: list[str], segment: int, contents: list, metadata: list,
                bare: np.ndarray | None = None) -> tuple[list[bytes], list[bytes]]:
        """(keys, values) of the items as rows 0.. of `segment`: the per-item hashing and
        sealing a flush does before it takes any lock (the transaction then only puts). Rows
        flagged in `bare` (their contents and metadata are None) get a bare value. Two flat
        lists of bytes, no per-item tuples: tens of thousands of new container objects would
        set off a full garbage collection, a GIL pause other threads feel."""
        id_hash, aad, seal_many = self._cipher.id_hash, self.aad, self._cipher.store.seal_many
        # one Packer for the call (packb makes one per value: 1.1 -> 0.2 us; not shared
        # between threads), the same bytes as sealed()'s
        pack = msgpack.Packer(use_bin_type=True).pack
        loc = LOCATION.pack
        keys: list[bytes] = []
        values: list[bytes] = []
        for start in range(0, len(ids), _PREPARE_BLOCK):
            block = ids[start:start + _PREPARE_BLOCK]
            hashed = [id_hash(item_id) for item_id in block]
            keys.extend(hashed)
            rows = range(start, start + len(block))
            flags = None if bare is None else bare[start:start + len(block)]
            if flags is not None and flags.all():
                values.extend([loc(segment, row) for row in rows])
            else:
                flags = [False] * len(block) if flags is None else flags.tolist()
                sealed = iter(seal_many(
                    [pack([item_id, contents[row], metadata[row]])
                     for row, item_id, flag in zip(rows, block, flags) if not flag],
                    [aad(key, segment, row) for row, key, flag in zip(rows, hashed, flags)
                     if not flag]))
                values.extend([loc(segment, row) if flag else loc(segment, row) + next(sealed)
                               for row, flag in zip(rows, flags)])
            time.sleep(0)  # let waiting threads (an event loop) have the GIL between blocks
        return keys, values

    def keys(self, ids: list[str]) -> list[bytes]:
        """The LMDB keys (id hashes) of `ids`, letting other threads have the GIL between
        blocks (~0.5 us an id)."""
        id_hash = self._cipher.id_hash
        keys: list[bytes] = []
        for start in range(0, len(ids), _KEYS_BLOCK):
            keys.extend([id_hash(item_id) for item_id in ids[start:start + _KEYS_BLOCK]])
            time.sleep(0)
        return keys

    def moved_many(self, keys: list[bytes], values: list[bytes], segment: int,
                   rows: np.ndarray) -> list[bytes]:
        """moved() of each (key, value) to (segment, rows[i]): the bare ones' new locations
        packed in one numpy pass (a 1M-row merge of bare items re-points them all)."""
        heads = np.empty((len(keys), 2), "<u4")
        heads[:, 0] = segment
        heads[:, 1] = rows
        packed = heads.tobytes()
        size = LOCATION.size
        out = [packed[at:at + size] for at in range(0, len(packed), size)]
        for i, value in enumerate(values):
            if len(value) != size:
                out[i] = self.moved(keys[i], value, (segment, int(rows[i])))
        return out

    def moved(self, key: bytes, value: bytes, new: tuple[int, int]) -> bytes:
        """`value` (read at `key`) re-pointed at `new`: a bare one re-pointed; a sealed one
        opened and sealed again -- the same plaintext bytes, bound to the new place -- with no
        msgpack round trip (a merge's carry)."""
        if len(value) == LOCATION.size:
            return LOCATION.pack(*new)
        _segment, _row, body = self.open_body(key, value)
        return LOCATION.pack(*new) + self._cipher.store.seal(body, self.aad(key, *new))

    # -- reader ---------------------------------------------------------------------------------

    def location(self, value: bytes) -> tuple[int, int]:
        """(segment, row) of a value, without decrypting anything."""
        if len(value) < LOCATION.size:
            raise CorruptionError("store item value too short", self._path)
        return LOCATION.unpack_from(value)

    def locations_of(self, values: list[bytes | None]) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
        """(segments, rows, held) of a batch of values read from the store -- None where a
        key held nothing, so held[i] is False -- in one pass over their heads, nothing
        decrypted. CorruptionError for a value too short to hold a location."""
        size, n = LOCATION.size, len(values)
        held = np.ones(n, bool)
        missing = values.count(None)  # C-speed: a flush of new ids finds no key held
        if missing == n:
            return np.zeros(n, np.uint32), np.zeros(n, np.uint32), ~held
        if missing:
            held = np.fromiter((v is not None for v in values), bool, n)
            values = [v if v is not None else _NO_LOCATION for v in values]
        heads = b"".join([v[:size] for v in values])
        if len(heads) != size * len(values):
            raise CorruptionError("store item value too short", self._path)
        locations = np.frombuffer(heads, "<u4").reshape(-1, 2)
        return locations[:, 0], locations[:, 1], held

    def open_body(self, key: bytes, value: bytes) -> tuple[int, int, bytes | None]:
        """(segment, row, plaintext msgpack body -- None for a bare value) of a value read at
        `key`: one AES-GCM open. CorruptionError when it fails to authenticate."""
        segment, row = self.location(value)
        if len(value) == LOCATION.size:
            return segment, row, None
        return segment, row, self._cipher.store.open(value[LOCATION.size:],
                                                     self.aad(key, segment, row), self._path)

    def open_item(self, key: bytes, value: bytes) -> StoredItem:
        segment, row, body = self.open_body(key, value)
        if body is None:
            return StoredItem(None, segment, row, None, None, key)
        item_id, contents, metadata = self.decode_body(body)
        return StoredItem(item_id, segment, row, contents, metadata, key)

    def decode_bodies(self, bodies: list[bytes]) -> list[list]:
        """decode_body of each body, in ONE msgpack call: the bodies joined behind an array
        header (one unpacker set-up for a query's hits instead of one per hit)."""
        n = len(bodies)
        head = (bytes((0x90 | n,)) if n < 16 else
                b"\xdc" + n.to_bytes(2, "big") if n < 1 << 16 else b"\xdd" + n.to_bytes(4, "big"))
        items = _unpack(head + b"".join(bodies), self._path)
        # every item's shape, without a Python-level loop over them (in this order, each map()
        # meets only what the checks before it let through: no TypeError / IndexError)
        if not (type(items) is list and len(items) == n and set(map(type, items)) <= {list}
                and set(map(len, items)) <= {3}
                and set(map(type, map(itemgetter(0), items))) <= {str}):
            raise CorruptionError("malformed store item", self._path)
        return items

    def decode_body(self, body: bytes) -> list:
        """[id, contents, metadata] of a plaintext item body, as fresh objects (a private copy
        for each caller). Raises CorruptionError when it does not decode to that shape."""
        item = _unpack(body, self._path)
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
            raise CorruptionError("malformed store item", self._path)
        return item

    @staticmethod
    def bare_flags(contents: list, metadata: list) -> np.ndarray:
        """Per item, whether it is stored bare: neither contents nor metadata."""
        return np.fromiter(map(_no_body, contents, metadata), bool, len(contents))

    @staticmethod
    def bare_body(item_id: str) -> bytes:
        """The body a bare value's item would have had ([id, None, None]): what readers cache
        and decode in its place."""
        return msgpack.packb([item_id, None, None], use_bin_type=True)
