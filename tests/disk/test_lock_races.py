"""The index lock under hostile file-system changes, and delete_index's key (issue 15, 5 and 7b).

Removing (or replacing) an index's LOCK file while process A holds it must not let process B
in: B's open raises IndexLockedError, A's `LockFile.check()` raises, and once A is gone B opens
the index and sees every item A acknowledged. `delete_index` needs the key: without it, or
with a wrong one, the index is kept.

Children are real processes driven over pipes; every wait has a deadline, none is a fixed sleep.
"""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from lsmvec import AsyncClient, Client, generate_key
from lsmvec.errors import (ClosedError, IndexLockedError, InvalidArgumentError, StorageError,
                           WrongKeyError)
from lsmvec.disk.lockfile import LOCK_NAME, LockFile

from conftest import snapshot
from test_catalog_races import DEADLINE, Child

DIM = 4

# Holder A: opens the index, then obeys "upsert ID" (acknowledged with "ack ID" once upsert
# returned, i.e. durable) and "check" (reports what LockFile.check() did).
_HOLDER = r"""
import sys
from lsmvec import Client
root, keyhex = sys.argv[1:3]
c = Client(root)
ix = c.load_index("held", bytes.fromhex(keyhex))
print("open", flush=True)
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "upsert":
        ix.upsert([(arg, [float(len(arg)), 1.0, 2.0, 3.0], "c-" + arg, {"who": "A"})])
        print("ack", arg, flush=True)
    elif cmd == "check":
        try:
            ix._core._lock.check()
        except Exception as exc:
            print("raised", type(exc).__name__, str(exc).replace("\n", " "), flush=True)
        else:
            print("ok", flush=True)
"""

# Process B: tries to open (or delete) the index once and says what happened.
_OTHER = r"""
import sys
from lsmvec import Client
from lsmvec.errors import IndexLockedError
root, keyhex, what = sys.argv[1:4]
with Client(root) as c:
    try:
        if what == "delete":
            c.delete_index("held", bytes.fromhex(keyhex))
            print("DELETED")
        else:
            ix = c.load_index("held", bytes.fromhex(keyhex))
            print("OPENED", ",".join(sorted(ix.list_ids())))
    except IndexLockedError:
        print("LOCKED")
"""


def _other(data_dir: Path, key: bytes, what: str = "open") -> str:
    out = subprocess.run([sys.executable, "-c", _OTHER, str(data_dir), key.hex(), what],
                         capture_output=True, text=True, timeout=DEADLINE)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _tamper(lock: Path, how: str) -> None:
    if how == "unlink":
        os.unlink(lock)
    else:  # an editor-style replace: a new file renamed over it
        fresh = lock.with_name("LOCK.new")
        fresh.write_bytes(b"")
        os.rename(fresh, lock)


@pytest.mark.parametrize("how", ["unlink", "replace"])
def test_removed_lock_file_lets_no_second_writer_in(data_dir, key, how):
    with Client(data_dir) as c:
        c.create_index("held", key, dimension=DIM).upsert([("before", [0.0, 0.0, 0.0, 1.0])])
    acked = ["before"]
    holder = Child(_HOLDER, str(data_dir), key.hex())
    try:
        holder.expect("open")
        for i in range(5):
            holder.send(f"upsert a{i}")
            acked.append(holder.expect("ack").split()[1])

        _tamper(data_dir / "held" / LOCK_NAME, how)
        assert _other(data_dir, key) == "LOCKED"            # B may not open it...
        assert _other(data_dir, key, "delete") == "LOCKED"  # ...nor delete it
        holder.send("check")
        line = holder.expect("raised")
        assert line.startswith("raised StorageError"), line
        assert "was removed or replaced while this process held it" in line, line
        assert "reopen the index" in line, line

        os.kill(holder.proc.pid, signal.SIGKILL)  # A goes away without a clean close
        assert holder.proc.wait(timeout=DEADLINE) == -signal.SIGKILL
    finally:
        holder.kill()
    assert _other(data_dir, key) == "OPENED " + ",".join(sorted(acked))
    with Client(data_dir) as c:
        ix = c.load_index("held", key)
        assert sorted(ix.list_ids()) == sorted(acked)
        items = {it["id"]: it for it in ix.get(acked[1:], include=["contents", "metadata"])}
        assert all(items[i]["contents"] == b"c-" + i.encode() and items[i]["metadata"] == {"who": "A"}
                   for i in acked[1:])
        ix._core._lock.check()  # the new holder's lock is sound


