"""AsyncClient / AsyncIndex under asyncio and trio.

Every scenario is one coroutine written against anyio, run three ways: by anyio's pytest plugin
on its asyncio and trio backends (``@pytest.mark.anyio``, the ``anyio_backend`` fixture in
conftest.py), and by pytest-asyncio's own event loop (``@pytest.mark.asyncio``).

The oracle is the synchronous Index on the same operations (identical results, identical
exception types) or a dict of what each task wrote.
"""
from __future__ import annotations

import math
import os
import random
import threading
from pathlib import Path
from typing import Any, Callable

import anyio
import numpy as np
import pytest

from lsmvec import AsyncClient, Client, generate_key
from lsmvec.errors import (ClosedError, DimensionMismatchError, FilterError, IndexExistsError,
                           IndexNotFoundError, InvalidArgumentError, InvalidContentsError,
                           InvalidIdError, InvalidIndexNameError, InvalidKeyError,
                           InvalidMetadataError, InvalidTypeError, InvalidVectorError,
                           MissingVectorError, WrongKeyError)

from conftest import random_vectors

DIM = 8


@pytest.fixture
def fdatasync_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts os.fdatasync calls (the log's per-group sync); [count], reset by the test."""
    real = os.fdatasync
    calls = [0]
    lock = threading.Lock()

    def counting(fd: int) -> None:
        with lock:
            calls[0] += 1
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    return calls


def items_of(prefix: str, vectors: np.ndarray, rng: random.Random) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "vector": v, "contents": f"text {prefix}{i}",
             "metadata": {"n": rng.randrange(10), "tag": rng.choice("abc"), "f": rng.random()}}
            for i, v in enumerate(vectors)]


def present_ids(found: list[dict[str, Any]]) -> set[str]:
    return {item["id"] for item in found}


# ----------------------------------------------------------------------------- sync == async

async def _same_reads(sync_ix: Any, async_ix: Any, rng: np.random.Generator, context: str) -> None:
    ids = sorted(sync_ix.list_ids())
    assert sorted(await async_ix.list_ids()) == ids, context
    assert await async_ix.get_num_vectors() == sync_ix.get_num_vectors() == len(ids), context
    probe = ids[::3] + ["never-written"] + ids[1::5]
    for include in (["vector", "contents", "metadata"], ["metadata"], []):
        assert await async_ix.get(probe, include=include) == sync_ix.get(probe, include=include), \
            f"{context}: get include={include}"
    queries = random_vectors(rng, 4, DIM)
    full = ["distance", "metadata", "contents", "vector"]
    for args, kwargs in [((queries[0],), {"top_k": 7}),
                         ((queries,), {"top_k": 5, "include": full}),
                         ((queries[1],), {"top_k": 50, "filters": {"n": {"$gte": 4}},
                                          "include": ["distance", "metadata"]}),
                         ((queries[2:3],), {"top_k": 3, "filters": {"$or": [{"tag": "a"},
                                                                           {"tag": {"$exists": False}}]}})]:
        want = sync_ix.query(*args, **kwargs)
        got = await async_ix.query(*args, **kwargs)
        assert got == want, f"{context}: query {kwargs}"
        assert want, f"{context}: the query found nothing, the comparison is vacuous"
    assert await async_ix.index_config() == sync_ix.index_config(), context
    assert await async_ix.training_state() == sync_ix.training_state(), context


