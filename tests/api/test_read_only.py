"""read_only opening (issue 20; db/reader.py): a reader in this process beside a writer in
another (tests/writer_worker.py), checked against a dict of what the writer acknowledged --
after refresh() every read equals that oracle, a write becomes visible by itself within
max_staleness, the folder's bytes never change because of a reader, every write is refused
before anything happens, and a segment merged away under a reader goes on answering."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import brute_force
from writer_worker import DIM, rows
from lsmvec import AsyncClient, Client, generate_key
from lsmvec.errors import (IndexNotFoundError, InvalidArgumentError, ReadOnlyError)

WORKER = Path(__file__).resolve().parent.parent / "writer_worker.py"


class Writer:
    """The writer process and the oracle of what it acknowledged."""

    def __init__(self, folder: Path, key: bytes, *, create: bool = True, **options: Any) -> None:
        self.proc = subprocess.Popen([sys.executable, str(WORKER), str(folder), key.hex()],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.items: dict[str, tuple[list[float], dict]] = {}
        if create:
            self.do(op="create", dimension=DIM, options={"background_compaction": False,
                                                         **options})

    def do(self, **command: Any) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()  # the worker answers once the call returned
        assert line, f"writer died: {command}"
        reply = json.loads(line)
        assert reply["ok"], reply
        return reply

    def upsert(self, items: list[tuple[str, list[float], dict]]) -> None:
        self.do(op="upsert", items=items)
        self.items.update({i: (v, m) for i, v, m in items})

    def upsert_generated(self, prefix: str, n: int, seed: int, clustered: bool = False) -> None:
        self.do(op="upsert_generated", prefix=prefix, n=n, seed=seed, clustered=clustered)
        self.items.update({i: (v, m) for i, v, m in rows(prefix, n, seed, clustered=clustered)})

    def delete(self, ids: list[str]) -> None:
        self.do(op="delete", ids=ids)
        for i in ids:
            self.items.pop(i, None)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.do(op="close")
            self.proc.wait(timeout=60)


@pytest.fixture
def writer(data_dir: Path, key: bytes):
    data_dir.mkdir(parents=True, exist_ok=True)
    w = Writer(data_dir, key)
    yield w
    if w.proc.poll() is None:
        w.proc.kill()
        w.proc.wait(timeout=60)


def check(index, oracle: dict[str, tuple[list[float], dict]]) -> None:
    """Every read of `index` equals the oracle: ids, count, get, a filter, a query."""
    assert sorted(index.list_ids()) == sorted(oracle)
    assert index.get_num_vectors() == len(oracle)
    got = {r["id"]: r for r in index.get(list(oracle), include=["vector", "metadata"])}
    assert set(got) == set(oracle)
    for item_id, (vector, meta) in oracle.items():
        assert got[item_id]["metadata"] == meta
        np.testing.assert_allclose(got[item_id]["vector"], vector, rtol=1e-6)
    want_g1 = sorted(i for i, (_v, m) in oracle.items() if m["g"] == 1)
    assert sorted(r["id"] for r in index.query_metadata(filters={"g": 1})) == want_g1
    if oracle:
        model = {i: v for i, (v, _m) in oracle.items()}
        q = [0.3, -0.2, 0.1, 0.5]
        want, want_d, _all = brute_force(model, q, "euclidean", 5)
        got_q = index.query(q, top_k=5, include=["distance"])
        np.testing.assert_allclose([r["distance"] for r in got_q], want_d, rtol=1e-5, atol=1e-6)
        assert [r["id"] for r in got_q] == want


def folder_state(folder: Path) -> dict[str, str]:
    """name -> sha256 of every file, LMDB's shared reader table (store/lock.mdb) left out."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != "lock.mdb":
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# ----------------------------------------------------------------------------- reading

def test_reader_sees_exactly_what_the_writer_acknowledged(writer: Writer, data_dir: Path,
                                                          key: bytes) -> None:
    writer.upsert(rows("a", 20, 0))
    with Client(data_dir, read_only=True) as client:
        index = client.load_index("t", key, max_staleness=60)  # refreshes only when asked
        check(index, writer.items)
        steps = [
            lambda: writer.upsert(rows("b", 15, 1)),             # the log grew
            lambda: writer.do(op="flush"),                         # a segment, log files freed
            lambda: writer.delete(["a0", "a1", "b3"]),             # deletes in the log
            lambda: writer.upsert(rows("a", 5, 2)),                # overwrites
            lambda: writer.do(op="flush"),
            lambda: writer.do(op="train"),                         # segments merged away
            lambda: writer.delete(["a2"]),
        ]
        for step in steps:
            step()
            index.refresh()
            check(index, writer.items)
        writer.close()
        index.refresh()  # the clean close flushed: a new view, same state
        check(index, writer.items)


