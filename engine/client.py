"""Client: a folder of indexes (the sync face). AsyncClient wraps the same object.

One open IndexCore per index folder per process: opening an index that is already open returns
a new Index face over the same core (reference counted), never a second writer. A read_only
opening (db/reader.py) shares one Reader per folder the same way; where this process has the
index open for writing, a read_only face over the writer's core is given instead (always fresh).
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from lsmvec.disk.catalog import Catalog, check_index_name
from lsmvec.disk.config import METRICS, cipher_of, config_exists, new_config, read_config, write_config
from lsmvec.db.core import DURABILITY, IndexCore
from lsmvec.db.reader import DEFAULT_MAX_STALENESS, Reader
from lsmvec.disk.crypto import check_key, generate_key
from lsmvec.errors import (ClosedError, IndexNotFoundError, InvalidArgumentError, InvalidTypeError,
                           ReadOnlyError)
from lsmvec.index import Index
from lsmvec.request.options import IndexOptions
from lsmvec.db.version import create_store

log = logging.getLogger(__name__)

__all__ = ["Client", "generate_key"]

_registry_lock = threading.Lock()
_registry: dict[str, list] = {}  # realpath -> [core, refcount]


def _acquire_core(folder: Path, index_key: bytes, durability: str) -> IndexCore:
    key = os.path.realpath(folder)
    with _registry_lock:
        entry = _registry.get(key)
        if entry is not None and isinstance(entry[0], IndexCore):
            read_config(folder, index_key)  # the key must open it, even when already open
            entry[1] += 1
            return entry[0]
        if entry is not None:  # LMDB allows one environment per file and process
            raise InvalidArgumentError(f"index {folder.name!r} is open read_only in this "
                                       "process: close those handles before opening it to write")
        core = IndexCore(folder, index_key, durability=durability)
        _registry[key] = [core, 1]
        return core


def _acquire_reader(folder: Path, index_key: bytes, max_staleness: float) -> IndexCore | Reader:
    """This process's Reader of `folder` (or its writer's core, when it has one)."""
    key = os.path.realpath(folder)
    with _registry_lock:
        entry = _registry.get(key)
        if entry is not None:
            read_config(folder, index_key)
            entry[1] += 1
            return entry[0]
        reader = Reader(folder, index_key, max_staleness=max_staleness)
        _registry[key] = [reader, 1]
        return reader


def _release_core(core: IndexCore | Reader) -> None:
    key = os.path.realpath(core.folder)
    with _registry_lock:
        entry = _registry.get(key)
        if entry is None or entry[0] is not core:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _registry[key]
    core.close()


def _check_staleness(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.01 <= value <= 3600:
        raise InvalidArgumentError(f"max_staleness must be a number of seconds in 0.01..3600, "
                                   f"got {value!r}")
    return float(value)


def _check_durability(durability: object) -> str:
    if durability not in DURABILITY:
        raise InvalidArgumentError(f"durability must be one of {DURABILITY}, got {durability!r}")
    return durability  # type: ignore[return-value]


class Client:
    """`Client(path)`: a folder (created if missing) holding any number of indexes."""

    def __init__(self, path: str | os.PathLike, *, durability: str = "fsync",
                 read_only: bool = False):
        """`read_only=True`: every index is loaded read_only (db/reader.py) and nothing in the
        folder is created, changed or removed; create and delete raise ReadOnlyError."""
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidTypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        if not isinstance(read_only, bool):
            raise InvalidTypeError(f"read_only must be a bool, got {type(read_only).__name__}")
        self._durability = _check_durability(durability)
        self.read_only = read_only
        self._catalog = Catalog(path, read_only=read_only)
        self._open: list[Index] = []
        self._closed = False
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._catalog.root

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("client is closed")

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError(f"client of {self.path} is read_only: indexes cannot be created "
                                "or deleted through it")

    def _face(self, core: IndexCore | Reader, read_only: bool = False) -> Index:
        index = Index(core, _release_core, self, read_only=read_only)
        with self._lock:
            self._open.append(index)
        return index

    def create_index(self, index_name: str, index_key: bytes, *, dimension: int | None = None,
                     metric: str = "euclidean", embedding_model: str | None = None,
                     index_config: dict | None = None, durability: str | None = None,
                     **tuning: Any) -> Index:
        """Create and open an index. Raises IndexExistsError, InvalidIndexNameError, InvalidKeyError.

        ``tuning``: the IndexOptions fields as keywords (memtable_bytes=, background_compaction=,
        wal_roll_bytes=; see lsmvec.request.options). An unknown name raises InvalidTypeError
        (a TypeError), a bad value InvalidTypeError / InvalidArgumentError, before any file is
        written."""
        self._check_open()
        self._check_writable()
        options = IndexOptions.from_keywords(tuning)
        check_index_name(index_name)
        key = check_key(index_key)
        if index_config:  # the reference product passes dimension / metric inside a config dict
            dimension = index_config.get("dimension", dimension)
            metric = index_config.get("metric", metric)
        if metric is None:
            metric = "euclidean"
        if metric not in METRICS:
            raise InvalidArgumentError(f"metric must be one of {METRICS}, got {metric!r}")
        if dimension is not None and (isinstance(dimension, bool) or not isinstance(dimension, int)
                                      or not 1 <= dimension <= 65536):
            raise InvalidArgumentError(f"dimension must be an int in 1..65536, got {dimension!r}")
        durability = _check_durability(durability or self._durability)
        if embedding_model is not None:
            from lsmvec.embedding import model_dimension
            dimension = model_dimension(embedding_model, dimension)
        config = new_config(index_name, key, dimension=dimension, metric=metric,
                            embedding_model=embedding_model, options=options)
        cipher = cipher_of(key, config)
        def populate(tmp: Path) -> None:  # the whole index is made before it is renamed in
            write_config(tmp, config, cipher)
            create_store(tmp, cipher).close()

        folder = self._catalog.create(index_name, populate)
        return self._face(_acquire_core(folder, key, durability))

    def load_index(self, index_name: str, index_key: bytes, *, durability: str | None = None,
                   read_only: bool | None = None,
                   max_staleness: float = DEFAULT_MAX_STALENESS) -> Index:
        """Open an existing index. Raises IndexNotFoundError, WrongKeyError (before any data is read).

        `read_only` (default: the client's): open beside the writer process, without its lock;
        queries see what the writer committed within `max_staleness` seconds (db/reader.py),
        `index.refresh()` at once; writes raise ReadOnlyError."""
        self._check_open()
        check_index_name(index_name)
        key = check_key(index_key)
        read_only = self.read_only if read_only is None else read_only
        if not isinstance(read_only, bool):
            raise InvalidTypeError(f"read_only must be a bool, got {type(read_only).__name__}")
        if self.read_only and not read_only:
            raise ReadOnlyError(f"client of {self.path} is read_only: it cannot open "
                                f"{index_name!r} for writing")
        durability = _check_durability(durability or self._durability)
        staleness = _check_staleness(max_staleness)
        folder = self._catalog.folder(index_name)
        if not config_exists(folder):
            raise IndexNotFoundError(f"index {index_name!r} not found in {self.path}")
        if read_only:
            return self._face(_acquire_reader(folder, key, staleness), read_only=True)
        return self._face(_acquire_core(folder, key, durability))

    def get_or_create_index(self, index_name: str, index_key: bytes, *, dimension: int | None = None,
                            metric: str = "euclidean", embedding_model: str | None = None,
                            index_config: dict | None = None, durability: str | None = None,
                            **tuning: Any) -> Index:
        """``load_index`` when the index exists, else ``create_index`` with these arguments
        (tuning options apply only when it is created). An existing index must match: its
        metric, and its dimension and embedding_model where given, else InvalidArgumentError
        naming both values (the index is not kept open). Also raises what those two raise."""
        from lsmvec.errors import IndexExistsError
        IndexOptions.from_keywords(tuning)  # a mistyped option is refused even when it exists
        if index_config:  # as create_index reads it
            dimension = index_config.get("dimension", dimension)
            metric = index_config.get("metric", metric)
        metric = "euclidean" if metric is None else metric
        try:
            index = self.load_index(index_name, index_key, durability=durability)
        except IndexNotFoundError:
            try:
                return self.create_index(index_name, index_key, dimension=dimension, metric=metric,
                                         embedding_model=embedding_model, durability=durability,
                                         **tuning)
            except IndexExistsError:  # created meanwhile by another thread or process
                index = self.load_index(index_name, index_key, durability=durability)
        stored = index.index_config()
        wanted = {"metric": metric, "dimension": dimension, "embedding_model": embedding_model}
        for name, value in wanted.items():  # a dimension-less index takes any dimension
            if (value is not None or name == "metric") and stored.get(name) != value and not (
                    name == "dimension" and stored.get(name) is None):
                index.close()
                raise InvalidArgumentError(
                    f"index {index_name!r} exists with {name}={stored.get(name)!r}, but "
                    f"get_or_create_index was given {name}={value!r}")
        return index

    def list_indexes(self) -> list[str]:
        self._check_open()
        return self._catalog.names()

    def delete_index(self, index_name: str, index_key: bytes) -> None:
        """Delete an index and its files; the key is required (as in the reference product).

        Raises IndexNotFoundError, WrongKeyError (the index is kept, nothing changed),
        IndexLockedError (another process has it open). Open faces of it in this client are
        closed first (after the key check)."""
        self._check_open()
        self._check_writable()
        check_index_name(index_name)
        if index_key is None:
            raise InvalidArgumentError("index_key is required to delete an index")
        self._delete(index_name, check_key(index_key))

    def _delete(self, index_name: str, index_key: bytes | None) -> None:
        """Delete after the key check; index_key None: an open Index face already proved it."""
        self._check_open()
        self._check_writable()
        folder = self._catalog.folder(index_name)
        if not config_exists(folder):
            raise IndexNotFoundError(f"index {index_name!r} not found in {self.path}")
        if index_key is not None:
            read_config(folder, index_key)  # WrongKeyError before anything changes
        real = os.path.realpath(folder)
        with self._lock:
            mine = [ix for ix in self._open if os.path.realpath(ix._core.folder) == real]
        for index in mine:
            index.close()
        with _registry_lock:
            if real in _registry:
                raise InvalidArgumentError(f"index {index_name!r} is still open elsewhere in this process")
        self._catalog.delete(index_name)  # IndexLockedError if another process has it open

    def _forget(self, index: Index) -> None:
        with self._lock:
            if index in self._open:
                self._open.remove(index)

    def close(self) -> None:
        """Close every index opened through this client. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            faces, self._open = self._open, []
        for index in faces:
            index.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({str(self.path)!r}{', read_only=True' if self.read_only else ''})"
