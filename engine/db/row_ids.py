"""RowIds: a segment's row ids (row -> id str) packed into one UTF-8 buffer and an offset array.

A tuple of a million short str objects costs ~65 bytes a row (a 55-byte str object plus its
8-byte slot): at 128 dimensions that is an eighth of the float32 rows again, the difference
between a trained index at 1.17x and at 1.29x its raw vector bytes (issue 17's bound: 1.2x).
Packed, a row costs its id's UTF-8 bytes plus an 8-byte offset (~14 bytes for "123456"), and
neither the buffer nor the offsets are objects the garbage collector walks.

When every id is ASCII (the usual case) the buffer is held as one str, so reading an id is a
slice and no decode: ``take`` of a query's 10 hits 8.1 -> 7.1 us on the cold caches a ScaNN
search leaves behind (a tuple of str would be ~0.3 us warm, at the memory price above).
Otherwise it is UTF-8 bytes and each read decodes. Ids are valid Unicode (lone surrogates are
refused at the door: request/items.py), so UTF-8 round-trips every one of them.

`bare` marks the rows whose item has neither contents nor metadata: the store keeps only their
location (engine/disk/store.py, "bare values"), and this flag -- sealed in the segment's ids.bin
with the ids -- is what lets a reader tell such a value from a sealed one an attacker stripped.
"""
from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate
from typing import overload

import msgpack
import numpy as np

__all__ = ["RowIds"]

_GATHER_FROM = 256
PACK_FORMAT = 1


def _offset_array(ends: np.ndarray) -> array:
    """The n + 1 offsets held as 4-byte ints when they fit (ids under 4 GiB: always, in
    practice; 4 MB fewer at 1M rows), else 8-byte."""
    narrow = int(ends[-1]) < 1 << 32 and array("I").itemsize == 4
    return array("I" if narrow else "Q", ends.astype(np.uint32 if narrow else np.uint64).tobytes())


def _bare_bits(bare: np.ndarray | Sequence[bool] | None, rows: int) -> np.ndarray | None:
    """`bare` (a bool per row) as read-only packed bits (numpy.packbits: 1 bit a row, 125 KB
    at 1M rows), or None when no row is bare (the common case costs no array)."""
    if bare is None:
        return None
    flags = np.asarray(bare, dtype=bool)
    if flags.shape != (rows,):
        raise ValueError(f"bare flags: expected {rows}, got shape {flags.shape}")
    if not flags.any():
        return None
    bits = np.packbits(flags)
    bits.flags.writeable = False
    return bits