def test_a_reader_freezes_memtables_as_it_follows_a_long_log(data_dir: Path,
                                                             key: bytes) -> None:
    data_dir.mkdir(parents=True)
    writer = Writer(data_dir, key, memtable_bytes=1500)  # a few rows per memtable
    try:
        with Client(data_dir, read_only=True) as client:
            index = client.load_index("t", key, max_staleness=60)
            for batch in range(6):
                writer.upsert(rows(f"m{batch}-", 8, batch))
                writer.delete([f"m{batch}-0"])
                index.refresh()
                check(index, writer.items)
            stats = index.stats()
            assert stats["frozen_memtables"] >= 2 and stats["segments"] == []
            assert stats["write_pressure"]["read_only"] is True
            assert stats["background_error"] is None
    finally:
        writer.close()


def test_a_write_becomes_visible_by_itself_within_max_staleness(writer: Writer,
                                                               data_dir: Path,
                                                               key: bytes) -> None:
    writer.upsert(rows("a", 3, 0))
    with Client(data_dir, read_only=True) as client:
        index = client.load_index("t", key, max_staleness=0.2)
        for step, action in enumerate((lambda: writer.upsert(rows("n", 2, 5)),
                                       lambda: writer.do(op="flush"),
                                       lambda: writer.delete(["a0"]))):
            action()
            acked = time.monotonic()
            deadline = acked + 30  # the bound is checked below; this only stops a hang
            while sorted(index.list_ids()) != sorted(writer.items):
                assert time.monotonic() < deadline, f"step {step} never became visible"
            seen = time.monotonic() - acked
            # Refreshes run every max_staleness / 4; a loaded 2-core machine may add a few
            # hundred ms to one (the figures are measured in tools/bench_readers.py).
            assert seen < 0.2 + 2.0, seen


def test_a_reader_leaves_every_file_as_it_found_it(writer: Writer, data_dir: Path,
                                                   key: bytes) -> None:
    writer.upsert(rows("a", 30, 0))
    writer.do(op="flush")
    writer.upsert(rows("b", 10, 1))  # some left in the log: the reader replays it
    writer.proc.kill()  # no clean close: the reader finds a log tail to follow
    writer.proc.wait(timeout=60)
    folder = data_dir / "t"
    before = folder_state(folder)
    names_before = sorted(p.name for p in data_dir.rglob("*"))
    with Client(data_dir, read_only=True) as client:
        index = client.load_index("t", key)
        check(index, writer.items)
        index.refresh()
        index.stats()
        index.verify()
        with pytest.raises(ReadOnlyError):
            index.upsert([("z", [0.0] * DIM)])
    assert folder_state(folder) == before
    assert sorted(p.name for p in data_dir.rglob("*")) == names_before


@pytest.mark.parametrize("call", [
    lambda ix: ix.upsert([("z", [0.0, 0.0, 0.0, 1.0])]),
    lambda ix: ix.upsert("not even items"),  # refused as read-only before the arguments
    lambda ix: ix.delete(["a0"]),
    lambda ix: ix.delete(filters={"g": 1}),
    lambda ix: ix.update([{"id": "a0", "metadata": {}}]),
    lambda ix: ix.flush(),
    lambda ix: ix.compact(),
    lambda ix: ix.train(),
    lambda ix: ix.delete_index(),
])
def test_every_write_is_refused_and_changes_nothing(writer: Writer, data_dir: Path, key: bytes,
                                                    call) -> None:
    writer.upsert(rows("a", 5, 0))
    writer.close()
    before = folder_state(data_dir / "t")
    with Client(data_dir, read_only=True) as client:
        index = client.load_index("t", key)
        with pytest.raises(ReadOnlyError):
            call(index)
        check(index, writer.items)
        with pytest.raises(ReadOnlyError):
            client.create_index("other", key, dimension=DIM)
        with pytest.raises(ReadOnlyError):
            client.delete_index("t", key)
        with pytest.raises(ReadOnlyError):
            client.load_index("t", key, read_only=False)
    assert folder_state(data_dir / "t") == before