async def check_sync_and_async_agree(tmp_path: Path) -> None:
    key = generate_key()
    for metric in ("euclidean", "cosine"):
        rng = np.random.default_rng(11)
        prng = random.Random(11)
        with Client(tmp_path / f"sync-{metric}") as sync_client:
            sync_ix = sync_client.create_index("same", key, dimension=DIM, metric=metric)
            async with AsyncClient(tmp_path / f"async-{metric}") as async_client:
                async_ix = await async_client.create_index("same", key, dimension=DIM, metric=metric)
                for step in range(12):
                    batch = items_of(f"s{step}-", random_vectors(rng, prng.randint(1, 40), DIM), prng)
                    if step % 3 == 2:  # overwrite some earlier ids too
                        batch += items_of("s0-", random_vectors(rng, 3, DIM), prng)
                    sync_ix.upsert(batch)
                    await async_ix.upsert(batch)
                    doomed = prng.sample(sorted(sync_ix.list_ids()), 4) + ["unknown-id"]
                    sync_ix.delete(doomed)
                    await async_ix.delete(doomed)
                await _same_reads(sync_ix, async_ix, rng, f"{metric}, memtable")
                for name in ("flush", "compact", "train"):
                    getattr(sync_ix, name)()
                    await getattr(async_ix, name)()
                    await _same_reads(sync_ix, async_ix, rng, f"{metric}, after {name}")
        with Client(tmp_path / f"sync-{metric}") as sync_client:
            sync_ix = sync_client.load_index("same", key)
            async with AsyncClient(tmp_path / f"async-{metric}") as async_client:
                async_ix = await async_client.load_index("same", key)
                await _same_reads(sync_ix, async_ix, rng, f"{metric}, after reopen")


# ----------------------------------------------------------------------------- same exceptions

GOOD = [0.5] * DIM
BAD_INDEX_CALLS: list[tuple[str, tuple, dict, type]] = [
    ("upsert", ([{"id": "x", "vector": [1.0] * (DIM - 1)}],), {}, DimensionMismatchError),
    ("upsert", ([{"id": "ok", "vector": GOOD}, {"id": "x", "vector": [math.nan] * DIM}],), {},
     InvalidVectorError),
    ("upsert", ([{"id": "", "vector": GOOD}],), {}, InvalidIdError),
    ("upsert", ([{"id": "x", "vector": GOOD, "metadata": {"$bad": 1}}],), {}, InvalidMetadataError),
    ("upsert", ([{"id": "x", "vector": GOOD, "contents": 5}],), {}, InvalidContentsError),
    ("upsert", ([{"id": "x", "vector": "abcdefgh"}],), {}, InvalidTypeError),
    ("upsert", ([{"id": "x", "vector": GOOD}],), {"index_key": b"k" * 32}, WrongKeyError),
    ("query", (GOOD,), {"top_k": 0}, InvalidArgumentError),
    ("query", (GOOD,), {"filters": {"n": {"$regex": "(?=x)"}}}, FilterError),
    ("query", (), {}, MissingVectorError),
    ("query", ([1.0] * (DIM + 1),), {}, DimensionMismatchError),
    ("get", (["a", ""],), {}, InvalidIdError),
    ("get", (["a"],), {"include": ["nope"]}, InvalidArgumentError),
    ("delete", ([""],), {}, InvalidIdError),
    ("train", (), {"n_lists": 0}, InvalidArgumentError),
]


async def _raised(call: Callable[[], Any]) -> type:
    try:
        result = call()
        if hasattr(result, "__await__"):
            await result
    except Exception as exc:  # noqa: BLE001 - the type is what is compared
        return type(exc)
    raise AssertionError("no exception")


