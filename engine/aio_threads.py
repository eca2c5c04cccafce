"""ThreadCall: run blocking work in a worker thread and never lose track of it.

anyio does not abandon a worker thread when the awaiting task is cancelled through anyio (the
await is shielded). But a native asyncio `task.cancel()` (asyncio.wait_for, asyncio.timeout,
TaskGroup) goes through that shield: the await ends while the thread may still be writing.
ThreadCall settles under a lock whether the thread had started -- then the caller waits for it
to finish, through any further cancellation, and only then sees the cancellation -- or not --
then it never will, and the call simply did not happen.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import anyio
import anyio.from_thread
import anyio.to_thread

__all__ = ["ThreadCall", "wait_uncancelled"]

log = logging.getLogger(__name__)


class ThreadCall:
    """`await ThreadCall(fn).run(limiter)`: fn's result, or its error. After an interruption,
    `ran` says whether fn ran (then `value` / `error` hold its outcome) or never will."""

    __slots__ = ("_fn", "_lock", "_started", "_abandoned", "_orphaned", "_finished", "ran",
                 "value", "error")

    def __init__(self, fn: Callable[[], Any]):
        self._fn = fn
        self._lock = threading.Lock()
        self._started = self._abandoned = self._orphaned = False
        self._finished: anyio.Event | None = None
        self.ran = False
        self.value: Any = None
        self.error: BaseException | None = None

    async def run(self, limiter: anyio.CapacityLimiter) -> Any:
        try:
            await anyio.to_thread.run_sync(self._work, limiter=limiter)
        except BaseException:
            with self._lock:
                if not self._started:
                    self._abandoned = True  # never started, and now never will
                    raise
                self._orphaned = True
                if not self.ran:
                    self._finished = anyio.Event()
            if self._finished is not None:
                await wait_uncancelled(self._finished)
            raise
        if self.error is not None:
            raise self.error
        return self.value

    def _work(self) -> None:  # in the worker thread
        with self._lock:
            if self._abandoned:
                return
            self._started = True
        value = error = None
        try:
            value = self._fn()
        except BaseException as exc:
            error = exc
        with self._lock:
            self.value, self.error, self.ran = value, error, True
            finished = self._finished if self._orphaned else None
        if finished is not None:  # the caller stopped awaiting us: tell it on its loop
            try:
                anyio.from_thread.run_sync(finished.set)
            except RuntimeError:  # the event loop is gone
                log.warning("a worker thread finished after its event loop closed")


async def wait_uncancelled(event: anyio.Event) -> None:
    """Wait for `event` through any cancellation (anyio's and asyncio's); the caller delivers
    its own cancellation afterwards."""
    while not event.is_set():
        try:
            with anyio.CancelScope(shield=True):
                await event.wait()
        except anyio.get_cancelled_exc_class():
            continue  # a native asyncio cancel went through the shield: keep waiting
