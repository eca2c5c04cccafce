"""Races between processes sharing one catalog folder (issue 15, defect 4).

A `Client(root)` collects the leftovers of crashed creates and deletes; it must never remove the
`.creating-*` folder of another process's create in flight. Two processes creating different
indexes at once must both succeed (structural changes wait for the catalog lock instead of
failing). A leftover of a creator that died is still collected.

Every child is a real process; the parent waits on its pipe lines with a deadline, never on a
fixed sleep.
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lsmvec import Client

DIM = 4
DEADLINE = 120.0  # seconds any single wait may take before the test fails

# A child that creates an index and pauses inside populate (after CONFIG is written into the
# `.creating-*` folder, before the store is made and the folder renamed in) until the parent
# writes "go" (or "die": SIGKILL itself there, leaving the temporary folder behind).
_PAUSED_CREATE = r"""
import os, signal, sys
import lsmvec.client as ec
from lsmvec import Client
root, name, keyhex = sys.argv[1:4]
original = ec.write_config
def paused(tmp, config, cipher):
    original(tmp, config, cipher)
    print("paused", tmp, flush=True)
    if sys.stdin.readline().strip() == "die":
        os.kill(os.getpid(), signal.SIGKILL)
ec.write_config = paused
with Client(root) as c:
    try:
        ix = c.create_index(name, bytes.fromhex(keyhex), dimension=4)
        ix.upsert([("from-" + name, [1.0, 2.0, 3.0, 4.0])])
    except Exception as exc:
        print("FAILED", type(exc).__name__, exc, flush=True)
    else:
        print("CREATED", flush=True)
"""

# A child that creates an index and reports the first time one of its flocks finds the lock
# held ("contended"), so the parent knows it is waiting for the catalog lock right now.
_CONTENDED_CREATE = r"""
import fcntl, sys
from lsmvec import Client
root, name, keyhex = sys.argv[1:4]
with Client(root) as c:
    original, told = fcntl.flock, []
    def spy(fd, op):
        try:
            return original(fd, op)
        except BlockingIOError:
            if not told:
                told.append(1)
                print("contended", flush=True)
            raise
    fcntl.flock = spy
    print("calling", flush=True)
    try:
        ix = c.create_index(name, bytes.fromhex(keyhex), dimension=4)
        ix.upsert([("from-" + name, [4.0, 3.0, 2.0, 1.0])])
    except Exception as exc:
        print("FAILED", type(exc).__name__, exc, flush=True)
    else:
        print("CREATED", flush=True)
"""

# A child that waits for "go", then creates several indexes and opens Clients in between.
_BURST = r"""
import sys
from lsmvec import Client
root, prefix, keyhex, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
print("ready", flush=True)
sys.stdin.readline()
try:
    for i in range(n):
        with Client(root) as c:  # its garbage collection runs while others create
            c.create_index(f"{prefix}{i}", bytes.fromhex(keyhex), dimension=4).upsert(
                [(f"{prefix}{i}", [1.0, 0.0, 0.0, float(i)])])
except Exception as exc:
    print("FAILED", type(exc).__name__, exc, flush=True)
else:
    print("CREATED", flush=True)
