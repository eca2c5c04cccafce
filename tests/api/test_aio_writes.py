"""Batched writes: Index.write_many (sync) and AsyncIndex's WriteBatcher (asyncio and trio).

The oracle is a dict of what each call wrote; every call must be its own all-or-nothing unit,
with its own outcome, however the calls were grouped.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable

import anyio
import anyio.from_thread
import numpy as np
import pytest

from lsmvec import AsyncClient, Client, generate_key
from lsmvec.errors import (ClosedError, DimensionMismatchError, InvalidIdError, InvalidVectorError,
                           WrongKeyError)

from conftest import random_vectors

DIM = 8


def vectors_of(found: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {item["id"]: item["vector"] for item in found}


# ----------------------------------------------------------------------------- Index.write_many

def test_write_many_gives_each_call_its_own_outcome(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    key = generate_key()
    a, b, c = (random_vectors(rng, 3, DIM) for _ in range(3))
    nan = a.copy()
    nan[1, 2] = np.nan
    with Client(tmp_path) as client:
        index = client.create_index("w", key, dimension=DIM)
        index.upsert(ids=["old0", "old1"], vectors=c[:2])
        outcomes = index.write_many([
            ("upsert", (), {"ids": ["a0", "a1", "a2"], "vectors": a}),
            ("upsert", (), {"ids": ["n0", "n1", "n2"], "vectors": nan}),            # NaN
            ("upsert", ([{"id": "b0", "vector": b[0]}, {"id": "b1", "vector": b[1]}],), {}),
            ("delete", (["old0", "a0"],), {}),                                       # after a0
            ("upsert", (), {"ids": ["x"], "vectors": random_vectors(rng, 1, DIM + 1)}),
            ("upsert", (), {"ids": ["a0"], "vectors": b[2:3]}),                      # after delete
            ("delete", ([""],), {}),                                                 # bad id
            ("upsert", (), {"ids": ["k"], "vectors": b[:1], "index_key": generate_key()}),
            ("upsert", (), {"ids": ["z"], "vectors": b[:1], "no_such_argument": 1}),
        ])
        kinds = [type(o) if o is not None else None for o in outcomes]
        assert kinds[:4] == [None, InvalidVectorError, None, None]
        assert issubclass(kinds[4], (DimensionMismatchError, InvalidVectorError))
        assert kinds[5] is None and kinds[6] is InvalidIdError and kinds[7] is WrongKeyError
        assert kinds[8] is TypeError
        got = vectors_of(index.get(["a0", "a1", "a2", "b0", "b1", "old0", "old1", "n0", "x", "k",
                                    "z"], include=["vector"]))
        assert sorted(got) == ["a0", "a1", "a2", "b0", "b1", "old1"]
        np.testing.assert_array_equal(got["a0"], b[2])  # the upsert queued after the delete wins
        np.testing.assert_array_equal(got["a1"], a[1])
        assert index.get_num_vectors() == 6
    with Client(tmp_path) as client:  # the same after replaying the log
        again = vectors_of(client.load_index("w", key).get(sorted(got), include=["vector"]))
        assert sorted(again) == sorted(got)
        np.testing.assert_array_equal(again["a0"], b[2])


def test_write_many_fixes_the_dimension_once_and_refuses_a_second_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    with Client(tmp_path) as client:
        index = client.create_index("d", generate_key())  # no dimension yet
        outcomes = index.write_many([
            ("upsert", (), {"ids": ["p"], "vectors": random_vectors(rng, 1, 5)}),
            ("upsert", (), {"ids": ["q"], "vectors": random_vectors(rng, 1, 6)}),
            ("upsert", (), {"ids": ["r"], "vectors": random_vectors(rng, 1, 5)}),
        ])
        assert outcomes[0] is None and outcomes[2] is None
        assert isinstance(outcomes[1], DimensionMismatchError)
        assert index.dimension == 5 and sorted(index.list_ids()) == ["p", "r"]


def test_write_many_on_a_closed_index_fails_every_call(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    with Client(tmp_path) as client:
        index = client.create_index("c", generate_key(), dimension=DIM)
        index.close()
        with pytest.raises(ClosedError):
            index.write_many([("upsert", (), {"ids": ["a"], "vectors": random_vectors(rng, 1, DIM)})])


# ----------------------------------------------------------------------------- WriteBatcher

# The tests below order their steps by waiting on conditions (a batch has reached its worker
# thread, n calls are queued, a cancellation has been delivered), never by sleeping: a sleep
# only guesses how long the other side needs, and under load it guesses wrong.
WAIT = 20.0  # seconds any one condition may take before the test fails, naming it


async def wait_until(predicate: Callable[[], bool], what: str | Callable[[], str],
                     timeout: float = WAIT) -> None:
    """Yield to the scheduler until predicate() holds; fail, saying `what` (or what() says,
    as of then), after `timeout` s.

    For conditions that tasks on the event loop bring about (calls queued, a cancellation
    delivered); a worker thread signals through an anyio.Event instead (Gate.wait_entered)."""
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(0)  # a checkpoint: lets the other tasks run; waits for no time
        return
    raise AssertionError(f"timed out after {timeout} s waiting until "
                         f"{what() if callable(what) else what}")


async def wait_event(event: anyio.Event, what: str, timeout: float = WAIT) -> None:
    with anyio.move_on_after(timeout):
        await event.wait()
        return
    raise AssertionError(f"timed out after {timeout} s waiting until {what}")


async def queued(batcher: Any, n: int) -> None:
    """Until `n` calls wait in the batcher's queue (the running batch's calls are not in it)."""
    await wait_until(lambda: len(batcher._queue) == n,
                     lambda: f"{n} calls are queued (the queue holds {len(batcher._queue)})")


class Gate:
    """Wraps a batcher's write_many: batch k blocks in its worker thread until open(k), so a
    test can queue calls behind it and cancel them at known points."""

    def __init__(self, batcher: Any):
        self.real = batcher._write_many
        self.sizes: list[int] = []
        self._gates = [threading.Event() for _ in range(8)]
        self._entered = [anyio.Event() for _ in range(8)]  # set on the loop as batch k starts
        self.before_return: dict[int, Any] = {}  # batch -> callable run in its thread, last
        batcher._write_many = self

    def __call__(self, calls: list) -> list:  # in the batch's worker thread
        self.sizes.append(len(calls))
        k = len(self.sizes) - 1
        anyio.from_thread.run_sync(self._entered[k].set)
        assert self._gates[k].wait(WAIT), "gate never opened"
        try:
            return self.real(calls)
        finally:
            if k in self.before_return:
                self.before_return[k]()

    def open(self, *batches: int) -> None:
        for k in batches:
            self._gates[k].set()

    async def wait_entered(self, batches: int) -> None:
        """Until `batches` batches have reached their worker thread (one batcher runs one
        batch at a time, so batch n-1 entering means all before it did)."""
        await wait_event(self._entered[batches - 1], f"batch {batches - 1} reaches its thread")


@pytest.fixture
def uncancelled_waits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each time a cancelled call starts waiting for work that is already in a worker
    thread: "thread" from ThreadCall.run (the task awaiting that thread), "batch" from
    WriteBatcher.submit (a follower whose call a running batch has taken). The wait itself is
    the real one; the record tells a test that a cancellation has been delivered."""
    import lsmvec.aio_threads as aio_threads
    import lsmvec.aio_writes as aio_writes
    real = aio_threads.wait_uncancelled
    waits: list[str] = []

    def recording(where: str) -> Callable[[anyio.Event], Awaitable[None]]:
        async def wait(event: anyio.Event) -> None:
            waits.append(where)
            await real(event)
        return wait

    monkeypatch.setattr(aio_threads, "wait_uncancelled", recording("thread"))
    monkeypatch.setattr(aio_writes, "wait_uncancelled", recording("batch"))
    return waits