def test_lock_check_in_process(tmp_path):
    folder = tmp_path / "ix"
    folder.mkdir()
    lock = LockFile(folder / LOCK_NAME, "index 'ix'")
    lock.check()
    with pytest.raises(IndexLockedError):  # the folder is flocked: a second lock is refused
        LockFile(folder / LOCK_NAME, "index 'ix'")
    os.unlink(folder / LOCK_NAME)
    with pytest.raises(IndexLockedError):  # even with LOCK gone
        LockFile(folder / LOCK_NAME, "index 'ix'")
    with pytest.raises(StorageError, match="removed or replaced"):
        lock.check()
    (folder / LOCK_NAME).write_bytes(b"")
    with pytest.raises(StorageError):  # sticky, also once a LOCK file is back
        lock.check()
    lock.release()
    lock.release()
    again = LockFile(folder / LOCK_NAME, "index 'ix'")
    again.check()
    again.release()
    with pytest.raises(ClosedError):
        again.check()


def test_lock_file_replaced_between_open_and_flock_is_retried(tmp_path, monkeypatch):
    folder = tmp_path / "ix"
    folder.mkdir()
    original, swapped = fcntl.flock, []

    def racing_flock(fd, op):
        target = folder / LOCK_NAME
        if not swapped and target.exists() and os.path.samestat(os.fstat(fd), os.stat(target)):
            swapped.append(1)  # another process replaces LOCK right before our flock
            fresh = folder / "LOCK.new"
            fresh.write_bytes(b"")
            os.rename(fresh, folder / LOCK_NAME)
        return original(fd, op)

    monkeypatch.setattr(fcntl, "flock", racing_flock)
    lock = LockFile(folder / LOCK_NAME, "index 'ix'")
    assert swapped
    lock.check()  # it locked the file that is at the path now, not the replaced one
    lock.release()


# ----------------------------------------------------------------------------- delete_index's key

def _assert_kept(data_dir: Path, key: bytes, before) -> None:
    with Client(data_dir) as c:
        assert c.list_indexes() == ["keep"]
        assert snapshot(c.load_index("keep", key)) == before


def _make(data_dir: Path, key: bytes):
    with Client(data_dir) as c:
        ix = c.create_index("keep", key, dimension=DIM)
        ix.upsert([("a", [1.0, 2.0, 3.0, 4.0], "text", {"m": 1}), ("b", [4.0, 3.0, 2.0, 1.0])])
        return snapshot(ix)


def test_client_delete_index_requires_the_key(data_dir, key):
    before = _make(data_dir, key)
    with Client(data_dir) as c:
        ix = c.load_index("keep", key)
        with pytest.raises(TypeError):
            c.delete_index("keep")
        with pytest.raises(InvalidArgumentError, match="index_key is required"):
            c.delete_index("keep", None)
        with pytest.raises(WrongKeyError):
            c.delete_index("keep", generate_key())
        assert snapshot(ix) == before  # nothing changed, the open handle still works
    _assert_kept(data_dir, key, before)


def test_index_delete_index_checks_a_given_key(data_dir, key):
    before = _make(data_dir, key)
    with Client(data_dir) as c:
        ix = c.load_index("keep", key)
        with pytest.raises(WrongKeyError):
            ix.delete_index(index_key=generate_key())
        assert snapshot(ix) == before
        ix.close()
        with pytest.raises(ClosedError):  # a closed handle no longer vouches for the key
            ix.delete_index()
    _assert_kept(data_dir, key, before)
    with Client(data_dir) as c:
        c.load_index("keep", key).delete_index(index_key=key)
        assert c.list_indexes() == []


def test_async_client_delete_index_requires_the_key(data_dir, key):
    before = _make(data_dir, key)

    async def main() -> None:
        async with AsyncClient(data_dir) as c:
            with pytest.raises(TypeError):
                await c.delete_index("keep")
            with pytest.raises(WrongKeyError):
                await c.delete_index("keep", generate_key())

    anyio.run(main)
    _assert_kept(data_dir, key, before)


def test_a_writer_whose_lock_file_vanished_refuses_writes(data_dir, key):
    """In-process, through the public API: once LOCK is gone, every write and maintenance call
    raises before anything is logged; reads go on; a reopen gives back what was acknowledged."""
    with Client(data_dir) as client:
        ix = client.create_index("held", key, dimension=DIM)
        ix.upsert([("a", [1.0, 2.0, 3.0, 4.0])])
        os.unlink(data_dir / "held" / LOCK_NAME)
        for call in (lambda: ix.upsert([("b", [1.0, 1.0, 1.0, 1.0])]), lambda: ix.delete(["a"]),
                     ix.flush, ix.compact, ix.train):
            with pytest.raises(StorageError, match="removed or replaced"):
                call()
        assert ix.list_ids() == ["a"]
    with Client(data_dir) as client:
        ix = client.load_index("held", key)
        assert ix.list_ids() == ["a"]
        ix.upsert([("b", [1.0, 1.0, 1.0, 1.0])])  # a new LOCK, a new holder: writes again
        assert sorted(ix.list_ids()) == ["a", "b"]
