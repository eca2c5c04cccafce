"""I/O errors injected into every operation: a typed error, and the state before or after the
operation -- never a part of it.

Two injectors, in-process:
- ``FaultFS`` replaces wal.fsio.FS and fails the Nth call of one method (open_for_append,
  write_all -- which first writes half its first buffer, a torn write --, fdatasync, fsync,
  fsync_dir, ftruncate, truncate_file, rename, remove, make_dirs), for N = 1, 2, ... until the
  operation completes without reaching an Nth call (SQLite's I/O-error loop);
- the failpoints of wal.failpoints.ERROR_SITES, with "eio" and "enospc", on their 1st, 2nd, ...
  hit until the operation completes.
Operations: upsert, delete, flush, compact, train, the first upsert of an index created without
a dimension (it rewrites CONFIG), create_index, load_index and close.

After each injected error: the call raised a StorageError subclass (StorageFullError for
ENOSPC, LogPoisonedError only after a failed sync) or absorbed the error and completed; the
in-process state is the state before or after the op (exactly "before" when an upsert / delete
raised a plain storage error: nothing was logged); after a failed log sync every later write
raises LogPoisonedError without calling fsync / fdatasync again, until reopen; otherwise a
write works at once. Then the real file system is put back, the client closed (if close raises,
the client is dropped; the process-wide registry must not keep the core) and a new one opened:
the state is before or after (after when the op completed), verify() is ok, no orphan segment
folders, and writes work.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import crash_worker as cw
import fault_worker as fw
from lsmvec.compaction.filenames import segment_dir_name
from lsmvec import Client, generate_key
from lsmvec import client as client_module
from lsmvec.errors import LogPoisonedError, StorageError, StorageFullError
from lsmvec.wal import failpoints, fsio

INDEX = "io"
MAX_N = 80
SYNCS = ("fdatasync", "fsync", "fsync_dir")
FS_FAULTS = (("open_for_append", errno.ENOSPC), ("write_all", errno.ENOSPC),
             ("write_all", errno.EIO), ("fdatasync", errno.EIO), ("fsync", errno.EIO),
             ("fsync_dir", errno.EIO), ("ftruncate", errno.EIO), ("truncate_file", errno.EIO),
             ("rename", errno.ENOSPC), ("remove", errno.EIO), ("make_dirs", errno.ENOSPC),
             ("mkdir", errno.ENOSPC), ("remove_tree", errno.EIO))
OPS = ("upsert", "delete", "flush", "compact", "train", "first_upsert", "create", "open", "close")
# Ops whose handle stays usable after the error (checked in-process before the reopen).
LIVE_OPS = ("upsert", "delete", "flush", "compact", "train", "first_upsert")


class FaultFS(fsio.FileSystem):
    """Counts every call and remembers which path each fd is; once armed, the n-th call of
    `method` raises OSError(err)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.fd_paths: dict[int, Path] = {}
        self.method: str | None = None
        self.n = self.err = 0
        self.fired: tuple[str, Path | None] | None = None

    def arm(self, method: str, n: int, err: int) -> None:
        self.method, self.n, self.err, self.fired = method, n, err, None
        self.calls.clear()

    def _call(self, name: str, target: Path | None = None) -> bool:
        self.calls[name] += 1
        return name == self.method and self.calls[name] == self.n and self.fired is None

    def _fail(self, name: str, target: Path | None) -> OSError:
        self.fired = (name, target)
        return OSError(self.err, f"injected {errno.errorcode[self.err]} in {name} #{self.n}")

    def open_for_append(self, path: Any, *, exclusive: bool) -> int:
        if self._call("open_for_append"):
            raise self._fail("open_for_append", Path(path))
        fd = super().open_for_append(path, exclusive=exclusive)
        self.fd_paths[fd] = Path(path)
        return fd

    def write_all(self, fd: int, buffers: Any) -> None:
        if self._call("write_all"):
            first = bytes(memoryview(buffers[0]).cast("B")) if buffers else b""
            os.write(fd, first[: len(first) // 2])  # a torn write: a prefix reached the file
            raise self._fail("write_all", self.fd_paths.get(fd))
        super().write_all(fd, buffers)

    def _fd_op(self, name: str, fd: int, *args: Any) -> None:
        if self._call(name):
            raise self._fail(name, self.fd_paths.get(fd))
        getattr(super(), name)(fd, *args)

    def fdatasync(self, fd: int) -> None:
        self._fd_op("fdatasync", fd)

    def fsync(self, fd: int) -> None:
        self._fd_op("fsync", fd)

    def ftruncate(self, fd: int, size: int) -> None:
        self._fd_op("ftruncate", fd, size)

    def close(self, fd: int) -> None:
        self.calls["close"] += 1
        self.fd_paths.pop(fd, None)
        super().close(fd)

    def _path_op(self, name: str, *paths: Any) -> None:
        if self._call(name):
            raise self._fail(name, Path(paths[0]))
        getattr(super(), name)(*paths)

    def fsync_dir(self, path: Any) -> None:
        self._path_op("fsync_dir", path)

    def truncate_file(self, path: Any, size: int) -> None:
        if self._call("truncate_file"):
            raise self._fail("truncate_file", Path(path))
        super().truncate_file(path, size)

    def rename(self, src: Any, dst: Any) -> None:
        self._path_op("rename", src, dst)

    def remove(self, path: Any) -> None:
        self._path_op("remove", path)

    def make_dirs(self, path: Any) -> None:
        self._path_op("make_dirs", path)

    def mkdir(self, path: Any, *, exist_ok: bool = False) -> None:
        if self._call("mkdir"):
            raise self._fail("mkdir", Path(path))
        super().mkdir(path, exist_ok=exist_ok)

    def remove_tree(self, path: Any) -> None:
        self._path_op("remove_tree", path)


# ----------------------------------------------------------------------------- the index

def _batch(tag: str, n: int, seed: int, ids: list[str] | None = None) -> cw.Op:
    rng = np.random.default_rng(seed)
    ids = ids or [f"r0-t0-b{tag}-i{i}" for i in range(n)]
    vectors = rng.standard_normal((len(ids), fw.DIM)).astype(np.float32)
    contents = tuple(f"{tag} {i}" if i % 2 else bytes([i % 256]) * 3 for i in range(len(ids)))
    metadata = tuple({"tag": tag, "i": i} for i in range(len(ids)))
    return cw.Op("new", tuple(ids), vectors, contents, metadata, "dicts")


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with fw.scratch(tmp_path_factory.mktemp("io")) as path:
        yield path


@pytest.fixture(scope="module")
def base(work_dir: Path) -> tuple[Path, bytes, dict]:
    """A closed index: three flushed segments (with dead rows), nothing in the log; and its state."""
    root, key = work_dir / "base" / "data", generate_key()
    with Client(root) as client:
        index = client.create_index(INDEX, key, dimension=fw.DIM, memtable_bytes=1 << 20,
                                    background_compaction=False)
        for b in range(3):
            cw.apply_op(index, _batch(f"seg{b}", 40, b))
            index.flush()
        index.delete([f"r0-t0-bseg{b}-i{i}" for b in range(3) for i in (1, 5)])
        index.flush()
    with Client(root) as client:
        state = fw.read_state(client.load_index(INDEX, key))
    return root, key, state


@dataclass
class Tally:
    """What one test injected and saw."""

    cases: int = 0
    injected: int = 0
    raised: Counter = field(default_factory=Counter)
    absorbed: Counter = field(default_factory=Counter)
    poisoned: int = 0
    close_raised: int = 0

    def line(self, name: str) -> str:
        return (f"io_errors[{name}]: {self.cases} runs, {self.injected} I/O errors injected, "
                f"raised {dict(self.raised)}, absorbed (op completed) {dict(self.absorbed)}, "
                f"poisoned logs {self.poisoned}, close raised {self.close_raised}; "
                f"partial ops 0, wrong states 0")


TOTAL = Tally()


def _with(state: dict, op: cw.Op | None) -> dict:
    out = dict(state)
    if op is not None:
        fw.apply_to_model(out, op)
    return out


@dataclass
class Run:
    """One operation under one armed fault, and what the checks need to know about it."""

    op: str
    durability: str
    fault: tuple  # ("fs", method, n, errno) | ("fp", site, action, skip)
    where: str = ""
    exc: BaseException | None = None
    fired: bool = False
    index_name: str = INDEX
    before: dict | None = None
    after: dict | None = None
    now: dict | None = None
    probe: cw.Op | None = None
    poisoned: bool = False


def _prepare(client: Client, run: Run, base_state: dict, key: bytes) -> Any:
    """Open (or create) what the op needs, with a memtable holding rows and tombstones."""
    if run.op == "create":
        run.index_name, run.before, run.after = "fresh", None, {}
        return None
    if run.op == "open":
        run.before = run.after = base_state
        return None
    if run.op == "first_upsert":
        run.index_name = "nodim"
        index = client.create_index("nodim", key, dimension=None, memtable_bytes=1 << 20,
                                    background_compaction=False)
        run.before = {}
        return index
    index = client.load_index(INDEX, key)
    cw.apply_op(index, _batch("prep", 10, 7))
    index.delete(["r0-t0-bseg0-i0", "r0-t0-bseg1-i2"])
    run.before = fw.read_state(index)
    return index


def _operation(client: Client, index: Any, run: Run, key: bytes) -> Callable[[], Any]:
    if run.op == "upsert":
        ids = [f"r0-t0-bup-i{i}" for i in range(6)] + ["r0-t0-bseg0-i3", "r0-t0-bprep-i4"]
        op = _batch("up", 0, 11, ids)
    elif run.op == "delete":
        op = cw.Op("delete", ("r0-t0-bseg1-i3", "r0-t0-bprep-i2", "r0-t0-ghost"))
    elif run.op == "first_upsert":
        op = _batch("first", 5, 3)
    else:
        op = None
    if run.op in ("upsert", "delete", "first_upsert"):
        run.after = _with(run.before, op)
        return lambda: cw.apply_op(index, op)
    if run.op in ("flush", "compact", "train"):
        run.after = run.before
        return getattr(index, run.op)
    if run.op == "close":
        run.after = run.before
        return index.close
    if run.op == "open":
        return lambda: client.load_index(INDEX, key)
    return lambda: client.create_index("fresh", key, dimension=fw.DIM, memtable_bytes=1 << 20,
                                       background_compaction=False)


def _check_raised(run: Run, fs: FaultFS) -> None:
    exc, where = run.exc, run.where
    err = fs.err if run.fault[0] == "fs" else (errno.ENOSPC if run.fault[2] == "enospc" else errno.EIO)
    assert isinstance(exc, StorageError), f"{where}: raised {type(exc).__name__}: {exc}"
    if isinstance(exc, LogPoisonedError):
        assert fs.fired is not None and fs.fired[0] in SYNCS, \
            f"{where}: LogPoisonedError without a failed sync: {exc}"
    elif err == errno.ENOSPC:
        assert isinstance(exc, StorageFullError), f"{where}: ENOSPC raised {type(exc).__name__}: {exc}"
    else:
        assert not isinstance(exc, StorageFullError), f"{where}: EIO raised StorageFullError"


def _check_live(run: Run, index: Any, fs: FaultFS) -> None:
    """In-process, right after the failure: before or after, never between; poisoned or not."""
    where = run.where
    run.now = now = fw.read_state(index)
    if run.exc is None:
        assert now == run.after, f"{where}: the op completed but the state is not the op's"
    elif run.op in ("upsert", "delete", "first_upsert") and not isinstance(run.exc, LogPoisonedError):
        assert now == run.before, f"{where}: a failed write changed the state"
    else:
        assert now in (run.before, run.after), f"{where}: state is neither before nor after"
    if run.op == "first_upsert":
        on_disk = json.loads((index._core.folder / "CONFIG").read_text())["dimension"]
        assert index.dimension == on_disk, (f"{where}: the index reports dimension "
                                            f"{index.dimension}, its CONFIG says {on_disk}")
    log_sync_failed = (fs.fired is not None and fs.fired[0] in ("fdatasync", "fsync")
                       and fs.fired[1] is not None and fs.fired[1].parent.name == "wal")
    syncs = fs.calls["fdatasync"] + fs.calls["fsync"]
    run.probe = _batch("probe", 2, 99)
    try:
        cw.apply_op(index, run.probe)
    except LogPoisonedError:
        run.poisoned, run.probe = True, None
    if run.poisoned:
        with pytest.raises(LogPoisonedError):
            index.delete(["r0-t0-bseg2-i7"])
        assert fs.calls["fdatasync"] + fs.calls["fsync"] == syncs, \
            f"{where}: a poisoned log called fsync / fdatasync again"
    else:
        assert not log_sync_failed, f"{where}: a failed log sync did not poison the log"
        assert not isinstance(run.exc, LogPoisonedError), f"{where}: poisoned, then not"


def _check_reopened(run: Run, data: Path, key: bytes, old_core: Any) -> None:
    """A new client: before or after (+ the probe), durable, verified, no orphans, writable."""
    where = run.where
    with Client(data, durability=run.durability) as client:
        if run.op == "create":
            if run.index_name not in client.list_indexes():
                assert run.exc is not None, f"{where}: create_index returned, no index listed"
                client.create_index(run.index_name, key, dimension=fw.DIM)
        index = client.load_index(run.index_name, key)
        assert old_core is None or index._core is not old_core, \
            f"{where}: the process-wide registry still holds the core of the failed client"
        state = fw.read_state(index)
        extra = _with({}, run.probe)
        if run.op == "create":
            allowed = [{}]
        elif run.exc is None or (run.now is not None and run.now == run.after != run.before):
            allowed = [run.after]  # completed, or visible in-process: must be durable
        elif run.op in ("upsert", "delete", "first_upsert") and not run.poisoned:
            allowed = [run.before]
        else:
            allowed = [run.before, run.after]
        allowed = [{**s, **extra} for s in allowed]
        assert state in allowed, f"{where}: after reopen the state is neither before nor after"
        report = index.verify()
        assert report["ok"], f"{where}: verify: {report['problems'][:3]}"
        seg_root = index._core.folder / "segments"
        on_disk = sorted(os.listdir(seg_root)) if seg_root.exists() else []
        named = sorted(segment_dir_name(s["id"]) for s in index.stats()["segments"])
        assert on_disk == named, f"{where}: segment folders {on_disk}, manifest {named}"
        index.upsert([{"id": "final", "vector": np.ones(fw.DIM, np.float32)}])
        assert index.get(["final"], include=["vector"])[0]["id"] == "final"


def run_case(base: tuple[Path, bytes, dict], work: Path, run: Run, tally: Tally) -> bool:
    """Run one op under one fault and check it. Returns whether the fault fired."""
    root, key, base_state = base
    data = work / "data"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(root, data)
    fs, real = FaultFS(), fsio.FS
    fsio.FS = fs
    old_core = None
    client = Client(data, durability=run.durability)
    try:
        index = _prepare(client, run, base_state, key)
        old_core = index._core if index is not None else None
        operation = _operation(client, index, run, key)
        kind, what, mode, n = run.fault
        label = errno.errorcode[mode] if kind == "fs" else mode
        run.where = f"{run.op} ({run.durability}) with {what} {label} #{n}"
        if kind == "fs":
            fs.arm(what, n, mode)
        else:
            failpoints.arm(what, mode, n)
        try:
            opened = operation()
        except Exception as exc:  # judged below: it must be a StorageError subclass
            run.exc, opened = exc, None
        run.fired = fs.fired is not None if kind == "fs" else failpoints.hits(what) > n
        fs.method = None
        failpoints.disarm()
        if opened is not None and run.op == "open":
            old_core = opened._core
        tally.cases += 1
        if run.fired:
            tally.injected += 1
            if run.exc is not None:
                _check_raised(run, fs)
                tally.raised[type(run.exc).__name__] += 1
            else:
                tally.absorbed[f"{what}"] += 1
        else:
            assert run.exc is None, f"{run.where}: no fault fired, yet it raised {run.exc!r}"
        if run.op in LIVE_OPS:
            _check_live(run, index, fs)
            tally.poisoned += run.poisoned
    except BaseException:
        fsio.FS = real
        with contextlib.suppress(Exception):  # leave no open core behind a failed check
            client.close()
        raise
    finally:
        fsio.FS = real
        failpoints.disarm()
    try:
        client.close()
    except Exception:  # a close after a failure may raise; the client is dropped
        tally.close_raised += 1
    folder = os.path.realpath(data / run.index_name)
    assert folder not in client_module._registry, \
        f"{run.where}: the process-wide registry keeps the core after close"
    _check_reopened(run, data, key, old_core)
    return run.fired


def _faults() -> list[tuple[str, str, int]]:
    """(kind, what, mode) of every injector; n / skip is added by the loop."""
    out = [("fs", method, err) for method, err in FS_FAULTS]
    return out + [("fp", site, action) for site in sorted(failpoints.ERROR_SITES)
                  for action in ("eio", "enospc")]


@pytest.mark.parametrize("op", OPS)
def test_injected_io_errors_leave_the_state_before_or_after(op: str, base, work_dir: Path,
                                                             record_property: Any) -> None:
    tally = Tally()
    durabilities = ("fsync", "os") if op in ("upsert", "delete", "flush") else ("fsync",)
    for durability in durabilities:
        for kind, what, mode in _faults():
            first = 1 if kind == "fs" else 0
            for n in range(first, first + MAX_N):
                run = Run(op, durability, (kind, what, mode, n))
                if not run_case(base, work_dir / f"case-{op}", run, tally):
                    break
            else:
                pytest.fail(f"{op}: still failing after {MAX_N} injected {what} errors")
    assert tally.injected > 0, f"{op}: no fault was ever reached"
    for name in ("cases", "injected", "poisoned", "close_raised"):
        setattr(TOTAL, name, getattr(TOTAL, name) + getattr(tally, name))
    TOTAL.raised.update(tally.raised)
    TOTAL.absorbed.update(tally.absorbed)
    record_property("io_error_summary", tally.line(op))
    print(tally.line(op))
    print(TOTAL.line("running total"))