@pytest.mark.anyio
async def test_concurrent_calls_share_one_thread_call_and_one_fsync(
        tmp_path: Path, anyio_backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs = [0]
    real = os.fdatasync

    def counting(fd: int) -> None:
        syncs[0] += 1
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    rng = np.random.default_rng(4)
    batches = {t: random_vectors(rng, 1 + t % 4, DIM) for t in range(300)}
    async with AsyncClient(tmp_path) as client:
        index = await client.create_index("b", generate_key(), dimension=DIM)
        gate = Gate(index._writes)
        syncs[0] = 0

        async def one(t: int) -> None:
            await index.upsert(ids=[f"t{t}-{i}" for i in range(len(batches[t]))], vectors=batches[t])

        with anyio.fail_after(WAIT + 10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(one, 0)
                await gate.wait_entered(1)  # the first call leads alone; the rest queue behind it
                for t in range(1, 300):
                    tg.start_soon(one, t)
                await queued(index._writes, 299)
                gate.open(0, 1)
        assert gate.sizes == [1, 299] and syncs[0] == 2
        ids = [f"t{t}-{i}" for t, v in batches.items() for i in range(len(v))]
        got = vectors_of(await index.get(ids, include=["vector"]))
        assert len(got) == len(ids)
        for t, vecs in batches.items():
            for i, v in enumerate(vecs):
                np.testing.assert_array_equal(got[f"t{t}-{i}"], v)


@pytest.mark.anyio
async def test_a_bad_call_fails_alone_inside_a_batch(tmp_path: Path, anyio_backend: str) -> None:
    rng = np.random.default_rng(5)
    good = random_vectors(rng, 2, DIM)
    async with AsyncClient(tmp_path) as client:
        index = await client.create_index("e", generate_key(), dimension=DIM)
        gate = Gate(index._writes)
        errors: dict[str, BaseException] = {}

        async def call(name: str, coro_fn: Any) -> None:
            try:
                await coro_fn()
            except Exception as exc:
                errors[name] = exc

        with anyio.fail_after(WAIT + 10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "lead", lambda: index.upsert(ids=["lead"], vectors=good[:1]))
                await gate.wait_entered(1)
                tg.start_soon(call, "dim", lambda: index.upsert(ids=["x"], vectors=np.ones((1, DIM + 2))))
                tg.start_soon(call, "ok", lambda: index.upsert(ids=["ok"], vectors=good[1:]))
                tg.start_soon(call, "id", lambda: index.delete([""]))
                tg.start_soon(call, "del", lambda: index.delete(["lead"]))
                await queued(index._writes, 4)
                gate.open(0, 1)
        assert sorted(errors) == ["dim", "id"]
        assert isinstance(errors["dim"], (DimensionMismatchError, InvalidVectorError))
        assert gate.sizes == [1, 4]
        assert sorted(await index.list_ids()) == ["ok"]


@pytest.mark.anyio
async def test_cancellation_withdraws_a_queued_call_and_completes_a_taken_one(
        tmp_path: Path, anyio_backend: str) -> None:
    """The leader's batch is blocked in its thread. Behind it: a queued call -- first in line
    to lead next -- that gets cancelled (never happens), others that go on. The leader itself
    is cancelled while its thread runs: its call completes, then it sees the cancellation."""
    rng = np.random.default_rng(6)
    v = random_vectors(rng, 6, DIM)
    key = generate_key()
    outcome: dict[str, str] = {}
    async with AsyncClient(tmp_path) as client:
        index = await client.create_index("x", key, dimension=DIM)
        gate = Gate(index._writes)
        scopes = {name: anyio.CancelScope() for name in ("lead", "queued", "ok1", "ok2")}

        async def upsert(name: str, row: int) -> None:
            with scopes[name]:
                await index.upsert(ids=[name], vectors=v[row:row + 1])
                outcome[name] = "returned"
            if scopes[name].cancelled_caught:
                outcome[name] = "cancelled"

        with anyio.fail_after(WAIT + 10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(upsert, "lead", 0)
                await gate.wait_entered(1)
                for row, name in enumerate(("queued", "ok1", "ok2"), start=1):
                    tg.start_soon(upsert, name, row)
                    await queued(index._writes, row)  # one at a time: "queued" is first in line
                scopes["queued"].cancel()  # the next leader in line: withdrawn, leadership moves on
                scopes["lead"].cancel()  # its thread runs: it must complete anyway
                # both cancellations were delivered together; once "queued" has seen its own
                # and withdrawn, a leader that (wrongly) ended on its cancel would have ended too
                await wait_until(lambda: outcome.get("queued") == "cancelled"
                                 and len(index._writes._queue) == 2,
                                 "the cancelled queued call has withdrawn")
                assert "lead" not in outcome, "a cancelled leader returned before its batch ended"
                assert gate.sizes == [1]
                gate.open(0, 1)
        assert outcome == {"lead": "cancelled", "queued": "cancelled", "ok1": "returned",
                           "ok2": "returned"}
        assert gate.sizes == [1, 2]
        assert sorted(await index.list_ids()) == ["lead", "ok1", "ok2"]
    async with AsyncClient(tmp_path) as client:
        assert sorted(await (await client.load_index("x", key)).list_ids()) == ["lead", "ok1", "ok2"]


@pytest.mark.anyio
async def test_a_task_cancelled_as_it_is_named_leader_hands_the_lead_on(
        tmp_path: Path, anyio_backend: str) -> None:
    """The first batch's thread cancels the task queued first, just before it returns. Under
    asyncio the cancellation reaches that task after the leader has already named it to lead
    the next batch; under trio, before. Either way it withdraws, and the calls queued behind
    it must not be stranded: the next one leads."""
    rng = np.random.default_rng(9)
    v = random_vectors(rng, 4, DIM)
    outcome: dict[str, str] = {}
    async with AsyncClient(tmp_path) as client:
        index = await client.create_index("n", generate_key(), dimension=DIM)
        gate = Gate(index._writes)
        named = anyio.CancelScope()
        gate.before_return[0] = lambda: anyio.from_thread.run_sync(named.cancel)

        async def upsert(name: str, row: int) -> None:
            await index.upsert(ids=[name], vectors=v[row:row + 1])
            outcome[name] = "returned"

        async def upsert_named() -> None:
            with named:
                await index.upsert(ids=["named"], vectors=v[1:2])
            outcome["named"] = "cancelled" if named.cancelled_caught else "returned"

        with anyio.fail_after(WAIT + 10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(upsert, "lead", 0)
                await gate.wait_entered(1)
                tg.start_soon(upsert_named)
                await queued(index._writes, 1)  # "named" is first in line
                tg.start_soon(upsert, "ok1", 2)
                tg.start_soon(upsert, "ok2", 3)
                await queued(index._writes, 3)
                gate.open(0, 1, 2)
        assert outcome == {"lead": "returned", "named": "cancelled", "ok1": "returned",
                           "ok2": "returned"}
        assert sorted(await index.list_ids()) == ["lead", "ok1", "ok2"]
        assert gate.sizes == [1, 2]


@pytest.mark.asyncio
async def test_a_native_asyncio_cancel_of_the_named_leader_hands_the_lead_on(tmp_path: Path) -> None:
    """Plain asyncio (task.cancel(), as asyncio.wait_for does): the leader cancels the task it
    has just named to lead next, before that task runs. It must withdraw and pass the lead."""
    import asyncio
    rng = np.random.default_rng(10)
    v = random_vectors(rng, 4, DIM)
    async with AsyncClient(tmp_path) as client:
        index = await client.create_index("a", generate_key(), dimension=DIM)
        gate = Gate(index._writes)
        tasks: dict[str, asyncio.Task] = {}

        async def lead() -> None:
            await index.upsert(ids=["lead"], vectors=v[:1])
            tasks["named"].cancel()  # named by now, not yet running

        tasks["lead"] = asyncio.create_task(lead())
        await gate.wait_entered(1)
        tasks["named"] = asyncio.create_task(index.upsert(ids=["named"], vectors=v[1:2]))
        await queued(index._writes, 1)  # "named" is first in line
        for row, name in ((2, "ok1"), (3, "ok2")):
            tasks[name] = asyncio.create_task(index.upsert(ids=[name], vectors=v[row:row + 1]))
        await queued(index._writes, 3)
        gate.open(0, 1, 2)
        done, pending = await asyncio.wait(list(tasks.values()), timeout=WAIT)
        assert not pending, "calls queued behind a cancelled leader were stranded"
        assert tasks["named"].cancelled()
        assert sorted(await index.list_ids()) == ["lead", "ok1", "ok2"]
        assert gate.sizes == [1, 2]


@pytest.mark.asyncio
async def test_native_asyncio_cancels_of_taken_calls_wait_for_their_batch(
        tmp_path: Path, uncancelled_waits: list[str]) -> None:
    """task.cancel() of a leader whose thread runs, and of a follower already taken into that
    batch: both calls complete, and only then do the tasks end cancelled."""
    import asyncio
    rng = np.random.default_rng(11)
    v = random_vectors(rng, 3, DIM)
    async with AsyncClient(tmp_path) as client:
        index = await client.create_index("t", generate_key(), dimension=DIM)
        gate = Gate(index._writes)
        first = asyncio.create_task(index.upsert(ids=["first"], vectors=v[:1]))
        await gate.wait_entered(1)
        leader = asyncio.create_task(index.upsert(ids=["leader"], vectors=v[1:2]))
        await queued(index._writes, 1)
        follower = asyncio.create_task(index.upsert(ids=["follower"], vectors=v[2:3]))
        await queued(index._writes, 2)
        gate.open(0)
        await gate.wait_entered(2)  # "leader" leads batch 2 and has taken "follower"
        leader.cancel()
        follower.cancel()
        # until both tasks have received their CancelledError: each now waits for the batch's
        # thread (or, were that broken, has ended)
        await wait_until(lambda: ("thread" in uncancelled_waits or leader.done())
                         and ("batch" in uncancelled_waits or follower.done()),
                         lambda: f"both cancellations are delivered (waits: {uncancelled_waits})")
        assert not leader.done() and not follower.done(), "a taken call ended before its batch"
        gate.open(1)
        await asyncio.wait([first, leader, follower], timeout=WAIT)
        assert first.result() is None and leader.cancelled() and follower.cancelled()
        assert sorted(await index.list_ids()) == ["first", "follower", "leader"]
        assert gate.sizes == [1, 2]


@pytest.mark.anyio
async def test_a_cancelled_follower_whose_batch_runs_completes(
        tmp_path: Path, anyio_backend: str, uncancelled_waits: list[str]) -> None:
    rng = np.random.default_rng(7)
    v = random_vectors(rng, 3, DIM)
    async with AsyncClient(tmp_path) as client:
        index = await client.create_index("f", generate_key(), dimension=DIM)
        gate = Gate(index._writes)
        follower = anyio.CancelScope()
        state: list[str] = []

        async def follow() -> None:
            with follower:
                await index.upsert(ids=["f"], vectors=v[1:2])
                state.append("returned")
            state.append("cancelled" if follower.cancelled_caught else "done")

        with anyio.fail_after(WAIT + 10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: index.upsert(ids=["a"], vectors=v[:1]))
                await gate.wait_entered(1)
                tg.start_soon(lambda: index.upsert(ids=["g"], vectors=v[2:3]))  # leads batch 2
                await queued(index._writes, 1)
                tg.start_soon(follow)
                await queued(index._writes, 2)
                gate.open(0)
                await gate.wait_entered(2)  # "g" and "f" are now taken by the second batch ...
                follower.cancel()  # ... so cancelling "f" cannot stop it
                await wait_until(lambda: uncancelled_waits == ["batch"] or state != [],
                                 "the follower has seen its cancellation (and waits for its batch)")
                assert state == [], "a cancelled call returned while its batch ran"
                gate.open(1)
        assert state == ["cancelled"]
        assert gate.sizes == [1, 2]
        assert sorted(await index.list_ids()) == ["a", "f", "g"]


@pytest.mark.anyio
async def test_a_leader_cancelled_while_it_waits_for_a_thread_requeues_the_others(
        tmp_path: Path, anyio_backend: str) -> None:
    """Two worker threads. Index b's second leader takes three calls (its own and two
    followers) but finds both threads held (by a, and by c, which was waiting first), and is
    cancelled there: its own call never happens, and the two it had taken queue again and run
    once a thread frees."""
    rng = np.random.default_rng(12)
    v = random_vectors(rng, 6, DIM)
    async with AsyncClient(tmp_path, max_threads=2) as client:
        a, b, c = [await client.create_index(n, generate_key(), dimension=DIM) for n in "abc"]
        gate_a, gate_b, gate_c = Gate(a._writes), Gate(b._writes), Gate(c._writes)
        gate_b.open(1, 2)
        limiter = b._limiter  # the client's one limiter: 2 worker threads for a, b and c
        leader = anyio.CancelScope()
        outcome: dict[str, str] = {}

        def waiting_for_a_thread() -> int:
            return limiter.statistics().tasks_waiting

        async def lead() -> None:
            with leader:
                await b.upsert(ids=["L"], vectors=v[:1])
            outcome["L"] = "cancelled" if leader.cancelled_caught else "returned"

        async def upsert(index: Any, name: str, row: int) -> None:
            await index.upsert(ids=[name], vectors=v[row:row + 1])
            outcome[name] = "returned"

        with anyio.fail_after(WAIT + 10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(upsert, a, "hold", 3)
                await gate_a.wait_entered(1)  # thread 1
                tg.start_soon(upsert, b, "x", 4)
                await gate_b.wait_entered(1)  # thread 2
                tg.start_soon(upsert, c, "y", 5)
                await wait_until(lambda: c._writes.batches == 1 and waiting_for_a_thread() == 1,
                                 "c's batch waits for a worker thread")
                tg.start_soon(lead)
                await queued(b._writes, 1)
                tg.start_soon(upsert, b, "F1", 1)
                await queued(b._writes, 2)
                tg.start_soon(upsert, b, "F2", 2)
                await queued(b._writes, 3)
                gate_b.open(0)  # x is done; its thread goes to c; L takes [L, F1, F2] and waits
                await gate_c.wait_entered(1)
                await wait_until(lambda: "x" in outcome and b._writes.batches == 2
                                 and not b._writes._queue and waiting_for_a_thread() == 1,
                                 "L has taken [L, F1, F2] and waits for a worker thread")
                assert gate_b.sizes == [1]
                leader.cancel()
                # L withdraws its own call and queues F1, F2 again; F1 leads them and waits
                await wait_until(lambda: outcome.get("L") == "cancelled" and b._writes.batches == 3
                                 and not b._writes._queue and waiting_for_a_thread() == 1,
                                 "L is withdrawn and F1 leads [F1, F2], waiting for a thread")
                assert gate_b.sizes == [1] and "F1" not in outcome and "F2" not in outcome
                gate_a.open(0)
                gate_c.open(0)
        assert outcome == {"hold": "returned", "x": "returned", "y": "returned",
                           "L": "cancelled", "F1": "returned", "F2": "returned"}
        assert gate_b.sizes == [1, 2]
        assert sorted(await b.list_ids()) == ["F1", "F2", "x"]


@pytest.mark.anyio
async def test_calls_made_one_after_another_each_lead_their_own_batch(
        tmp_path: Path, anyio_backend: str) -> None:
    rng = np.random.default_rng(8)
    async with AsyncClient(tmp_path) as client:
        index = await client.create_index("s", generate_key(), dimension=DIM)
        for i in range(5):
            await index.upsert(ids=[f"s{i}"], vectors=random_vectors(rng, 1, DIM))
        await index.delete(["s0"])
        with pytest.raises(InvalidIdError):
            await index.delete([""])
        assert index._writes.batches == 7 and not index._writes._busy
        assert sorted(await index.list_ids()) == ["s1", "s2", "s3", "s4"]


@pytest.mark.asyncio
async def test_a_native_asyncio_cancel_of_any_running_call_waits_for_its_thread(
        tmp_path: Path, uncancelled_waits: list[str]) -> None:
    """asyncio.wait_for around a call whose worker thread runs: the task ends (TimeoutError)
    only after the thread finished, never while it still works on the index."""
    import asyncio
    started, release = anyio.Event(), threading.Event()
    finished: list[str] = []
    async with AsyncClient(tmp_path) as client:
        index = await client.create_index("w", generate_key(), dimension=DIM)
        real = index.sync.stats

        def slow_stats() -> dict:
            anyio.from_thread.run_sync(started.set)
            assert release.wait(WAIT)
            out = real()
            finished.append("stats")
            return out

        index.sync.stats = slow_stats  # type: ignore[method-assign]
        call = asyncio.ensure_future(index.stats())
        await wait_event(started, "stats() runs in its worker thread")
        # the timeout's clock starts once the thread runs, so it cannot expire before
        task = asyncio.create_task(asyncio.wait_for(call, timeout=0.05))
        await wait_until(lambda: uncancelled_waits == ["thread"] or task.done(),
                         "the timeout has cancelled the call (which waits for its thread)")
        assert not task.done(), "the call ended while its worker thread still ran"
        assert finished == []
        release.set()
        with pytest.raises(asyncio.TimeoutError):
            await task
        assert finished == ["stats"]