"""


class Child:
    """A child process whose stdout lines arrive in a queue (read by a thread)."""

    def __init__(self, script: str, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-c", script, *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # EOF

    def expect(self, prefix: str) -> str:
        """The next line; it must start with `prefix` (within DEADLINE seconds)."""
        try:
            line = self.lines.get(timeout=DEADLINE)
        except queue.Empty:
            raise AssertionError(f"no line {prefix!r} from the child within {DEADLINE} s") from None
        if line is None:
            self.proc.wait(timeout=DEADLINE)
            raise AssertionError(f"child exited ({self.proc.returncode}) before {prefix!r}: "
                                 f"{self.proc.stderr.read()}")
        assert line.startswith(prefix), f"expected {prefix!r}, got {line!r}"
        return line

    def send(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def finish(self) -> int:
        self.proc.stdin.close()
        return self.proc.wait(timeout=DEADLINE)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=DEADLINE)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass


def _leftovers(root: Path, prefix: str) -> list[str]:
    return sorted(e for e in os.listdir(root) if e.startswith(prefix))


@pytest.mark.parametrize("lock_file_removed", [False, True], ids=["lock-file", "lock-file-removed"])
def test_client_of_another_process_keeps_a_create_in_flight(data_dir, key, lock_file_removed):
    data_dir.mkdir()
    creator = Child(_PAUSED_CREATE, str(data_dir), "inflight", key.hex())
    try:
        tmp = Path(creator.expect("paused").split(" ", 1)[1])
        assert tmp.name.startswith(".creating-") and tmp.is_dir()
        if lock_file_removed:  # the folder flock still guards the catalog
            os.unlink(data_dir / ".catalog.lock")
        with Client(data_dir) as other:  # another process (this one) opens the folder meanwhile
            assert other.list_indexes() == []
        assert tmp.is_dir(), "the garbage collection removed another process's create in flight"
        creator.send("go")
        creator.expect("CREATED")
        assert creator.finish() == 0
    finally:
        creator.kill()
    assert _leftovers(data_dir, ".creating-") == []
    with Client(data_dir) as c:
        assert c.list_indexes() == ["inflight"]
        assert c.load_index("inflight", key).list_ids() == ["from-inflight"]


def test_two_processes_create_different_indexes_at_once(data_dir, key):
    data_dir.mkdir()
    first = Child(_PAUSED_CREATE, str(data_dir), "first", key.hex())
    second = None
    try:
        first.expect("paused")  # first holds the catalog lock mid-create
        second = Child(_CONTENDED_CREATE, str(data_dir), "second", key.hex())
        second.expect("calling")
        second.expect("contended")  # second's create found the catalog lock held...
        first.send("go")  # ...and must wait for it, not fail
        first.expect("CREATED")
        second.expect("CREATED")
        assert first.finish() == 0 and second.finish() == 0
    finally:
        first.kill()
        if second is not None:
            second.kill()
    with Client(data_dir) as c:
        assert sorted(c.list_indexes()) == ["first", "second"]
        assert c.load_index("first", key).list_ids() == ["from-first"]
        assert c.load_index("second", key).list_ids() == ["from-second"]
    assert _leftovers(data_dir, (".creating-", ".deleting-")) == []


def test_burst_of_creating_processes_all_succeed(data_dir, key):
    data_dir.mkdir()
    n_children, per_child = 4, 3
    children = [Child(_BURST, str(data_dir), f"p{j}-", key.hex(), str(per_child))
                for j in range(n_children)]
    try:
        for child in children:
            child.expect("ready")
        for child in children:
            child.send("go")
        for child in children:
            child.expect("CREATED")
            assert child.finish() == 0
    finally:
        for child in children:
            child.kill()
    want = sorted(f"p{j}-{i}" for j in range(n_children) for i in range(per_child))
    with Client(data_dir) as c:
        assert sorted(c.list_indexes()) == want
        for name in want:
            assert c.load_index(name, key).list_ids() == [name]


def test_leftovers_of_a_dead_creator_are_still_collected(data_dir, key):
    data_dir.mkdir()
    creator = Child(_PAUSED_CREATE, str(data_dir), "crashed", key.hex())
    try:
        tmp = Path(creator.expect("paused").split(" ", 1)[1])
        creator.send("die")  # SIGKILL inside populate: its flocks die with it
        assert creator.proc.wait(timeout=DEADLINE) == -signal.SIGKILL
    finally:
        creator.kill()
    assert tmp.is_dir() and (tmp / "CONFIG").is_file()
    doomed = data_dir / ".deleting-old-0123abcd"  # and a delete a crash interrupted
    (doomed / "wal").mkdir(parents=True)
    (doomed / "CONFIG").write_bytes(b"x" * 64)
    with Client(data_dir) as c:
        assert _leftovers(data_dir, (".creating-", ".deleting-")) == []
        assert c.list_indexes() == []
        c.create_index("crashed", key, dimension=DIM).upsert([("a", [1.0, 2.0, 3.0, 4.0])])
    with Client(data_dir) as c:
        assert c.load_index("crashed", key).list_ids() == ["a"]
