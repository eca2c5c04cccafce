"""A really full disk: the index lives on a size-limited tmpfs mounted for the test (root
only; elsewhere tests/durability/test_io_errors.py covers ENOSPC through the injection layer).

Upserts (with background flushes and merges) run until the file system is full. The call that
meets the full disk raises StorageFullError; every acknowledged batch reads back and the
refused one left nothing; once space is freed, writes work again without a reopen; after a
reopen the state is the oracle's."""
from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from lsmvec import Client, generate_key
from lsmvec.errors import StorageError, StorageFullError

DIM = 32
BATCH = 200
SIZE_MB = 32
BALLAST_MB = 20


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "fs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root (ENOSPC injection covers the rest)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m,mode=0700", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def batch(n: int) -> tuple[list[str], np.ndarray, list[str]]:
    rng = np.random.default_rng(n)
    ids = [f"b{n}-{i}" for i in range(BATCH)]
    return ids, rng.standard_normal((BATCH, DIM)).astype(np.float32), [
        uuid.UUID(int=int(rng.integers(1 << 62))).hex * 8 for _ in range(BATCH)]


def check_state(index, oracle: dict[str, tuple[np.ndarray, str]], refused: list[str]) -> None:
    assert index.get_num_vectors() == len(oracle)
    assert sorted(index.list_ids()) == sorted(oracle)
    got = {it["id"]: it for it in index.get(list(oracle) + refused,
                                           include=["vector", "contents"])}
    assert set(got) == set(oracle)
    for item_id, (vector, contents) in oracle.items():
        np.testing.assert_array_equal(np.asarray(got[item_id]["vector"], np.float32), vector)
        assert got[item_id]["contents"] in (contents, contents.encode())


def reopen_and_check(folder: Path, name: str, key: bytes, oracle, refused: list[str]) -> None:
    with Client(folder) as client:
        index = client.load_index(name, key)
        check_state(index, oracle, refused)
        assert index.verify()["ok"]


def fill(index, oracle, start: int) -> tuple[int, list[str], StorageError]:
    """Upsert batches until one is refused; returns (next batch number, refused ids, error)."""
    n = start
    while True:
        ids, vectors, contents = batch(n)
        try:
            index.upsert([{"id": i, "vector": v, "contents": c}
                          for i, v, c in zip(ids, vectors, contents)])
        except StorageError as exc:
            return n + 1, ids, exc
        for i, v, c in zip(ids, vectors, contents):
            oracle[i] = (v, c)
        n += 1
        assert n < 10_000, "the file system never filled up"


def test_full_disk_refuses_cleanly_and_recovers_when_space_is_freed(small_fs: Path) -> None:
    ballast = small_fs / "ballast"
    ballast.write_bytes(os.urandom(BALLAST_MB << 20))
    key = generate_key()
    oracle: dict[str, tuple[np.ndarray, str]] = {}
    client = Client(small_fs / "db")
    index = client.create_index("full", key, dimension=DIM, memtable_bytes=1 << 20)
    n, refused, error = fill(index, oracle, 0)
    assert isinstance(error, StorageFullError), f"{type(error).__name__}: {error}"
    assert "No space" in str(error) or "full" in str(error).lower()
    check_state(index, oracle, refused)

    ballast.unlink()  # free space: writes work again, no reopen needed
    ids, vectors, contents = batch(n)
    index.upsert([{"id": i, "vector": v, "contents": c} for i, v, c in zip(ids, vectors, contents)])
    for i, v, c in zip(ids, vectors, contents):
        oracle[i] = (v, c)
    index.flush()
    check_state(index, oracle, refused)
    client.close()
    reopen_and_check(small_fs / "db", "full", key, oracle, refused)
    leftovers = [p.name for p in small_fs.rglob("*") if "tmp" in p.name]
    assert not leftovers, leftovers


