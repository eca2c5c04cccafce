"""WriteBatcher: group commit that starts on the event loop, before the thread hop.

The engine's write queue (db/write.py) already shares one write and one fsync among the
threads waiting at that moment. But with hundreds of tasks each sending a small upsert through
its own worker thread, the thread hops (and the GIL hand-offs between those threads) cost more
than the fsync they share. So the tasks of one AsyncIndex queue their upsert / delete calls
here; one of them -- the leader -- takes every queued call and runs them in a single worker
thread as one group of log records (Index.write_many); the rest wait on the loop. The next
queued task leads the next batch.

Each call is still validated on its own and is its own log record: all or nothing, with its
own outcome. Cancellation: a call cancelled while it waits in the queue is withdrawn and never
happens (a leader cancelled before its thread started withdraws its own call and queues the
others again). Once its batch's thread runs, a call completes, and the cancellation is
delivered when it returns -- for anyio's cancellation and asyncio's task.cancel() alike.

Only the event loop's thread touches a batcher, so it needs no lock.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

import anyio
import anyio.lowlevel

from lsmvec.aio_threads import ThreadCall, wait_uncancelled

__all__ = ["WriteBatcher", "MAX_BATCH_CALLS"]

MAX_BATCH_CALLS = 1024
"""Calls one leader takes at most: bounds the latency of the first caller in the batch."""

_QUEUED, _LEADS, _TAKEN, _DONE = range(4)


class _Call:
    __slots__ = ("method", "args", "kwargs", "state", "outcome", "event")

    def __init__(self, method: str, args: tuple, kwargs: dict):
        self.method, self.args, self.kwargs = method, args, kwargs
        self.state = _QUEUED
        self.outcome: BaseException | None = None
        self.event = anyio.Event()


class WriteBatcher:
    """Batches concurrent upsert / delete calls into `write_many(calls) -> outcomes`, run in a
    worker thread under `limiter`."""

    def __init__(self, write_many: Callable[[list[tuple[str, tuple, dict]]], list],
                 limiter: anyio.CapacityLimiter):
        self._write_many = write_many
        self._limiter = limiter
        self._queue: deque[_Call] = deque()
        self._busy = False  # a leader runs, or has been named and is waking up
        self.batches = 0  # thread calls made (for tests and benchmarks)

    async def submit(self, method: str, args: tuple, kwargs: dict) -> None:
        """Run one upsert / delete call; returns when it is durable, or raises its error."""
        call = _Call(method, args, kwargs)
        self._queue.append(call)
        if self._busy:
            try:
                await call.event.wait()
            except anyio.get_cancelled_exc_class():
                if call.state in (_QUEUED, _LEADS):  # not taken: withdraw it, it never happens
                    self._queue.remove(call)
                    if call.state == _LEADS:
                        self._name_next_leader()
                    raise
                await wait_uncancelled(call.event)  # taken: it completes first
                raise
            if call.state == _LEADS:
                await self._lead(call)
        else:
            self._busy = True
            await self._lead(call)
        if call.outcome is not None:
            raise call.outcome

    async def _lead(self, me: _Call) -> None:
        n = min(len(self._queue), MAX_BATCH_CALLS)
        batch = [self._queue.popleft() for _ in range(n)]
        for call in batch:
            call.state = _TAKEN
        args = [(c.method, c.args, c.kwargs) for c in batch]
        work = ThreadCall(lambda: self._write_many(args))
        self.batches += 1
        try:
            outcomes = await work.run(self._limiter)
        except BaseException:
            if not work.ran:  # cancelled before its thread started: my call never happens,
                me.state = _DONE  # the others queue again, at the front
                for call in reversed(batch[1:]):
                    call.state = _QUEUED
                    self._queue.appendleft(call)
                self._name_next_leader()
                raise
            outcomes = work.value if work.error is None else [work.error] * n
            self._finish(batch, outcomes, me)
            raise
        self._finish(batch, outcomes, me)
        await anyio.lowlevel.checkpoint_if_cancelled()  # an anyio cancel that waited for us

    def _finish(self, batch: list[_Call], outcomes: list, me: _Call) -> None:
        for call, outcome in zip(batch, outcomes):
            call.outcome, call.state = outcome, _DONE
            if call is not me:
                call.event.set()
        self._name_next_leader()

    def _name_next_leader(self) -> None:
        if self._queue:
            following = self._queue[0]
            following.state = _LEADS
            following.event.set()
        else:
            self._busy = False
