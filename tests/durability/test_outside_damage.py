"""Damage from outside the happy path (issue 15): a rolled-back store, missing or cut log files,
a wrong key beside a missing LOCK. Each case ends in the exact acknowledged state or a typed
error, and a refused open changes no file.

"Crashed" indexes are made by a child process that writes and then leaves with os._exit: no
close, no CLOSE record, exactly what kill -9 leaves (the page cache survives either way here).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lsmvec import Client
from lsmvec.errors import CorruptionError, WrongKeyError
from lsmvec.wal import list_logs

from damage_cases import snapshot

DIM = 8
ROOT = Path(__file__).resolve().parents[2]


def rows(lo: int, hi: int) -> list[tuple[str, np.ndarray]]:
    return [(f"id{i}", np.random.default_rng(i).standard_normal(DIM).astype(np.float32))
            for i in range(lo, hi)]


def state(index) -> dict[str, bytes]:
    ids = index.list_ids()
    return {it["id"]: np.asarray(it["vector"], np.float32).tobytes()
            for it in index.get(ids, include=["vector"])}


def expected(*ranges: tuple[int, int]) -> dict[str, bytes]:
    return {i: v.tobytes() for lo, hi in ranges for i, v in rows(lo, hi)}


def crashed_writer(root: Path, key: bytes, batches: list[tuple[int, int]], **options) -> None:
    """A child process creates (or opens) index "a", upserts `batches` and dies without closing."""
    code = f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
from lsmvec import Client
from test_outside_damage import rows
client = Client({str(root)!r})
key = bytes.fromhex({key.hex()!r})
if "a" in client.list_indexes():
    index = client.load_index("a", key)
else:
    index = client.create_index("a", key, dimension={DIM}, **{options!r})
for lo, hi in {batches!r}:
    index.upsert(rows(lo, hi))
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def load(root: Path, key: bytes):
    client = Client(root)
    try:
        return client, client.load_index("a", key)
    except BaseException:
        client.close()
        raise


def assert_refused(root: Path, key: bytes, match: str) -> None:
    """The open raises CorruptionError and changes no file."""
    before = snapshot(root / "a")
    with pytest.raises(CorruptionError, match=match):
        load(root, key)
    assert snapshot(root / "a") == before


def verify_exit(root: Path, key: bytes) -> int:
    env = {**os.environ, "LSMVEC_KEY": key.hex(), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "lsmvec.tools", "verify", str(root / "a")], env=env,
                          capture_output=True, timeout=120).returncode


# ------------------------------------------------------------------- defect 1: stale store

def test_a_restored_older_store_is_refused_and_deletes_no_segment(tmp_path, key):
    root = tmp_path / "r"
    with Client(root) as client:
        client.create_index("a", key, dimension=DIM).upsert(rows(0, 20))
    backup = (root / "a" / "store" / "data.mdb").read_bytes()
    with Client(root) as client:
        client.load_index("a", key).upsert(rows(20, 40))
    current = (root / "a" / "store" / "data.mdb").read_bytes()
    segments = sorted(os.listdir(root / "a" / "segments"))
    assert len(segments) == 2
    (root / "a" / "store" / "data.mdb").write_bytes(backup)
    assert_refused(root, key, "missing")
    assert verify_exit(root, key) == 4
    assert sorted(os.listdir(root / "a" / "segments")) == segments  # nothing deleted
    (root / "a" / "store" / "data.mdb").write_bytes(current)
    client, index = load(root, key)
    with client:
        assert state(index) == expected((0, 40))


def test_a_store_never_opened_beside_written_files_is_refused(tmp_path, key):
    """data.mdb as create_index first writes it (no writer has opened it), restored over an
    index that holds log records and segments."""
    from lsmvec.disk.config import read_config
    from lsmvec.db.version import create_store
    root = tmp_path / "r"
    with Client(root) as client:
        client.create_index("a", key, dimension=DIM).upsert(rows(0, 10))
    crashed_writer(root, key, [(10, 20)])
    _config, cipher = read_config(root / "a", key)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    create_store(fresh, cipher).close()
    shutil.copyfile(fresh / "store" / "data.mdb", root / "a" / "store" / "data.mdb")
    assert_refused(root, key, "older than the files beside it")
    assert_refused(root, key, "older than the files beside it")  # and again: nothing was changed


def test_a_rolled_back_meta_page_gives_the_exact_state_or_an_error(tmp_path, key):
    """LMDB falls back to the previous meta page when the newest one is damaged (its txnid
    zeroed): the store then describes its previous transaction."""
    root = tmp_path / "r"
    with Client(root) as client:
        client.create_index("a", key, dimension=DIM).upsert(rows(0, 20))
    with Client(root) as client:
        client.load_index("a", key).upsert(rows(20, 40))
    data = root / "a" / "store" / "data.mdb"
    raw = bytearray(data.read_bytes())
    psize = 4096
    # page header (16), then MDB_meta: magic + version (8), address, mapsize, dbs[2] (2 x 48),
    # last_pg: mm_txnid follows at 144
    txnid_at = 16 + 8 + 8 + 8 + 2 * 48 + 8
    txns = [int.from_bytes(raw[p * psize + txnid_at:p * psize + txnid_at + 8], "little")
            for p in (0, 1)]
    newest = int(np.argmax(txns))
    raw[newest * psize + txnid_at:newest * psize + txnid_at + 8] = bytes(8)
    data.write_bytes(bytes(raw))
    segments = sorted(os.listdir(root / "a" / "segments"))
    before = snapshot(root / "a")
    try:
        client, index = load(root, key)
    except CorruptionError:
        assert snapshot(root / "a") == before
        assert sorted(os.listdir(root / "a" / "segments")) == segments
        return
    with client:
        assert state(index) == expected((0, 40))


# ------------------------------------------------------------------- defect 3: the log

def test_a_missing_oldest_log_of_a_never_flushed_index_is_corruption(tmp_path, key):
    root = tmp_path / "r"
    crashed_writer(root, key, [(i, i + 10) for i in range(0, 200, 10)],
                   wal_roll_bytes=2000, background_compaction=False)
    logs = list_logs(root / "a" / "wal")
    assert len(logs) > 2 and logs[0][0] == 1
    logs[0][1].unlink()
    assert_refused(root, key, "missing")
    assert verify_exit(root, key) == 4


def test_an_emptied_log_folder_after_a_crash_is_corruption(tmp_path, key):
    root = tmp_path / "r"
    crashed_writer(root, key, [(0, 50), (50, 100)])
    for _lsn, path in list_logs(root / "a" / "wal"):
        path.unlink()
    assert_refused(root, key, "missing")
    assert verify_exit(root, key) == 4


@pytest.mark.parametrize("damage", ["delete", "truncate", "cut_record"])
def test_a_damaged_newest_log_of_a_cleanly_closed_index_is_corruption(tmp_path, key, damage):
    root = tmp_path / "r"
    with Client(root) as client:
        index = client.create_index("a", key, dimension=DIM, background_compaction=False)
        index.upsert(rows(0, 30))
    newest = list_logs(root / "a" / "wal")[-1][1]
    if damage == "delete":
        newest.unlink()
    elif damage == "truncate":
        newest.write_bytes(b"")
    else:
        with open(newest, "r+b") as f:
            f.truncate(os.path.getsize(newest) - 1)
    assert_refused(root, key, "closed cleanly|missing|damaged")
    assert verify_exit(root, key) == 4


def test_a_cleanly_closed_log_reopens_exactly(tmp_path, key):
    """The control: nothing damaged, three clean cycles, then a crash, then a clean open."""
    root = tmp_path / "r"
    with Client(root) as client:
        client.create_index("a", key, dimension=DIM).upsert(rows(0, 10))
    for lo in (10, 20):
        client, index = load(root, key)
        with client:
            index.upsert(rows(lo, lo + 10))
    crashed_writer(root, key, [(30, 40)])
    client, index = load(root, key)
    with client:
        assert state(index) == expected((0, 40))
    assert verify_exit(root, key) == 0


def test_a_missing_middle_log_before_an_empty_newest_is_corruption(tmp_path, key):
    """The newest file is empty (the log rolled right after the last write, then a crash);
    losing the one before it must read as corruption (exit 4), not as a bad argument."""
    root = tmp_path / "r"
    crashed_writer(root, key, [(i, i + 10) for i in range(0, 100, 10)],
                   wal_roll_bytes=200, background_compaction=False)
    logs = list_logs(root / "a" / "wal")
    assert logs[-1][1].stat().st_size == 0 and logs[-2][1].stat().st_size > 0
    logs[-2][1].unlink()
    assert_refused(root, key, "missing")
    assert verify_exit(root, key) == 4


def test_a_crashed_index_keeps_every_acknowledged_batch(tmp_path, key):
    root = tmp_path / "r"
    crashed_writer(root, key, [(i, i + 10) for i in range(0, 100, 10)],
                   wal_roll_bytes=500, background_compaction=False)
    client, index = load(root, key)
    with client:
        assert state(index) == expected((0, 100))


# ------------------------------------------------------------------- defect 7: the key first

def test_a_wrong_key_open_changes_no_file(tmp_path, key):
    root = tmp_path / "r"
    with Client(root) as client:
        client.create_index("a", key, dimension=DIM).upsert(rows(0, 5))
    (root / "a" / "LOCK").unlink()
    before = snapshot(root / "a")
    with Client(root) as client:
        with pytest.raises(WrongKeyError):
            client.load_index("a", bytes(reversed(key)))
    assert snapshot(root / "a") == before and not (root / "a" / "LOCK").exists()


def test_a_lost_config_is_corruption_not_an_unknown_index(tmp_path, key):
    root = tmp_path / "r"
    with Client(root) as client:
        client.create_index("a", key, dimension=DIM).upsert(rows(0, 5))
    config = (root / "a" / "CONFIG").read_bytes()
    (root / "a" / "CONFIG").unlink()
    assert_refused(root, key, "CONFIG is missing")
    assert verify_exit(root, key) == 4
    with Client(root) as client, pytest.raises(CorruptionError):
        client.delete_index("a", key)
    (root / "a" / "CONFIG").write_bytes(config)
    client, index = load(root, key)
    with client:
        assert state(index) == expected((0, 5))
