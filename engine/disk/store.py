"""The LMDB store of one index: bytes and transactions. Two tables: items (id map + contents +
metadata) and meta (sealed msgpack values by name: b"manifest", b"dead/<seg>", b"rows/<seg>",
b"terms/<seg>"). What those values mean -- the manifest, dead-row sets, term indexes -- is the
database's business (engine/db/version.py); this module only seals, opens and stores them
(a big meta value in leaf-sized pieces: engine/disk/meta_values.py).

Keys never reveal ids: an item's key is a keyed hash of its id; what an item's value holds
(its location, and its sealed body unless it is bare) is engine/disk/item_values.py's format.

Every state change is one write transaction (Store.commit, driven by version.install): items,
meta values and the manifest change together or not at all. MapFullError is handled here, in one
place, by growing the map and retrying; LMDB errors become CorruptionError / StorageError here.
"""
from __future__ import annotations

import contextlib
import copy
import errno
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping

import lmdb
import numpy as np

from lsmvec.wal import failpoints, fsio

from lsmvec.disk import store_walk
from lsmvec.disk.crypto import IndexCipher
from lsmvec.disk.filenames import DATA_FILE, STORE_DIR
from lsmvec.disk.item_values import ItemValues, StoredItem
from lsmvec.disk.meta_values import MetaValues
from lsmvec.errors import (CorruptionError, ReadOnlyError, StorageError, StorageFullError,
                           storage_error_from)

log = logging.getLogger(__name__)

_INITIAL_MAP = 64 << 20
_READER_MAP = 1 << 40
"""A reader maps this much address space (not memory): LMDB refuses a read transaction once the
writer's map outgrows the reader's (MDB_MAP_RESIZED), and growing it needs every transaction of
the process closed. The writer's map starts at 64 MiB and doubles; 1 TiB is never reached."""
_FULL_DISK_BYTES = 64 << 20
"""Below this much free space, an LMDB write failing with EIO is taken for a full disk."""
_MIN_PAGE = 4096  # LMDB's two meta pages come first in every data file