def test_a_read_only_client_creates_nothing(tmp_path: Path, key: bytes) -> None:
    missing = tmp_path / "nowhere"
    with Client(missing, read_only=True) as client:
        assert client.list_indexes() == []
        with pytest.raises(IndexNotFoundError):
            client.load_index("t", key)
    assert not missing.exists()
    with pytest.raises(Exception) as info:
        Client(tmp_path, read_only="yes")  # type: ignore[arg-type]
    assert "read_only" in str(info.value)
    with Client(tmp_path, read_only=True) as client:
        with pytest.raises(InvalidArgumentError, match="max_staleness"):
            client.load_index("t", key, max_staleness=0)


def test_readers_take_no_lock_a_writer_opens_beside_them(data_dir: Path, key: bytes) -> None:
    first = Writer(data_dir, key)
    first.upsert(rows("a", 4, 0))
    first.close()
    with Client(data_dir, read_only=True) as client:
        index = client.load_index("t", key)
        second = Writer(data_dir, key, create=False)  # loads "t" at its first command
        try:
            second.items = dict(first.items)
            second.upsert(rows("b", 3, 1))
            index.refresh()
            check(index, second.items)
        finally:
            second.proc.kill()
            second.proc.wait(timeout=60)


@pytest.mark.slow
def test_a_segment_merged_away_keeps_answering(writer: Writer, data_dir: Path,
                                               key: bytes) -> None:
    writer.upsert_generated("a", 20_000, 0, clustered=True)  # a tree from 20k rows
    writer.do(op="train")  # a ScaNN tree: its rows are read back from vectors.bin on demand
    with Client(data_dir, read_only=True) as client:
        index = client.load_index("t", key, max_staleness=60)
        (segment,) = index.stats()["segments"]
        assert segment["kind"] == "tree_ah"
        old = data_dir / "t" / "segments"
        old_folders = sorted(p.name for p in old.iterdir())
        writer.upsert_generated("b", 1_200, 1, clustered=True)
        writer.do(op="train")  # merges the reader's segment into a new one and deletes it
        assert not set(old_folders) & {p.name for p in old.iterdir()}
        got = index.get(["a7", "a19999"], include=["vector"])  # still the old view
        assert [r["id"] for r in got] == ["a7", "a19999"]
        for r in got:
            np.testing.assert_allclose(r["vector"], writer.items[r["id"]][0], rtol=1e-6)
        assert index.get_num_vectors() == 20_000
        index.refresh()
        assert index.get_num_vectors() == 21_200
        check(index, writer.items)


def test_in_the_writers_process_a_read_only_handle_is_the_writers(data_dir: Path,
                                                                   key: bytes) -> None:
    with Client(data_dir) as client:
        index = client.create_index("t", key, dimension=DIM)
        index.upsert([("a", [0.0, 0.0, 0.0, 1.0])])
        with Client(data_dir, read_only=True) as readers:
            view = readers.load_index("t", key)
            assert view.list_ids() == ["a"]
            index.upsert([("b", [0.0, 0.0, 1.0, 0.0])])
            assert sorted(view.list_ids()) == ["a", "b"]  # no staleness: the same core
            with pytest.raises(ReadOnlyError):
                view.delete(["a"])
            view.close()
        assert sorted(index.list_ids()) == ["a", "b"]
    with Client(data_dir, read_only=True) as readers:
        readers.load_index("t", key)
        with Client(data_dir) as client:  # one LMDB environment per file and process
            with pytest.raises(InvalidArgumentError, match="read_only"):
                client.load_index("t", key)


@pytest.mark.anyio
async def test_async_read_only(writer: Writer, data_dir: Path, key: bytes) -> None:
    writer.upsert(rows("a", 6, 0))
    async with AsyncClient(data_dir, read_only=True) as client:
        index = await client.load_index("t", key, max_staleness=60)
        assert sorted(await index.list_ids()) == sorted(writer.items)
        writer.delete(["a1"])
        await index.refresh()
        assert sorted(await index.list_ids()) == sorted(writer.items)
        with pytest.raises(ReadOnlyError):
            await index.upsert([("z", [0.0] * DIM)])