async def check_errors_propagate_as_same_types(tmp_path: Path) -> None:
    key = generate_key()
    with Client(tmp_path / "sync") as sync_client:
        sync_ix = sync_client.create_index("errs", key, dimension=DIM)
        async with AsyncClient(tmp_path / "async") as async_client:
            async_ix = await async_client.create_index("errs", key, dimension=DIM)
            seed_items = [{"id": "keep", "vector": GOOD, "metadata": {"n": 1}}]
            sync_ix.upsert(seed_items)
            await async_ix.upsert(seed_items)
            for name, args, kwargs, expected in BAD_INDEX_CALLS:
                want = await _raised(lambda: getattr(sync_ix, name)(*args, **kwargs))
                got = await _raised(lambda: getattr(async_ix, name)(*args, **kwargs))
                assert issubclass(want, expected), f"sync {name}{args}{kwargs}: {want}"
                assert got is want, f"async {name}{args}{kwargs}: {got}, sync raised {want}"
            assert sorted(await async_ix.list_ids()) == sorted(sync_ix.list_ids()) == ["keep"]
            client_calls: list[tuple[str, tuple, type]] = [
                ("load_index", ("missing", key), IndexNotFoundError),
                ("create_index", ("errs", key), IndexExistsError),
                ("load_index", ("errs", generate_key()), WrongKeyError),
                ("create_index", ("../evil", key), InvalidIndexNameError),
                ("create_index", ("short", b"x" * 31), InvalidKeyError),
            ]
            for name, args, expected in client_calls:
                want = await _raised(lambda: getattr(sync_client, name)(*args))
                got = await _raised(lambda: getattr(async_client, name)(*args))
                assert issubclass(want, expected) and got is want, f"{name}{args}: {want} / {got}"
            sync_ix.close()
            await async_ix.close()
            for name, args in (("upsert", ([{"id": "y", "vector": GOOD}],)), ("query", (GOOD,))):
                want = await _raised(lambda: getattr(sync_ix, name)(*args))
                got = await _raised(lambda: getattr(async_ix, name)(*args))
                assert want is got and issubclass(want, ClosedError), f"closed {name}: {want} / {got}"


# ----------------------------------------------------------------------------- group commit

async def check_concurrent_upserts_share_fsyncs(tmp_path: Path, fdatasync_calls: list[int],
                                                   tasks: int = 500) -> None:
    key = generate_key()
    rng = np.random.default_rng(3)
    batches = {t: random_vectors(rng, int(rng.integers(1, 6)), DIM) for t in range(tasks)}
    async with AsyncClient(tmp_path / "gc") as client:
        index = await client.create_index("gc", key, dimension=DIM)
        fdatasync_calls[0] = 0

        async def one(t: int) -> None:
            await index.upsert(ids=[f"g{t}-{i}" for i in range(len(batches[t]))],
                               vectors=batches[t])

        async with anyio.create_task_group() as tg:
            for t in range(tasks):
                tg.start_soon(one, t)
        syncs = fdatasync_calls[0]
        await _check_all_present(index, batches)
    print(f"\n{tasks} concurrent upsert tasks -> {syncs} fdatasync calls")
    assert 1 <= syncs < tasks / 2, f"{syncs} fdatasync calls for {tasks} concurrent upserts"
    async with AsyncClient(tmp_path / "gc") as client:
        await _check_all_present(await client.load_index("gc", key), batches)


async def _check_all_present(index: Any, batches: dict[int, np.ndarray]) -> None:
    ids = [f"g{t}-{i}" for t, vecs in batches.items() for i in range(len(vecs))]
    want = np.concatenate(list(batches.values()))
    got = await index.get(ids, include=["vector"])
    assert [g["id"] for g in got] == ids, "some concurrently upserted items are missing"
    np.testing.assert_array_equal(np.array([g["vector"] for g in got], np.float32), want)
    assert await index.get_num_vectors() == len(ids)


# ----------------------------------------------------------------------------- cancellation