class Store:
    """Thread-safe: LMDB serialises write transactions; reads are short read transactions."""

    def __init__(self, folder: Path, cipher: IndexCipher, *, create: bool = False,
                 initial: Mapping[bytes, Any] | None = None, read_only: bool = False):
        """Open the store of an index folder. `create` (only while the index is being built in
        its temporary folder) makes the file, its tables and the `initial` meta values (name ->
        msgpack-able object; the database's empty manifest, see version.create_store) in one
        transaction; otherwise the file and tables must exist, so a store that lost them is a
        CorruptionError and never taken for a new, empty index. `read_only` (a reader process
        beside the writer): LMDB opened read-only -- the only file it touches is lock.mdb's
        shared reader table -- and reads go through snapshots (``snapshot()``)."""
        self.path = folder / STORE_DIR
        self.read_only = read_only
        self._snap: lmdb.Transaction | None = None
        self._snap_lock = threading.RLock()
        self._owner = True  # snapshots share the environment; only its opener closes it
        self._data = str(self.path / DATA_FILE)
        self._cipher = cipher
        self._metas = MetaValues(cipher, self._data)
        self.values = ItemValues(cipher, self._data)
        try:
            if create:
                self.path.mkdir(mode=0o700)
            existing = os.path.getsize(self._data) if os.path.exists(self._data) else None
            if not create and (existing is None or existing < 2 * _MIN_PAGE):
                raise CorruptionError(f"store file is missing or truncated ({existing} bytes)",
                                      self._data)
            self.env = lmdb.open(str(self.path), map_size=_READER_MAP if read_only else _INITIAL_MAP,
                                 max_dbs=4, subdir=True, sync=True, metasync=True,
                                 readahead=False, max_readers=254, lock=True, meminit=True,
                                 readonly=read_only)
        except lmdb.Error as exc:
            raise self._wrap(exc, "open") from None
        except OSError as exc:
            raise storage_error_from(exc, "store open") from None
        # LMDB maps the file and trusts it: a read past the end of a truncated file faults
        # (SIGBUS) and kills the interpreter. Check the size against the meta page's last page
        # before any tree page is touched.
        info = self.env.info()
        need = (info["last_pgno"] + 1) * self.env.stat()["psize"]
        size = os.path.getsize(self._data)
        if size < need and not self._tables_within_file():
            self.env.close()
            raise CorruptionError(f"store file is truncated ({size} bytes, its pages need {need})",
                                  self._data)
        try:
            self._items = self.env.open_db(b"items", create=create)
            self._meta = self.env.open_db(b"meta", create=create)
        except lmdb.NotFoundError:
            self.env.close()
            raise CorruptionError("the store's tables are missing", self._data) from None
        except lmdb.Error as exc:
            self.env.close()
            raise self._wrap(exc, "open") from None
        if create:
            def fill(txn: StoreTxn) -> None:
                for name, obj in (initial or {}).items():
                    txn.put_meta(name, obj)
            self.commit(fill)
            fsio.fsync_dir(self.path)  # data.mdb's own directory entry
        if info["map_size"] < _INITIAL_MAP and not read_only:
            self.env.set_mapsize(_INITIAL_MAP)

    def _wrap(self, exc: BaseException, what: str) -> Exception:
        # LMDB's "internal" errors on a write (a full page, a cursor stack overflow, a panic)
        # come from a damaged tree, as do its read-side corruption errors.
        if isinstance(exc, (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.BadValsizeError,
                            lmdb.InvalidError, lmdb.VersionMismatchError, lmdb.PageFullError,
                            lmdb.CursorFullError, lmdb.PanicError, lmdb.BadChecksumError,
                            lmdb.IncompatibleError, lmdb.ProblemError)):
            return CorruptionError(f"store {what}: {exc}", self._data)
        # py-lmdb's own header check at open (a flipped version bit: "LMDB data format v33 is
        # not supported"): this build wrote the file. MDB_BAD_TXN: our transactions never go
        # on after an error and never nest, so LMDB failed one silently on a damaged page (a
        # planted bit flip: at the next get of a read, at the next delete of a merge's write).
        if (type(exc) is lmdb.Error and what == "open") or isinstance(exc, lmdb.BadTxnError):
            return CorruptionError(f"store {what}: {exc}", self._data)
        if isinstance(exc, OSError):
            return storage_error_from(exc, f"store {what}")
        if self._disk_full(exc):
            return StorageFullError(errno.ENOSPC, f"store {what}: no space left on device "
                                                  f"(LMDB said: {exc})")
        return StorageError(0, f"store {what}: {exc}")

    def _disk_full(self, exc: BaseException) -> bool:
        """LMDB reports a write that ran out of space as a short write, i.e. EIO; call it a
        full disk when the store's file system has (almost) no room left."""
        text = str(exc)
        if "No space left" in text or "Disk quota" in text:
            return True
        if "Input/output error" not in text:
            return False
        try:
            st = os.statvfs(self.path)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < _FULL_DISK_BYTES

    # -- reads --------------------------------------------------------------------------------

    def location(self, item_id: str, txn: lmdb.Transaction | None = None,
                 key: bytes | None = None) -> tuple[int, int] | None:
        """(segment, row) of the id's flushed version, without decrypting anything (`key`:
        the id's hash when the caller has it already)."""
        key = key or self._cipher.id_hash(item_id)
        try:
            if txn is None:
                with self._reading() as txn:
                    value = txn.get(key, db=self._items)
            else:
                value = txn.get(key, db=self._items)
        except lmdb.Error as exc:
            raise self._wrap(exc, "read") from None
        return None if value is None else self.values.location(value)

    def get_bodies(self, ids: Iterable[str]) -> list[tuple[int, int, bytes | None] | None]:
        """Each id's (segment, row, plaintext body: None for a bare value) -- values.decode_body
        decodes it -- or None; all in one read transaction, one id hash and one AES-GCM open
        per item, nothing decoded (a query's hits are read this way, then cached:
        db/item_cache.py)."""
        id_hash, open_body = self._cipher.id_hash, self.values.open_body
        out: list[tuple[int, int, bytes] | None] = []
        try:
            with self._reading() as txn:
                get, items = txn.get, self._items
                for item_id in ids:
                    key = id_hash(item_id)
                    value = get(key, db=items)
                    out.append(None if value is None else open_body(key, value))
        except lmdb.Error as exc:
            raise self._wrap(exc, "read") from None
        return out

    def _tables_within_file(self) -> bool:
        return store_walk.tables_within_file(self.path)

    def walk_in_child(self, timeout_s: float = 600.0) -> str | None:
        """store_walk.walk_in_child: None when a child walked every page, else what failed."""
        return store_walk.walk_in_child(self.path, timeout_s)

    def iter_items(self) -> Iterator[StoredItem]:
        try:
            with self._reading() as txn:
                for key, value in txn.cursor(db=self._items):
                    yield self.values.open_item(key, value)
        except lmdb.Error as exc:
            raise self._wrap(exc, "read") from None

    def count(self) -> int:
        try:
            with self._reading() as txn:
                return int(txn.stat(self._items)["entries"])
        except lmdb.Error as exc:
            raise self._wrap(exc, "read") from None

    def used_bytes_split(self) -> tuple[int, int]:
        """(bytes of the pages the store's tables use now -- not its free pages, which LMDB
        reuses --, of those the meta table's): one read transaction, ~10 us. The meta table
        holds each segment's row ids, dead set and term index, which grow with its rows dead
        or alive (~16 B a row for 11-character ids) -- only the items table grows with the
        live items alone."""
        try:
            with self._reading() as txn:
                stats = [txn.stat(self._items), txn.stat(self._meta), txn.stat()]
        except lmdb.Error as exc:
            raise self._wrap(exc, "read") from None
        pages = [st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"] for st in stats]
        psize = stats[0]["psize"]
        return (sum(pages) + 2) * psize, pages[1] * psize  # + the two meta pages

    @property
    def data_file(self) -> str:
        """The path of data.mdb: what a CorruptionError about the store names."""
        return self._data

    def get_meta(self, name: bytes) -> Any:
        """The opened, decoded meta value `name` (None when there is none), in a short read
        transaction. A value that fails to open or decode is a CorruptionError."""
        try:
            with self._reading() as txn:
                meta = self._meta
                return self._metas.read(lambda key: txn.get(key, db=meta), name)
        except lmdb.Error as exc:
            raise self._wrap(exc, "read") from None

    # -- the one write path -------------------------------------------------------------------

    def commit(self, edit: Callable[["StoreTxn"], None], *,
               guard: Callable[[], ContextManager[Any]] | None = None,
               then: Callable[[], None] | None = None) -> None:
        """Run edit(txn) in one write transaction; grow the map and retry when it is full.

        `guard` (a lock's context manager) is held only around the commit itself and `then`
        (the caller's switch of its in-memory state), so the long part -- the edit -- blocks
        nobody, while readers still never see the committed store beside the old memory.
        Callers serialize their commits (one write transaction at a time)."""
        if self.read_only:
            raise ReadOnlyError(f"the store {self._data} is open read-only")
        try:
            failpoints.hit("store.commit")
        except OSError as exc:
            raise storage_error_from(exc, "store commit") from None
        while True:
            txn = None
            try:
                txn = self.env.begin(write=True)
                edit(StoreTxn(self, txn))
                with guard() if guard is not None else contextlib.nullcontext():
                    done, txn = txn, None
                    done.commit()
                    if then is not None:
                        then()
                return
            except lmdb.MapFullError:
                if txn is not None:  # set_mapsize needs no write transaction open
                    txn.abort()
                    txn = None
                size = self.env.info()["map_size"] * 2
                log.info("store map full: growing to %d bytes", size)
                self.env.set_mapsize(size)
            except lmdb.Error as exc:
                raise self._wrap(exc, "write") from None
            finally:
                if txn is not None:
                    txn.abort()

    def settle(self, name: bytes) -> None:
        """Commit one tiny write transaction -- the meta value `name` (the manifest) put back
        byte for byte, so the store's content does not change -- after a commit that rewrote
        many pages.

        LMDB gives a write transaction only the pages freed two or more commits before it (the
        previous commit's pages stay for its other meta page); until then it takes new pages
        at the end of the file, which never shrinks. A flush or merge rewrites nearly every
        leaf page of the items table (item keys are hashes: 2,000 puts touch most of 1,100
        leaves), so two of them back to back need three copies of the table; with this commit
        between them, the next one reuses the pages the last one freed. Measured on 50,000
        items, 30 rewrites of half of them: data.mdb 3.01x its used pages, 2.01x with this.
        Costs one small commit (two fsyncs). No failpoint: it changes nothing a crash could
        expose. A failure is logged and left: the big commit before it stands."""
        try:
            with self.env.begin(write=True, db=self._meta) as txn:
                raw = txn.get(name)
                if raw is not None:
                    txn.put(name, raw)
        except (lmdb.Error, OSError) as exc:
            log.warning("store settle commit failed (%s); the file may grow", exc)

    # -- snapshots (readers) -------------------------------------------------------------------

    @contextlib.contextmanager
    def _reading(self) -> Iterator[lmdb.Transaction]:
        """A read transaction: a short one of its own, or this snapshot's (one thread at a time
        uses it: an LMDB transaction is not for concurrent use)."""
        if self._snap is None:
            with self.env.begin() as txn:
                yield txn
        else:
            with self._snap_lock:
                yield self._snap

    def snapshot(self) -> "Store":
        """This store as it is now, for a reader's view: every read of the returned Store sees
        this one committed state until its release(). It holds an LMDB reader slot, which keeps
        the pages of that state from being reused by the writer: release it soon."""
        clone = copy.copy(self)
        try:
            clone._snap = self.env.begin()
        except lmdb.Error as exc:
            raise self._wrap(exc, "read") from None
        clone._snap_lock = threading.RLock()
        clone._owner = False
        return clone

    @property
    def snapshot_txn_id(self) -> int | None:
        """The id of the committed transaction this snapshot sees (None: not a snapshot)."""
        return self._snap.id() if self._snap is not None else None

    def last_txn_id(self) -> int:
        """The id of the newest committed write transaction (any process's)."""
        try:
            return int(self.env.info()["last_txnid"])
        except lmdb.Error as exc:
            raise self._wrap(exc, "read") from None

    def release(self) -> None:
        """End this snapshot's read transaction (its reader slot freed). Idempotent."""
        with self._snap_lock:
            snap, self._snap = self._snap, None
            if snap is not None:
                with contextlib.suppress(lmdb.Error):  # its environment already closed
                    snap.abort()

    def check_readers(self) -> int:
        """Free the reader slots of reader processes that died (kill -9) -- a slot left behind
        would pin the pages of its old state forever and the file would grow. Returns how many
        were freed."""
        try:
            return int(self.env.reader_check())
        except lmdb.Error as exc:
            raise self._wrap(exc, "read") from None

    def close(self) -> None:
        self.release()
        if self._owner:
            self.env.close()


class StoreTxn:
    """What an edit may do inside the one write transaction."""

    def __init__(self, store: Store, txn: lmdb.Transaction):
        self._s = store
        self.txn = txn

    def location(self, item_id: str, key: bytes | None = None) -> tuple[int, int] | None:
        return self._s.location(item_id, self.txn, key)

    def delete_item(self, item_id: str) -> None:
        self.txn.delete(self._s._cipher.id_hash(item_id), db=self._s._items)

    def get_meta(self, name: bytes) -> Any:
        """A meta value as this transaction sees it (None when there is none)."""
        meta = self._s._meta
        return self._s._metas.read(lambda key: self.txn.get(key, db=meta), name)

    def put_meta(self, name: bytes, obj: Any) -> None:
        """Seal `obj` (msgpack) under `name`, bound to it and to the index (cut in pieces
        when it is big: meta_values.CHUNK)."""
        MetaValues.drop_pieces(self.txn, self._s._meta, name)
        for key, value in self._s._metas.items(name, obj):
            self.txn.put(key, value, db=self._s._meta)

    def delete_meta(self, name: bytes) -> None:
        MetaValues.drop_pieces(self.txn, self._s._meta, name)
        self.txn.delete(name, db=self._s._meta)

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """The item values at `keys` (None where a key holds none), in one LMDB call; best
        in key_order (item_values)."""
        found = self.txn.cursor(db=self._s._items).getmulti(keys)
        if len(found) == len(keys):
            return [value for _key, value in found]
        held = dict(found)
        return [held.get(key) for key in keys]

    def put_many(self, keys: list[bytes], values: list[bytes]) -> None:
        """Put each (key, value) pair, in one LMDB call; best in key_order (item_values)."""
        self.txn.cursor(db=self._s._items).putmulti(list(zip(keys, values)))

    def replace_many(self, keys: list[bytes], values: list[bytes]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Put (key, value) pairs from ItemValues.prepare; return the (segments, rows, held)
        locations the keys held before (ItemValues.locations_of). Keys in key_order: a get
        and a put ~1.2 us an item at 1M items, against ~2.7 for replace()s in hash order."""
        old = self._s.values.locations_of(self.get_many(keys))
        self.put_many(keys, values)
        return old

    def carry_items(self, keys: list[bytes], old_segments: np.ndarray, old_rows: np.ndarray,
                    new_segment: int, new_rows: np.ndarray) -> np.ndarray:
        """A merge moves items (`keys`: their id hashes, best in key_order) from
        (old_segments[i], old_rows[i]) to (new_segment, new_rows[i]). Those the store still
        points at their old place are re-pointed: a bare value rewritten, a sealed one's body
        -- the same plaintext bytes -- sealed again bound to the new place (no msgpack round
        trip). Returns which were carried; the others (superseded or deleted meanwhile) are
        left as they are. One batched get and put: a 1M-item merge of bare items spent 4.8 s
        here in a get and a put per item in hash order."""
        values = self.get_many(keys)
        segments, rows, held = self._s.values.locations_of(values)
        carried = held & (segments == old_segments) & (rows == old_rows)
        picked = np.flatnonzero(carried).tolist()
        if picked:
            moved_keys = [keys[i] for i in picked]
            self.put_many(moved_keys, self._s.values.moved_many(
                moved_keys, [values[i] for i in picked], new_segment, new_rows[carried]))
        return carried
