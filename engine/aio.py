"""AsyncClient / AsyncIndex: the thin anyio face over the same Client / Index / IndexCore.

Every blocking call (file I/O, fsync, LMDB, ScaNN, embedding) runs in a worker thread under one
CapacityLimiter per client, so the event loop never blocks; works under asyncio and trio.

Concurrent upsert / delete / update calls on one AsyncIndex are batched before the thread hop
(aio_writes.WriteBatcher): one worker thread, one log write and one fsync serve them all.

Cancellation: a call cancelled before its worker thread started never happens. Once the thread
runs, it is not abandoned -- not even by a native asyncio task.cancel(), which goes through
anyio's shield (aio_threads.ThreadCall): the call completes -- wholly applied and durable, for
upsert/delete -- and the cancellation is delivered when it returns. So a cancelled write is all
or nothing, never partial; to learn which, read the ids back.
"""
from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Callable

import anyio

from lsmvec.client import Client
from lsmvec.aio_iteration import AsyncItems
from lsmvec.aio_threads import ThreadCall
from lsmvec.aio_writes import WriteBatcher
from lsmvec.index import Index

__all__ = ["AsyncClient", "AsyncIndex"]

DEFAULT_THREADS = 32


class _InThreads:
    """Runs blocking calls in worker threads under the client's one limiter."""

    _limiter: anyio.CapacityLimiter

    async def _call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        return await ThreadCall(functools.partial(fn, *args, **kwargs)).run(self._limiter)


class AsyncIndex(_InThreads):
    """Same methods as Index, as coroutines; properties (dimension, metric, n_lists) are plain."""

    def __init__(self, index: Index, limiter: anyio.CapacityLimiter):
        self._index = index
        self._limiter = limiter
        self._writes = WriteBatcher(index.write_many, limiter)

    @property
    def dimension(self) -> int | None:
        return self._index.dimension

    @property
    def metric(self) -> str:
        return self._index.metric

    @property
    def n_lists(self) -> int | None:
        return self._index.n_lists

    @property
    def sync(self) -> Index:
        """The synchronous handle on the same open index."""
        return self._index

    async def __aenter__(self) -> "AsyncIndex":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return "<Async" + repr(self._index)[1:]


def _like(sync: Callable, method: Callable) -> Callable:
    """`method` under the sync method's name, docstring and signature."""
    method.__name__ = method.__qualname__ = sync.__name__
    method.__doc__ = sync.__doc__
    method.__signature__ = inspect.signature(sync)  # type: ignore[attr-defined]
    return method


def _coroutine_of(cls: type, name: str) -> Callable:
    async def method(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call(getattr(self._target(), name), *args, **kwargs)

    return _like(getattr(cls, name), method)


def _batched_write(name: str) -> Callable:
    async def method(self, *args: Any, **kwargs: Any) -> Any:
        return await self._writes.submit(name, args, kwargs)

    return _like(getattr(Index, name), method)


_INDEX_METHODS = ("query", "query_metadata", "get", "list_ids", "get_num_vectors", "train",
                  "is_trained", "training_state", "flush", "compact", "stats", "verify",
                  "index_name", "index_type", "index_config", "delete_index", "close", "backup",
                  "refresh")
AsyncIndex._target = lambda self: self._index  # type: ignore[attr-defined]
for _name in _INDEX_METHODS:
    setattr(AsyncIndex, _name, _coroutine_of(Index, _name))
for _name in ("upsert", "delete", "update"):  # concurrent calls share one thread hop (aio_writes)
    setattr(AsyncIndex, _name, _batched_write(_name))


def _iter_items(self, *args: Any, **kwargs: Any) -> AsyncItems:
    """An async iterator; each step in a worker thread (aio_iteration.py)."""
    return AsyncItems(functools.partial(self._index.iter_items, *args, **kwargs), self._limiter)


AsyncIndex.iter_items = _like(Index.iter_items, _iter_items)  # type: ignore[attr-defined]


class AsyncClient(_InThreads):
    """`async with AsyncClient(path) as client:` -- the Client API as coroutines."""

    def __init__(self, path: str | os.PathLike, *, durability: str = "fsync",
                 read_only: bool = False, max_threads: int = DEFAULT_THREADS):
        self._client = Client(path, durability=durability, read_only=read_only)
        self._limiter = anyio.CapacityLimiter(max_threads)

    async def create_index(self, *args: Any, **kwargs: Any) -> AsyncIndex:
        return AsyncIndex(await self._call(self._client.create_index, *args, **kwargs), self._limiter)

    async def load_index(self, *args: Any, **kwargs: Any) -> AsyncIndex:
        return AsyncIndex(await self._call(self._client.load_index, *args, **kwargs), self._limiter)

    async def get_or_create_index(self, *args: Any, **kwargs: Any) -> AsyncIndex:
        return AsyncIndex(await self._call(self._client.get_or_create_index, *args, **kwargs),
                          self._limiter)

    @property
    def sync(self) -> Client:
        return self._client

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return "Async" + repr(self._client)


AsyncClient._target = lambda self: self._client  # type: ignore[attr-defined]
for _name in ("list_indexes", "delete_index", "close"):
    setattr(AsyncClient, _name, _coroutine_of(Client, _name))
AsyncClient.create_index.__doc__ = Client.create_index.__doc__
AsyncClient.load_index.__doc__ = Client.load_index.__doc__
AsyncClient.get_or_create_index.__doc__ = Client.get_or_create_index.__doc__