class RowIds(Sequence[str]):
    """An immutable sequence of str (a segment's ids by row) held as UTF-8 bytes + offsets.
    Equal to any sequence of the same strs in the same order (a tuple or list too)."""

    __slots__ = ("_data", "_ends", "_bare")

    def __init__(self, ids: Iterable[str] = (), bare: np.ndarray | None = None) -> None:
        """`bare`: a bool per row, True where the store holds the item without a body (None:
        no row is bare)."""
        ids = ids if isinstance(ids, (list, tuple)) else list(ids)
        joined = "".join(ids)
        data: str | bytes = joined
        if joined.isascii():  # (the usual case): char offsets are byte offsets
            lengths: Iterable[int] = map(len, ids)
        else:
            data = joined.encode("utf-8")
            lengths = map(len, [item.encode("utf-8") for item in ids])
        ends = array("Q", [0])
        ends.extend(accumulate(lengths))
        self._data = data  # str when all ASCII, else UTF-8 bytes
        self._ends = _offset_array(np.frombuffer(ends, np.uint64))
        self._bare = _bare_bits(bare, len(ids))

    @property
    def any_bare(self) -> bool:
        return self._bare is not None

    def is_bare(self, row: int) -> bool:
        """Whether the store holds row `row`'s item as a bare location (no body)."""
        bits = self._bare
        return bits is not None and bool(bits[row >> 3] >> (7 - (row & 7)) & 1)

    def bare_of(self, rows: np.ndarray) -> np.ndarray:
        """The bare flag of each of `rows` (an int array), as a bool array."""
        if self._bare is None:
            return np.zeros(len(rows), bool)
        rows = np.asarray(rows, np.int64)
        return (self._bare[rows >> 3] >> (7 - (rows & 7)) & 1).astype(bool)

    def pack(self) -> dict:
        """The store's form (msgpack-able, no pickle): {"format": 1, "data": UTF-8 bytes,
        "ends": the n + 1 offsets as little-endian uint64} and, when any row is bare, "bare":
        the flags as bits (numpy.packbits). Loading it is two copies, where a list of a
        million str objects cost 0.1 s to decode and 0.07 s to pack again (a tenth of the
        reopen of a 1M-row index)."""
        out = {"format": PACK_FORMAT, "data": self._utf8(),
               "ends": self._offsets().astype("<u8").tobytes()}
        if self._bare is not None:
            out["bare"] = self._bare.tobytes()
        return out

    @classmethod
    def unpack(cls, raw: dict, rows: int) -> "RowIds":
        """Inverse of pack, checked (ValueError for anything malformed: a foreign format,
        offsets not rising from 0 to the data's end, another row count)."""
        if raw.get("format") != PACK_FORMAT or not {"format", "data", "ends"} <= set(raw) \
                or not set(raw) <= {"format", "data", "ends", "bare"}:
            raise ValueError("not a packed row id list")
        bits = raw.get("bare")
        if bits is not None and (not isinstance(bits, bytes) or len(bits) != (rows + 7) // 8):
            raise ValueError("packed row ids: the bare flags do not fit the row count")
        data, ends = raw["data"], np.frombuffer(raw["ends"], "<u8")
        if not isinstance(data, bytes) or len(ends) != rows + 1 or ends[0] != 0 \
                or ends[-1] != len(data) or (len(ends) > 1 and (np.diff(ends.astype(np.int64)) < 0).any()):
            raise ValueError("packed row ids are inconsistent")
        out = cls.__new__(cls)
        out._data = data.decode("ascii") if data.isascii() else data  # 7 MB at 1M rows: ~2 ms
        out._ends = _offset_array(ends)
        stored = None if bits is None else np.frombuffer(bits, np.uint8)  # read-only
        out._bare = stored if stored is not None and stored.any() else None
        return out

    def to_bytes(self) -> bytes:
        """pack() as msgpack: a segment's ids.bin sidecar (sealed by the segment build)."""
        return msgpack.packb(self.pack(), use_bin_type=True)

    @classmethod
    def from_bytes(cls, raw: bytes | bytearray, rows: int) -> "RowIds":
        """Inverse of to_bytes, checked like unpack (ValueError for anything malformed)."""
        try:
            obj = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise ValueError(f"not msgpack ({exc})") from None
        if not isinstance(obj, dict):
            raise ValueError("not a packed row id list")
        return cls.unpack(obj, rows)

    def packed(self) -> tuple[np.ndarray, np.ndarray]:
        """(every id's UTF-8 bytes back to back as uint8, the n + 1 offsets as int64): read-only
        views for vectorised work over the ids (db/iteration.py sorts them without a str each)."""
        return (np.frombuffer(self._utf8(), np.uint8),
                self._offsets().astype(np.int64))

    def _offsets(self) -> np.ndarray:
        return np.frombuffer(self._ends, f"u{self._ends.itemsize}")

    def _utf8(self) -> bytes:
        data = self._data
        return data.encode("ascii") if isinstance(data, str) else data

    def id_bytes(self, row: int) -> bytes:
        """The UTF-8 bytes of row ``row``'s id (a sort key: ids order as their UTF-8)."""
        data, ends = self._data, self._ends
        got = data[ends[row]:ends[row + 1]]
        return got.encode("ascii") if isinstance(got, str) else got

    def __len__(self) -> int:
        return len(self._ends) - 1

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.take(range(*index.indices(len(self))))
        ends = self._ends
        if index < 0:
            index += len(ends) - 1
        if not 0 <= index < len(ends) - 1:
            raise IndexError("row id index out of range")
        got = self._data[ends[index]:ends[index + 1]]
        return got if isinstance(got, str) else got.decode("utf-8")

    def take(self, rows: Iterable[int]) -> list[str]:
        """The ids of ``rows`` (non-negative Python or numpy ints, < len), in order. Many rows
        (a numpy array) take their offsets in two vectorised gathers: 0.72 s against 0.95 s
        for 500k ids (query_metadata's 50% case), no change for a query's few hits."""
        data, ends = self._data, self._ends
        if isinstance(rows, np.ndarray):
            if len(rows) > _GATHER_FROM:
                at = self._offsets()
                index = rows.astype(np.int64, copy=False)
                if isinstance(data, str):
                    return [data[a:b] for a, b in zip(at[index].tolist(), at[index + 1].tolist())]
                return [data[a:b].decode("utf-8")
                        for a, b in zip(at[index].tolist(), at[index + 1].tolist())]
            rows = rows.tolist()
        elif not isinstance(rows, list):
            rows = list(map(int, rows))
        if isinstance(data, str):  # a query's hits: a slice each, no decode
            return [data[ends[r]:ends[r + 1]] for r in rows]
        return [data[ends[r]:ends[r + 1]].decode("utf-8") for r in rows]

    def __iter__(self) -> Iterator[str]:
        data, ends = self._data, self._ends
        if isinstance(data, str):
            for r in range(len(ends) - 1):
                yield data[ends[r]:ends[r + 1]]
            return
        for r in range(len(ends) - 1):
            yield data[ends[r]:ends[r + 1]].decode("utf-8")

    def index(self, value: str, start: int = 0, stop: int | None = None) -> int:
        """The first row holding ``value``. Raises ValueError when none does."""
        stop = len(self) if stop is None else stop
        for row in range(start, stop):
            if self[row] == value:
                return row
        raise ValueError(f"{value!r} is not a row id")

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        try:
            self.index(value)
        except ValueError:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RowIds):
            return self._data == other._data and self._ends == other._ends
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists, like them unhashable

    @property
    def nbytes(self) -> int:
        """Bytes held: the UTF-8 buffer, the offsets and the bare flags."""
        return (len(self._data) + self._ends.itemsize * len(self._ends)
                + (0 if self._bare is None else self._bare.nbytes))

    def __repr__(self) -> str:
        head = ", ".join(repr(item) for item in self.take(range(min(3, len(self)))))
        return f"RowIds([{head}{', ...' if len(self) > 3 else ''}], n={len(self)})"