async def check_cancelled_upserts_are_all_or_nothing(tmp_path: Path, tasks: int = 300) -> None:
    """Modes per task: 0 a random deadline (move_on_after) after a random pause; 1 a CancelScope
    cancelled by a sibling task after a random pause; 2 cancelled before the call (must not
    happen); 3 never cancelled (must happen). A call that returned must have happened."""
    key = generate_key()
    prng = random.Random(8)
    rng = np.random.default_rng(8)
    plan = [(t % 4, prng.uniform(0, 0.004), prng.uniform(0, 0.004) * prng.choice((1, 10, 40)),
             random_vectors(rng, prng.randint(1, 8), DIM)) for t in range(tasks)]
    returned: set[int] = set()
    cancelled: set[int] = set()
    async with AsyncClient(tmp_path / "cancel", max_threads=8) as client:
        index = await client.create_index("cancel", key, dimension=DIM)

        async def one(t: int) -> None:
            mode, pause, deadline, vecs = plan[t]
            items = [{"id": f"c{t}-{i}", "vector": v, "metadata": {"t": t}} for i, v in enumerate(vecs)]
            scope = anyio.move_on_after(deadline) if mode == 0 else anyio.CancelScope()
            with scope:
                if mode == 1:
                    tg.start_soon(cancel_later, scope, deadline)
                elif mode == 2:
                    scope.cancel()
                await anyio.sleep(pause)
                await index.upsert(items)
                returned.add(t)
            if scope.cancel_called:
                cancelled.add(t)

        async def cancel_later(scope: anyio.CancelScope, delay: float) -> None:
            await anyio.sleep(delay)
            scope.cancel()

        async with anyio.create_task_group() as tg:
            for t in range(tasks):
                tg.start_soon(one, t)
        before = await _check_atomic(index, plan, returned)
    async with AsyncClient(tmp_path / "cancel") as client:
        after = await _check_atomic(await client.load_index("cancel", key), plan, returned)
    assert after == before, "reopening changed which cancelled batches exist"
    print(f"\n{tasks} upserts, {sum(m in (0, 1) for m, *_ in plan)} with a random cancel: "
          f"{len(cancelled)} cancelled ({len(cancelled & before)} of them applied), "
          f"{len(returned)} returned, {len(before)} applied")


async def _check_atomic(index: Any, plan: list, returned: set[int]) -> set[int]:
    """Every batch wholly present (with its vectors) or wholly absent; returns the present ones."""
    present: set[int] = set()
    for t, (mode, _pause, _deadline, vecs) in enumerate(plan):
        ids = [f"c{t}-{i}" for i in range(len(vecs))]
        got = await index.get(ids, include=["vector", "metadata"])
        assert len(got) in (0, len(ids)), f"task {t} (mode {mode}): {len(got)} of {len(ids)} items"
        if got:
            present.add(t)
            np.testing.assert_array_equal(np.array([g["vector"] for g in got], np.float32), vecs)
            assert all(g["metadata"] == {"t": t} for g in got)
        if t in returned or mode == 3:
            assert got, f"task {t} (mode {mode}) returned from upsert but its batch is absent"
        if mode == 2:
            assert not got, f"task {t} was cancelled before calling upsert but its batch exists"
    assert await index.get_num_vectors() == sum(len(plan[t][3]) for t in present)
    return present


# ----------------------------------------------------------------------------- the loop stays live

async def check_loop_keeps_beating_during_a_big_load(tmp_path: Path, record: Callable[[str, Any], None],
                                                        tasks: int = 200, per_task: int = 100) -> None:
    key = generate_key()
    rng = np.random.default_rng(4)
    batches = {t: random_vectors(rng, per_task, DIM) for t in range(tasks)}
    in_flight = [0]
    beats = [0]
    longest = [0.0]
    done = anyio.Event()

    async def heartbeat() -> None:
        while not done.is_set():
            start = anyio.current_time()
            await anyio.sleep(0.001)
            longest[0] = max(longest[0], anyio.current_time() - start)
            if in_flight[0]:
                beats[0] += 1

    async with AsyncClient(tmp_path / "hb") as client:
        index = await client.create_index("hb", key, dimension=DIM)

        async def one(t: int) -> None:
            in_flight[0] += 1
            try:
                await index.upsert(ids=[f"g{t}-{i}" for i in range(per_task)], vectors=batches[t])
            finally:
                in_flight[0] -= 1

        async with anyio.create_task_group() as outer:
            outer.start_soon(heartbeat)
            async with anyio.create_task_group() as tg:
                for t in range(tasks):
                    tg.start_soon(one, t)
            done.set()
        await _check_all_present(index, batches)
    stall_ms = max(0.0, longest[0] - 0.001) * 1000
    record("max_loop_stall_ms", round(stall_ms, 2))
    record("heartbeats_during_load", beats[0])
    print(f"\n{tasks * per_task} vectors upserted by {tasks} tasks: {beats[0]} heartbeats while "
          f"in flight, longest loop stall {stall_ms:.2f} ms")
    assert beats[0] >= 5, f"only {beats[0]} heartbeats while {tasks * per_task} vectors were upserted"


