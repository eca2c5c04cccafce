"""AsyncItems: AsyncIndex.iter_items, an async iterator over Index.iter_items' batches.

Each step -- the first also checks the arguments and opens the cursor -- runs in a worker thread
under the client's limiter (aio_threads.ThreadCall), so the event loop never waits on the read
lock, the store or AES-GCM. The synchronous generator holds no lock between steps, so a step
may run on a different worker thread than the one before. A step cancelled while its thread
runs still completes (ThreadCall): that batch is dropped, and the iteration resumes from the
cursor of the last batch the caller received.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import anyio

from lsmvec.aio_threads import ThreadCall
from lsmvec.db.iteration import ItemBatch

__all__ = ["AsyncItems"]

_END = object()


class AsyncItems:
    """`async for batch in index.iter_items(...)`: the batches of Index.iter_items. Argument
    errors surface at the first step (before any batch)."""

    def __init__(self, start: Callable[[], Iterator[ItemBatch]], limiter: anyio.CapacityLimiter):
        self._start = start
        self._limiter = limiter
        self._batches: Iterator[ItemBatch] | None = None
        self._done = False

    def _step(self) -> Any:  # in a worker thread
        if self._batches is None:
            self._batches = self._start()
        return next(self._batches, _END)  # StopIteration cannot cross a coroutine

    def __aiter__(self) -> "AsyncItems":
        return self

    async def __anext__(self) -> ItemBatch:
        if self._done:
            raise StopAsyncIteration
        batch = await ThreadCall(self._step).run(self._limiter)
        if batch is _END:
            self._done = True
            raise StopAsyncIteration
        return batch

    async def aclose(self) -> None:
        """Stop early: the synchronous generator is closed (it holds no lock to release)."""
        self._done = True
        if self._batches is not None:
            self._batches.close()

