"""Online backup (Index.backup) and restore (lsmvec.db.backup.restore) against an oracle.

The oracle is a list of acknowledged operations, each with the LSN its log record got (one
writer thread or process, one record per call, so the log's last LSN when the call returns is
that call's). A backup at LSN L must hold exactly the state those operations up to L build:
the same ids, vectors, contents and metadata -- nothing later, nothing lost.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lsmvec import Client, generate_key
from lsmvec.db.backup import restore
from lsmvec.errors import (ClosedError, IndexNotFoundError, InvalidArgumentError,
                           InvalidIndexNameError, InvalidTypeError, WrongKeyError)

DIM = 8
DEADLINE_S = 120.0

# The workload both the in-process tests and the subprocess writer run: op i is a pure
# function of i (kept as source text so the child process runs the very same code).
OPS_SOURCE = '''
import numpy as np

def make_op(i):
    """("upsert", ids, vectors, contents, metadata) or ("delete", ids): op i of the workload."""
    rng = np.random.default_rng(1000 + i)
    pool = 80
    if i % 5 == 4:
        return ("delete", [f"k{int(j)}" for j in rng.choice(pool, 3, replace=False)])
    ids = [f"k{int(j)}" for j in rng.choice(pool, 4, replace=False)]
    vectors = rng.standard_normal((4, 8)).astype(np.float32)
    contents = [f"text {i} {n}" for n in range(4)]
    metadata = [{"op": i, "n": n, "tag": ["a", "b", "c"][n % 3]} for n in range(4)]
    return ("upsert", ids, vectors, contents, metadata)

def run_op(index, op):
    if op[0] == "delete":
        index.delete(op[1])
    else:
        _kind, ids, vectors, contents, metadata = op
        index.upsert([{"id": a, "vector": v, "contents": c, "metadata": m}
                      for a, v, c, m in zip(ids, vectors, contents, metadata)])
'''
_ns: dict = {}
exec(OPS_SOURCE, _ns)
make_op, run_op = _ns["make_op"], _ns["run_op"]


def run_ops(index, numbers, acked: list) -> list:
    """Run make_op(i) for each i, appending (i, the LSN its record got) to `acked` once it
    returned (acknowledged); returns `acked`."""
    for i in numbers:
        run_op(index, make_op(i))
        acked.append((i, index._core.wal.last_lsn))
    return acked


def oracle_state(acked: list[tuple[int, int]], upto: int) -> dict[str, tuple]:
    """id -> (vector, contents, metadata) after the acknowledged ops (i, lsn) with lsn <= upto."""
    state: dict[str, tuple] = {}
    for i, lsn in acked:
        if lsn > upto:
            break
        op = make_op(i)
        if op[0] == "delete":
            for item_id in op[1]:
                state.pop(item_id, None)
        else:
            for item_id, v, c, m in zip(*op[1:]):
                state[item_id] = (v, c, m)
    return state


def assert_holds(index, expected: dict[str, tuple]) -> None:
    """The index holds exactly `expected`: same ids, byte-equal vectors, same contents/metadata."""
    ids = index.list_ids()
    assert sorted(ids) == sorted(expected)
    assert index.get_num_vectors() == len(expected)
    got = index.get(ids, include=["vector", "contents", "metadata"]) if ids else []
    assert len(got) == len(expected)
    for item in got:
        vector, contents, metadata = expected[item["id"]]
        assert np.array_equal(np.asarray(item["vector"], np.float32), vector), item["id"]
        assert item["contents"] in (contents, contents.encode())
        assert item["metadata"] == metadata


def wait_for(condition, what: str, deadline_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def open_copy(path: Path, key: bytes):
    client = Client(path.parent)
    return client, client.load_index(path.name, key)


class Writer(threading.Thread):
    """Runs ops 0, 1, 2, ... on `index` until stopped; records (i, lsn) once each returns."""

    def __init__(self, index):
        super().__init__(daemon=True)
        self.index, self.acked, self.stop, self.error = index, [], threading.Event(), None
        self.lock = threading.Lock()

    def run(self) -> None:
        wal = self.index._core.wal
        try:
            i = 0
            while not self.stop.is_set():
                run_op(self.index, make_op(i))
                with self.lock:
                    self.acked.append((i, wal.last_lsn))
                i += 1
        except BaseException as exc:  # reported by the test
            self.error = exc

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def last_lsn(self) -> int:
        with self.lock:
            return self.acked[-1][1] if self.acked else 0


@pytest.fixture
def loaded(tmp_path):
    """A small-memtable index (flushes and merges run in the background under load)."""
    key = generate_key()
    client = Client(tmp_path / "data")
    index = client.create_index("live", key, dimension=DIM, memtable_bytes=6_000,
                                wal_roll_bytes=4_000)
    yield client, index, key
    client.close()


def test_backups_under_load_hold_exactly_the_oracle_state_at_their_lsn(loaded, tmp_path):
    client, index, key = loaded
    writer = Writer(index)
    merger_stop = threading.Event()

    def merger() -> None:  # merges (segment folders removed) race the backups too
        while not merger_stop.is_set():
            index.compact()

    merge_thread = threading.Thread(target=merger, daemon=True)
    writer.start()
    merge_thread.start()
    backups = []
    try:
        for n, at in enumerate((60, 250, 500)):
            wait_for(lambda: writer.count() >= at or writer.error is not None, f"{at} ops")
            assert writer.error is None, writer.error
            before = writer.last_lsn()
            report = index.backup(tmp_path / "copies" / f"c{n}")
            after = writer.last_lsn()
            backups.append((report, before, after))
        wait_for(lambda: writer.last_lsn() > backups[-1][0]["lsn"] or writer.error is not None,
                 "a write after the backup")
    finally:
        writer.stop.set()
        merger_stop.set()
        writer.join(DEADLINE_S)
        merge_thread.join(DEADLINE_S)
    assert writer.error is None, writer.error
    lsns = [lsn for _i, lsn in writer.acked]
    assert lsns == list(range(lsns[0], lsns[0] + len(lsns)))  # one record per call, in order
    assert_holds(index, oracle_state(writer.acked, lsns[-1]))  # the source itself, at the end
    # the copies took both paths: segments (linked) and log records (replayed at open)
    assert any(report["segments"] and report["linked"] for report, _b, _a in backups)
    assert all(any(p.stat().st_size for p in (Path(report["path"]) / "wal").iterdir())
               for report, _b, _a in backups)
    for report, before, after in backups:
        # every write acknowledged before the call is in; the backup's LSN was logged by then
        assert before <= report["lsn"] <= after + 1
        expected = oracle_state(writer.acked, report["lsn"])
        other, copy = open_copy(Path(report["path"]), key)
        with other:
            assert_holds(copy, expected)
    # later writes did not reach the copies: the states differ (the test can fail); compared
    # as bytes (tuples holding numpy arrays have no truth value when the ids coincide)
    def canonical(state: dict) -> dict:
        return {k: (np.asarray(v).tobytes(), c, repr(m)) for k, (v, c, m) in state.items()}
    assert canonical(oracle_state(writer.acked, lsns[-1])) != canonical(
        oracle_state(writer.acked, backups[0][0]["lsn"]))


def test_segment_files_are_hard_links_and_log_files_copies(loaded, tmp_path):
    client, index, key = loaded
    acked = run_ops(index, range(120), [])
    index.flush()
    run_ops(index, [120], acked)  # an unflushed write: the copy replays it from its log
    report = index.backup(tmp_path / "copy")
    source, copy = index._core.folder, Path(report["path"])
    seg_files = sorted(p.relative_to(copy) for p in (copy / "segments").rglob("*") if p.is_file())
    assert seg_files and report["linked"] == len(seg_files) and report["copied"] == 0
    assert report["segments"] == len(index._core.manifest.segments) >= 1
    for rel in seg_files:
        assert os.stat(copy / rel).st_ino == os.stat(source / rel).st_ino
    logs = sorted((copy / "wal").iterdir())
    assert logs
    for log_file in logs:
        assert os.stat(log_file).st_ino != os.stat(source / "wal" / log_file.name).st_ino
    assert report["bytes"] == sum(p.stat().st_size for p in copy.rglob("*") if p.is_file())
    assert not [p for p in copy.parent.iterdir() if p.name.startswith(".")]  # no temp left
    other, opened = open_copy(copy, key)
    with other:
        assert_holds(opened, oracle_state(acked, report["lsn"]))
    assert report["lsn"] == acked[-1][1]


def test_segment_files_are_copied_where_links_fail(loaded, tmp_path, monkeypatch):
    import errno
    import lsmvec.db.backup as backup_module
    client, index, key = loaded
    acked = run_ops(index, range(60), [])
    index.flush()

    def no_link(a, b):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(backup_module.os, "link", no_link)
    report = index.backup(tmp_path / "copy")
    copy = Path(report["path"])
    seg_files = [p for p in (copy / "segments").rglob("*") if p.is_file()]
    assert report["linked"] == 0 and report["copied"] == len(seg_files) > 0
    for p in seg_files:
        assert p.stat().st_ino != (index._core.folder / p.relative_to(copy)).stat().st_ino
    monkeypatch.undo()
    other, opened = open_copy(copy, key)
    with other:
        assert_holds(opened, oracle_state(acked, report["lsn"]))


def test_copy_after_train_and_merges_answers_queries_like_the_source(tmp_path):
    key = generate_key()
    rng = np.random.default_rng(5)
    with Client(tmp_path / "data") as client:
        index = client.create_index("t", key, dimension=16, memtable_bytes=50_000)
        vectors = rng.standard_normal((3000, 16)).astype(np.float32)
        index.upsert(ids=[f"v{i}" for i in range(3000)], vectors=vectors)
        index.train()
        index.upsert(ids=[f"w{i}" for i in range(50)], vectors=vectors[:50] + 1)
        index.delete([f"v{i}" for i in range(0, 3000, 7)])
        index.compact()
        index.upsert(ids=["late"], vectors=vectors[:1] * 2)  # in the log only
        queries = rng.standard_normal((5, 16)).astype(np.float32)
        want = [[h["id"] for h in hits] for hits in index.query(queries, top_k=10)]
        ids = sorted(index.list_ids())
        report = index.backup(tmp_path / "bk" / "t2")
    with Client(tmp_path / "bk") as client:
        copy = client.load_index("t2", key)
        assert sorted(copy.list_ids()) == ids
        assert len(ids) == 3000 - len(range(0, 3000, 7)) + 51
        assert [[h["id"] for h in hits] for hits in copy.query(queries, top_k=10)] == want
        assert copy.verify()["ok"]
    assert report["segments"] >= 1


def test_refused_destinations_write_nothing(loaded, tmp_path):
    client, index, key = loaded
    run_op(index, make_op(0))
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(InvalidArgumentError, match="not an empty folder"):
        index.backup(full)
    with pytest.raises(InvalidArgumentError, match="not an empty folder"):
        index.backup(a_file)
    with pytest.raises(InvalidArgumentError, match="inside the index folder"):
        index.backup(index._core.folder / "inner")
    with pytest.raises(InvalidIndexNameError):
        index.backup(tmp_path / ".hidden")
    with pytest.raises(InvalidTypeError):
        index.backup(42)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert [p.name for p in full.iterdir()] == ["keep.txt"] and a_file.read_text() == "x"
    assert not (index._core.folder / "inner").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert index.backup(empty)["path"] == str(empty)  # an empty folder is taken
    assert (empty / "CONFIG").is_file()
    index.close()
    with pytest.raises(ClosedError):
        index.backup(tmp_path / "after-close")
    assert not (tmp_path / "after-close").exists()


def test_a_read_only_handle_refuses_backup(loaded, tmp_path):
    from lsmvec.errors import ReadOnlyError
    client, index, key = loaded
    run_op(index, make_op(0))
    with Client(client.path, read_only=True) as readers:
        reader = readers.load_index("live", key, read_only=True)
        with pytest.raises(ReadOnlyError):
            reader.backup(tmp_path / "from-reader")
    assert not (tmp_path / "from-reader").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_restore_copies_verifies_and_leaves_the_backup_alone(loaded, tmp_path):
    client, index, key = loaded
    acked = run_ops(index, range(80), [])
    report = index.backup(tmp_path / "bk")
    backup = Path(report["path"])

    def snapshot() -> dict[str, bytes]:
        return {str(p.relative_to(backup)): p.read_bytes() for p in backup.rglob("*") if p.is_file()}

    files = snapshot()
    with pytest.raises(WrongKeyError):
        restore(backup, tmp_path / "r" / "bad", generate_key())
    with pytest.raises(IndexNotFoundError):
        restore(tmp_path / "nothing", tmp_path / "r" / "bad", key)
    assert not (tmp_path / "r").exists()
    done = restore(backup, tmp_path / "r" / "restored", key)
    assert snapshot() == files  # the backup is not touched (not even a LOCK file)
    expected = oracle_state(acked, report["lsn"])
    assert done["count"] == len(expected)
    other, opened = open_copy(Path(done["path"]), key)
    with other:
        assert_holds(opened, expected)
    restored_seg = [p for p in Path(done["path"]).rglob("*") if p.is_file()]
    backup_inodes = {os.stat(backup / rel).st_ino for rel in files}
    assert not {p.stat().st_ino for p in restored_seg} & backup_inodes  # copies, not links


@pytest.mark.anyio
async def test_async_backup(tmp_path):
    from lsmvec import AsyncClient
    key = generate_key()
    acked = []
    async with AsyncClient(tmp_path / "data") as client:
        index = await client.create_index("a", key, dimension=DIM)
        for i in range(12):
            op = make_op(i)
            if op[0] == "delete":
                await index.delete(op[1])
            else:
                await index.upsert([{"id": a, "vector": v, "contents": c, "metadata": m}
                                    for a, v, c, m in zip(*op[1:])])
            acked.append((i, index.sync._core.wal.last_lsn))
        report = await index.backup(tmp_path / "bk" / "a")
    assert report["lsn"] == acked[-1][1]
    other, opened = open_copy(Path(report["path"]), key)
    with other:
        assert_holds(opened, oracle_state(acked, report["lsn"]))


# -- a writer process under load, killed with SIGKILL after its backup ---------------------------

WORKER = OPS_SOURCE + '''
import json, os, sys, threading
from pathlib import Path
from lsmvec import Client

root, dest, ack_path, key_hex, backup_at = sys.argv[1:6]
client = Client(root)
index = client.load_index("live", bytes.fromhex(key_hex))
wal = index._core.wal
ack = os.open(ack_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
started = threading.Event()

def take_backup():
    started.wait()
    report = index.backup(dest)
    tmp = dest + ".json.tmp"
    Path(tmp).write_text(json.dumps(report))
    os.rename(tmp, dest + ".json")

threading.Thread(target=take_backup, daemon=True).start()
for i in range(1_000_000):  # until killed
    run_op(index, make_op(i))
    os.write(ack, f"{i} {wal.last_lsn}\\n".encode())
    if i == int(backup_at):
        started.set()
'''


def test_backup_from_a_writer_process_killed_after_it_restores_to_the_oracle(tmp_path):
    key = generate_key()
    with Client(tmp_path / "data") as client:
        client.create_index("live", key, dimension=DIM, memtable_bytes=6_000,
                            wal_roll_bytes=4_000)
    dest, ack = tmp_path / "copies" / "bk", tmp_path / "acks"
    done = Path(str(dest) + ".json")
    child = subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "data"), str(dest),
                              str(ack), key.hex(), "150"], stderr=subprocess.PIPE)
    try:
        def acked() -> list[tuple[int, int]]:
            lines = ack.read_bytes().split(b"\n")[:-1] if ack.exists() else []
            return [tuple(map(int, line.split())) for line in lines]

        wait_for(lambda: done.exists() or child.poll() is not None, "the child's backup")
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        report = json.loads(done.read_text())
        # let it write on past the backup, then kill it mid-stream
        wait_for(lambda: (acked() or [(0, 0)])[-1][1] > report["lsn"] + 20
                 or child.poll() is not None, "writes after the backup")
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(DEADLINE_S)
    history = acked()
    assert [i for i, _lsn in history] == list(range(len(history)))
    assert history[150][1] <= report["lsn"] < history[-1][1]
    expected = oracle_state(history, report["lsn"])
    restored = restore(dest, tmp_path / "restored" / "live2", key)
    other, opened = open_copy(Path(restored["path"]), key)
    with other:
        assert_holds(opened, expected)
    # the killed writer's index reopens with every acknowledged write (and perhaps the one
    # call in flight at the kill: logged, not yet acknowledged)
    with Client(tmp_path / "data") as client:
        reopened = client.load_index("live", key)
        in_flight = [*history, (len(history), history[-1][1] + 1)]
        try:
            assert_holds(reopened, oracle_state(history, history[-1][1]))
        except AssertionError:
            assert_holds(reopened, oracle_state(in_flight, in_flight[-1][1]))