# ----------------------------------------------------------------------------- async with closes

async def check_async_with_closes(tmp_path: Path) -> None:
    key = generate_key()
    vec = [0.25] * DIM
    async with AsyncClient(tmp_path / "ctx") as client:
        index = await client.create_index("ctx", key, dimension=DIM)
        await index.upsert([{"id": "a", "vector": vec}])
        async with await client.load_index("ctx", key) as second:
            assert await second.get_num_vectors() == 1
        with pytest.raises(ClosedError):
            await second.list_ids()
        assert await index.list_ids() == ["a"], "closing one face closed the other"
    for call in (lambda: client.list_indexes(), lambda: index.upsert([{"id": "b", "vector": vec}]),
                 lambda: index.query(vec)):
        with pytest.raises(ClosedError):
            await call()
    with pytest.raises(RuntimeError, match="boom"):
        async with AsyncClient(tmp_path / "ctx") as client:
            index = await client.load_index("ctx", key)  # would fail if the lock were still held
            raise RuntimeError("boom")
    with pytest.raises(ClosedError):
        await index.get_num_vectors()
    with Client(tmp_path / "ctx") as sync_client:  # the lock is free and the data is there
        assert sync_client.load_index("ctx", key).get(["a"])[0]["vector"] == pytest.approx(vec)


# ----------------------------------------------------------------------------- the runs

@pytest.mark.anyio
async def test_sync_and_async_agree(tmp_path: Path, anyio_backend: str) -> None:
    await check_sync_and_async_agree(tmp_path)


@pytest.mark.asyncio
async def test_sync_and_async_agree_pytest_asyncio(tmp_path: Path) -> None:
    await check_sync_and_async_agree(tmp_path)


@pytest.mark.anyio
async def test_errors_propagate_as_same_types(tmp_path: Path, anyio_backend: str) -> None:
    await check_errors_propagate_as_same_types(tmp_path)


@pytest.mark.asyncio
async def test_errors_propagate_as_same_types_pytest_asyncio(tmp_path: Path) -> None:
    await check_errors_propagate_as_same_types(tmp_path)


@pytest.mark.anyio
async def test_concurrent_upserts_share_fsyncs(tmp_path: Path, anyio_backend: str,
                                              fdatasync_calls: list[int]) -> None:
    await check_concurrent_upserts_share_fsyncs(tmp_path, fdatasync_calls)


@pytest.mark.asyncio
async def test_concurrent_upserts_share_fsyncs_pytest_asyncio(tmp_path: Path,
                                                              fdatasync_calls: list[int]) -> None:
    await check_concurrent_upserts_share_fsyncs(tmp_path, fdatasync_calls)


@pytest.mark.anyio
async def test_cancelled_upserts_are_all_or_nothing(tmp_path: Path, anyio_backend: str) -> None:
    await check_cancelled_upserts_are_all_or_nothing(tmp_path)


@pytest.mark.asyncio
async def test_cancelled_upserts_are_all_or_nothing_pytest_asyncio(tmp_path: Path) -> None:
    await check_cancelled_upserts_are_all_or_nothing(tmp_path)


@pytest.mark.anyio
async def test_loop_keeps_beating_during_a_big_load(tmp_path: Path, anyio_backend: str,
                                                   record_property: Any) -> None:
    await check_loop_keeps_beating_during_a_big_load(tmp_path, record_property)


@pytest.mark.asyncio
async def test_loop_keeps_beating_during_a_big_load_pytest_asyncio(tmp_path: Path,
                                                                  record_property: Any) -> None:
    await check_loop_keeps_beating_during_a_big_load(tmp_path, record_property)


@pytest.mark.anyio
async def test_async_with_closes(tmp_path: Path, anyio_backend: str) -> None:
    await check_async_with_closes(tmp_path)


@pytest.mark.asyncio
async def test_async_with_closes_pytest_asyncio(tmp_path: Path) -> None:
    await check_async_with_closes(tmp_path)
