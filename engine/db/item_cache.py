"""A cache of decrypted store values of segment rows: what a query's metadata / contents costs.

Keyed by (segment id, row), packed into one int (`key`: no tuple per lookup). A segment row
never changes and segment ids are never reused, so an entry can never describe another version
of its item: a newer write, a delete or a merge makes the row dead (never returned again) or
removes the segment, and stale data cannot be served even by an entry nobody dropped. The
entries are still dropped at once (SegmentSource discards a row when it dies; IndexCore forgets
a removed segment), so the bytes go to live rows and a deleted item's plaintext does not linger.

The value is the plaintext msgpack body [id, contents, metadata] the store sealed: its length
is the exact byte count the bound is kept in, and every hit unpacks its own copy, so a caller
mutating a result never changes the cache. Least recently used first out; thread-safe (one
lock per batch of lookups, not per item). Callers hold the index's read lock, so no row they
add dies meanwhile (that takes the write lock).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Iterable, Sequence

DEFAULT_BYTES = 32 << 20
"""32 MiB: ~90k items with ~80-byte metadata, or the hot share of a larger index. A hit saves
an id hash, an LMDB read and an AES-GCM open: 10 hits of a MiniLM query cost 3.8 us from the
cache, 54 us from the store (60k items, pieces timed alone)."""
ENTRY_OVERHEAD = 230
"""Bytes an entry costs beyond its body's length: the ordered dict's slot and link and the key
in its segment's set (tracemalloc: 158 bytes per entry over 100k entries), the int key (32)
and the bytes object's own header (33)."""
ROW_BITS = 32


def key(segment: int, row: int) -> int:
    """The cache key of a segment row."""
    return segment << ROW_BITS | row


class ItemCache:
    __slots__ = ("max_bytes", "_entries", "_by_segment", "_bytes", "_lock", "hits", "misses")

    def __init__(self, max_bytes: int = DEFAULT_BYTES):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, bytes] = OrderedDict()
        self._by_segment: dict[int, set[int]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, keys: Sequence[int]) -> list[bytes | None]:
        """The cached body of each key, or None; hits become the most recently used."""
        entries = self._entries
        get, touch = entries.get, entries.move_to_end
        with self._lock:
            out = [get(k) for k in keys]
            missed = out.count(None)
            for k, body in zip(keys, out):
                if body is not None:
                    touch(k)
            self.hits += len(out) - missed
            self.misses += missed
        return out

    def put_many(self, pairs: Iterable[tuple[int, bytes]]) -> None:
        """Add bodies (a key already present keeps its body: rows never change), then drop the
        least recently used entries until the bound holds."""
        if self.max_bytes <= 0:
            return
        entries, by_segment = self._entries, self._by_segment
        with self._lock:
            for k, body in pairs:
                size = len(body) + ENTRY_OVERHEAD
                if k in entries or size > self.max_bytes:
                    continue
                entries[k] = body
                by_segment.setdefault(k >> ROW_BITS, set()).add(k)
                self._bytes += size
            while self._bytes > self.max_bytes:
                self._drop(*entries.popitem(last=False))

    def discard(self, segment: int, rows: Iterable[int]) -> None:
        """Rows that died (overwritten or deleted): their plaintext goes now."""
        with self._lock:
            held = self._by_segment.get(segment)
            if not held:
                return
            for row in rows:
                k = key(segment, row)
                if k in held:
                    self._drop(k, self._entries.pop(k))

    def forget_segment(self, segment: int) -> None:
        """A segment left the index (merged away): drop its rows (time: its entries, not all)."""
        with self._lock:
            for k in list(self._by_segment.get(segment, ())):
                self._drop(k, self._entries.pop(k))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._by_segment.clear()
            self._bytes = 0

    def _drop(self, k: int, body: bytes) -> None:
        """Account for an entry already removed from _entries (the caller holds the lock)."""
        self._bytes -= len(body) + ENTRY_OVERHEAD
        segment = k >> ROW_BITS
        held = self._by_segment[segment]
        held.discard(k)
        if not held:
            del self._by_segment[segment]