@pytest.mark.parametrize("keep_mb", [21.5, 19, 17, 15, 13, 12, 0])
def test_a_flush_on_a_full_disk_raises_and_works_once_space_is_freed(small_fs: Path,
                                                                      keep_mb: float) -> None:
    """The log fits, the flush may not: 22 MB of ballast is freed (a flush needs about 1.1x
    what the log holds), then `keep_mb` of it is taken back, which moves where the flush runs
    out of space (segment files, the store commit) or lets it through."""
    ballast = small_fs / "ballast"
    ballast.write_bytes(os.urandom(22 << 20))
    key = generate_key()
    oracle: dict[str, tuple[np.ndarray, str]] = {}
    client = Client(small_fs / "db")
    index = client.create_index("full", key, dimension=DIM, memtable_bytes=256 << 20,
                                background_compaction=False)
    n, refused, error = fill(index, oracle, 0)
    assert isinstance(error, StorageFullError), f"{type(error).__name__}: {error}"
    ballast.unlink()
    ballast.write_bytes(os.urandom(int(keep_mb * (1 << 20))))
    try:
        index.flush()
    except StorageFullError:
        pass  # where it ran out varies with keep_mb: the segment files or the store commit
    check_state(index, oracle, refused)
    ballast.unlink()
    index.flush()
    check_state(index, oracle, refused)
    client.close()
    reopen_and_check(small_fs / "db", "full", key, oracle, refused)


def test_writers_held_back_by_a_failing_flusher_get_its_error_not_a_hang(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Backpressure waits for the background flusher; when every flush fails (a full disk),
    the waiting upsert flushes itself and raises StorageFullError instead of waiting forever,
    and writes go on once flushes succeed again."""
    import threading

    import lsmvec.db.jobs as maintenance
    real_build = maintenance.build_segment_folder
    failing = threading.Event()

    def build(*args, **kwargs):
        if failing.is_set():
            raise StorageFullError(28, "cannot write segment: No space left on device")
        return real_build(*args, **kwargs)

    monkeypatch.setattr(maintenance, "build_segment_folder", build)
    key = generate_key()
    oracle: dict[str, tuple[np.ndarray, str]] = {}
    client = Client(tmp_path / "db")
    index = client.create_index("bp", key, dimension=DIM, memtable_bytes=16 << 10)
    failing.set()
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(fill(index, oracle, 0)), daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "an upsert waited forever behind a failing flusher"
    n, refused, error = outcome[0]
    assert isinstance(error, StorageFullError)
    check_state(index, oracle, refused)
    failing.clear()
    for m in range(n, n + 3):
        ids, vectors, contents = batch(m)
        index.upsert([{"id": i, "vector": v, "contents": c} for i, v, c in zip(ids, vectors, contents)])
        oracle.update({i: (v, c) for i, v, c in zip(ids, vectors, contents)})
    check_state(index, oracle, refused)
    client.close()
    reopen_and_check(tmp_path / "db", "bp", key, oracle, refused)


@pytest.mark.slow
def test_close_succeeds_on_a_full_disk_and_the_log_keeps_everything(small_fs: Path) -> None:
    """The log is larger than the free space, so close() cannot flush it into a segment: it
    closes anyway (the log holds every acknowledged write), again after a reopen on a still
    full disk, and once space is freed the next close flushes."""
    key = generate_key()
    oracle: dict[str, tuple[np.ndarray, str]] = {}
    client = Client(small_fs / "db")
    index = client.create_index("full", key, dimension=DIM, memtable_bytes=256 << 20,
                                background_compaction=False)
    _n, refused, error = fill(index, oracle, 0)
    assert isinstance(error, StorageFullError)
    client.close()  # the flush fails for lack of space: logged, not raised
    for _ in range(2):  # still full: reopen, read, close cleanly again
        with Client(small_fs / "db") as again:
            check_state(again.load_index("full", key), oracle, refused)
    assert not list((small_fs / "db" / "full" / "segments").glob("seg-*"))
    wal = small_fs / "db" / "full" / "wal"
    assert sum(p.stat().st_size for p in wal.iterdir()) > (SIZE_MB // 2) << 20
    # The log itself fills the disk: make room by remounting the file system larger.
    subprocess.run(["mount", "-o", f"remount,size={4 * SIZE_MB}m", str(small_fs)], check=True)
    with Client(small_fs / "db") as again:
        check_state(again.load_index("full", key), oracle, refused)
    assert list((small_fs / "db" / "full" / "segments").glob("seg-*"))  # the close flushed
    reopen_and_check(small_fs / "db", "full", key, oracle, refused)
