"""Opening, writing and closing an index many times -- also after injected I/O errors -- leaks
no file descriptor, no thread and no LMDB reader slot.

Sync: 1000 cycles of Client -> load_index -> upsert + delete -> close, with errors injected on a
schedule: a failed log write (failpoint wal.after_write, eio: the upsert raises StorageError), a
failed fdatasync (the log is poisoned: LogPoisonedError, then a close that writes nothing), a
failed segment build inside close (close raises StorageError) and a compact now and then (so the
segment count, and what an open holds, stays bounded). Async: 200 cycles with AsyncClient, every
tenth with a failed log write. Open file descriptors (/proc/self/fd), threads
(threading.active_count()) and the reader slots of the open LMDB environment are measured after
a warm-up and at the end; they may not grow (a small slack for the interpreter's own churn).
At the end the index holds exactly the acknowledged writes (an upsert whose fdatasync failed
may or may not have reached the log: either is allowed).
"""
from __future__ import annotations

import errno
import os
import resource
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

import fault_worker as fw
from lsmvec import AsyncClient, Client, generate_key
from lsmvec.errors import LogPoisonedError, StorageError
from lsmvec.wal import failpoints, fsio

pytestmark = pytest.mark.slow

SYNC_CYCLES = 1000
ASYNC_CYCLES = 200
WARM_UP = 100
FD_SLACK = 2
THREAD_SLACK = 1


def open_fds() -> int:
    if os.path.isdir("/proc/self/fd"):
        return len(os.listdir("/proc/self/fd"))
    limit = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 65536)
    count = 0
    for fd in range(limit):
        try:
            os.fstat(fd)
        except OSError:
            continue
        count += 1
    return count


def reader_slots(index: Any) -> int:
    """Reader-table entries of the index's LMDB environment (this process's stale ones too)."""
    table = index._core.store.env.readers()
    return sum(1 for line in table.splitlines()[1:] if line.strip())


class FailOneSync(fsio.FileSystem):
    """fdatasync fails once, then the file system is itself again."""

    def __init__(self) -> None:
        self.fired = False

    def fdatasync(self, fd: int) -> None:
        if not self.fired:
            self.fired = True
            raise OSError(errno.EIO, "injected EIO in fdatasync")
        super().fdatasync(fd)


@pytest.fixture
def work_dir(tmp_path: Path) -> Iterator[Path]:
    with fw.scratch(tmp_path) as path:
        yield path


def _vec(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(fw.DIM).astype(np.float32)


def test_sync_open_write_close_cycles_leak_nothing(work_dir: Path, record_property: Any) -> None:
    key = generate_key()
    fw.create_index(work_dir, key, memtable_bytes=1 << 20)
    acked: dict[str, bytes] = {}
    maybe: dict[str, bytes] = {}  # upserts whose fdatasync failed: on disk or not
    injected = {"log_write": 0, "fdatasync": 0, "close_build": 0}
    marks: dict[str, tuple[int, int, int]] = {}
    for i in range(SYNC_CYCLES):
        client = Client(work_dir)
        index = client.load_index(fw.INDEX_NAME, key)
        item = f"c{i}"
        if i % 10 == 3:
            failpoints.arm("wal.after_write", "eio")
            with pytest.raises(StorageError):
                index.upsert([{"id": f"lost{i}", "vector": _vec(i)}])
            failpoints.disarm()
            injected["log_write"] += 1
        if i % 25 == 7:
            real, fsio.FS = fsio.FS, FailOneSync()
            try:
                with pytest.raises(LogPoisonedError):
                    index.upsert([{"id": item, "vector": _vec(i)}])
                with pytest.raises(LogPoisonedError):
                    index.delete([f"c{i - 1}"])
            finally:
                fsio.FS = real
            maybe[item] = _vec(i).tobytes()
            injected["fdatasync"] += 1
        else:
            index.upsert([{"id": item, "vector": _vec(i)}])
            acked[item] = _vec(i).tobytes()
            if i % 3 == 0 and f"c{i - 1}" in acked:
                index.delete([f"c{i - 1}"])
                del acked[f"c{i - 1}"]
        if i % 50 == 0:
            index.compact()
        index.get([item])
        slots = reader_slots(index)
        if i % 40 == 13:
            failpoints.arm("segment.before_rename", "eio")
            with pytest.raises(StorageError):
                client.close()  # close flushes the memtable: that build fails
            failpoints.disarm()
            injected["close_build"] += 1
        else:
            client.close()
        if i in (WARM_UP, SYNC_CYCLES - 1):
            marks["warm-up" if i == WARM_UP else "end"] = (open_fds(), threading.active_count(), slots)
    with Client(work_dir) as client:
        index = client.load_index(fw.INDEX_NAME, key)
        state = {k: v[0] for k, v in fw.read_state(index).items()}
    assert {k: v for k, v in state.items() if k not in maybe} == acked
    assert all(maybe[k] == v for k, v in state.items() if k in maybe)
    (fds0, threads0, slots0), (fds1, threads1, slots1) = marks["warm-up"], marks["end"]
    summary = (f"resources[sync]: {SYNC_CYCLES} open/write/close cycles, I/O errors injected "
               f"{sum(injected.values())} {injected}; after warm-up vs end: fds {fds0} -> {fds1}, "
               f"threads {threads0} -> {threads1}, LMDB reader slots {slots0} -> {slots1}; "
               f"{len(state)} live items, acknowledged writes lost 0")
    record_property("resources_sync_summary", summary)
    print(summary)
    assert fds1 <= fds0 + FD_SLACK, summary
    assert threads1 <= threads0 + THREAD_SLACK, summary
    assert slots1 <= slots0, summary


def test_async_open_write_close_cycles_leak_nothing(work_dir: Path, record_property: Any) -> None:
    key = generate_key()
    fw.create_index(work_dir, key, memtable_bytes=1 << 20)
    marks: dict[str, tuple[int, int]] = {}
    injected = 0
    acked: dict[str, bytes] = {}

    async def cycles() -> None:
        nonlocal injected
        for i in range(ASYNC_CYCLES):
            async with AsyncClient(work_dir) as client:
                index = await client.load_index(fw.INDEX_NAME, key)
                if i % 10 == 4:
                    failpoints.arm("wal.after_write", "eio")
                    with pytest.raises(StorageError):
                        await index.upsert([{"id": f"lost{i}", "vector": _vec(i)}])
                    failpoints.disarm()
                    injected += 1
                await index.upsert([{"id": f"a{i}", "vector": _vec(i)}])
                acked[f"a{i}"] = _vec(i).tobytes()
                if i % 50 == 0:
                    await index.compact()
                await index.get([f"a{i}"])
            if i in (WARM_UP // 5, ASYNC_CYCLES - 1):
                marks["warm-up" if i == WARM_UP // 5 else "end"] = (open_fds(), threading.active_count())

    anyio.run(cycles)
    with Client(work_dir) as client:
        state = {k: v[0] for k, v in fw.read_state(client.load_index(fw.INDEX_NAME, key)).items()}
    assert state == acked
    (fds0, threads0), (fds1, threads1) = marks["warm-up"], marks["end"]
    summary = (f"resources[async]: {ASYNC_CYCLES} AsyncClient open/write/close cycles, {injected} "
               f"I/O errors injected; after warm-up vs end: fds {fds0} -> {fds1}, threads "
               f"{threads0} -> {threads1}; acknowledged writes lost 0")
    record_property("resources_async_summary", summary)
    print(summary)
    assert fds1 <= fds0 + FD_SLACK, summary
    assert threads1 <= threads0 + THREAD_SLACK, summary
