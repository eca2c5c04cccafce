"""The child process of the fault-injection tests, and the oracle those tests share.

Modes (the first argument); the index key is passed in hex in the environment (KEY_ENV):

  failpoint DATA_DIR ACK_FILE --seed S [--durability D] [--max-ops N]
      One sequential history: op k is ``planned_op(seed, k)`` (upserts / deletes from
      crash_worker.make_op, with flush / compact / train at fixed periods). The failpoint armed
      through LSMVEC_FAILPOINTS (read when ``wal`` is imported) SIGKILLs this process.
  soak DATA_DIR ACK_FILE --seed S --round R --sync-threads A --async-tasks B [--durability D]
       [--maintenance flush,compact,train]
      A threads on the sync Index and B tasks on an AsyncIndex (one asyncio loop), all on the
      same open index; history h runs ``crash_worker.make_op(seed, R, h, k, maintenance)``.

After an op RETURNS its history appends ``"<history> <op> <kind>"`` to the ack file with one
os.write on an O_APPEND descriptor (crash_worker's protocol: the page cache survives SIGKILL, a
torn last line has no newline and does not count). The corruption fuzz's child is
tests/durability/test_corruption_fuzz.py itself, run as a script.

The oracle (``judge``) takes what a reopened index holds and the histories, and COUNTS every
violation instead of stopping at the first, so the tests can report exact figures.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import crash_worker as cw

KEY_ENV = "LSMVEC_FAULT_KEY"
INDEX_NAME = "faulty"
DIM = cw.DIM
PERIODS = (("train", 41), ("compact", 23), ("flush", 9))
"""Op k of the failpoint workload is `kind` when (k + 1) % period == 0 (first match wins)."""
SMALL_MEMTABLE = 20_000
"""memtable_bytes of the fault tests: a freeze every batch or two, so flushes and merges (and
their failpoints) come early and often."""
Value = tuple[bytes, "bytes | None", dict]  # (float32 vector bytes, contents, metadata)


# ----------------------------------------------------------------------------- workloads

@contextlib.contextmanager
def scratch(fallback: Path) -> Iterator[Path]:
    """A temporary folder on tmpfs (/dev/shm) when there is one, else `fallback`. These tests
    make the disk fail (or die with the page cache intact) themselves: real fsyncs would only
    make them slower."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield fallback
        return
    path = Path(tempfile.mkdtemp(prefix="lsmvec-fault-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


FORK_GUARD = threading.Lock()
"""A parent running trials in threads holds this while it spawns a child and while it has an
index open: a child forked while another thread holds an index's LOCK keeps a copy of that
descriptor (and so the flock) until it execs, and a reopen right then would see the index as
locked by another process."""


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen:
    """subprocess.Popen under FORK_GUARD (it returns once the child has exec'd)."""
    with FORK_GUARD:
        return subprocess.Popen(cmd, **kwargs)


def planned_op(seed: int, k: int) -> cw.Op:
    """Op k of the failpoint workload (history (0, 0)): a pure function of (seed, k)."""
    for kind, period in PERIODS:
        if (k + 1) % period == 0:
            return cw.Op(kind)
    return cw.make_op(seed, 0, 0, k)


def create_index(data_dir: str | os.PathLike, key: bytes, *, durability: str = "fsync",
                 **options: Any) -> None:
    """Create INDEX_NAME (euclidean, DIM) with the fault tests' options, and close it."""
    from lsmvec import Client
    settings = {"memtable_bytes": SMALL_MEMTABLE, "background_compaction": False, **options}
    with FORK_GUARD, Client(data_dir, durability=durability) as client:
        client.create_index(INDEX_NAME, key, dimension=DIM, metric="euclidean", **settings)


class _CallRecorder:
    """Stands in for an Index so crash_worker.apply_op's call (form and arguments) can be
    replayed on an AsyncIndex."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


async def apply_op_async(aindex: Any, op: cw.Op) -> None:
    """crash_worker.apply_op on an AsyncIndex: the very same call, awaited."""
    recorder = _CallRecorder()
    cw.apply_op(recorder, op)
    (name, args, kwargs), = recorder.calls
    await getattr(aindex, name)(*args, **kwargs)


def run_parallel(calls: list[tuple[Any, tuple]], workers: int = 2) -> list[Any]:
    """Run calls `workers` at a time (one child per core); the first failure cancels the rest."""
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(fn, *args) for fn, args in calls]
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- the oracle

def apply_to_model(model: dict[str, Value], op: cw.Op) -> None:
    if op.kind in ("new", "overwrite"):
        for row, item_id in enumerate(op.ids):
            vec, contents, metadata = cw.expected_item(op, row)
            model[item_id] = (np.asarray(vec, np.float32).tobytes(), contents, metadata)
    elif op.kind == "delete":
        for item_id in op.ids:
            model.pop(item_id, None)


def model_after(ops: list[cw.Op]) -> dict[str, Value]:
    model: dict[str, Value] = {}
    for op in ops:
        apply_to_model(model, op)
    return model


def value_of(item: dict[str, Any], dim: int | None = None) -> Value:
    vec = np.asarray(item["vector"], dtype=np.float32)
    if dim is None:
        assert vec.ndim == 1 and len(vec) > 0, f"{item['id']}: vector shape {vec.shape}"
    else:
        assert vec.shape == (dim,), f"{item['id']}: vector shape {vec.shape}"
    return vec.tobytes(), item.get("contents"), item.get("metadata") or {}


def read_state(index: Any, dim: int | None = None) -> dict[str, Value]:
    """Every live item; asserts list_ids, get and get_num_vectors agree (and, given `dim`,
    that every vector has that length)."""
    ids = index.list_ids()
    assert len(ids) == len(set(ids)), "list_ids returned duplicates"
    items = index.get(ids)
    assert [it["id"] for it in items] == ids, "get(list_ids()) did not return every live id"
    assert index.get_num_vectors() == len(ids), "get_num_vectors disagrees with list_ids"
    return {it["id"]: value_of(it, dim) for it in items}


@dataclass
class History:
    """One sequential history: the ops it saw acknowledged, and the one in flight (or None)."""

    acked: list[cw.Op]
    inflight: cw.Op | None


@dataclass
class Verdict:
    """Violations found by `judge` (all must be 0)."""

    lost: int = 0         # acknowledged items missing, or holding another value
    resurrected: int = 0  # ids an acknowledged delete removed, present again
    partial: int = 0      # in-flight batches applied in part
    wrong: int = 0        # in-flight items holding a value no op wrote
    strays: int = 0       # ids nobody wrote
    checked_items: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.resurrected or self.partial or self.wrong or self.strays)

    def add(self, other: "Verdict") -> None:
        for name in ("lost", "resurrected", "partial", "wrong", "strays", "checked_items"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.details += other.details

    def summary(self) -> str:
        return (f"lost={self.lost} resurrected={self.resurrected} partial={self.partial} "
                f"wrong={self.wrong} strays={self.strays}")


def _judge_history(mine: dict[str, Value], history: History, where: str) -> Verdict:
    verdict = Verdict()
    acked = model_after(history.acked)
    deleted = {i for op in history.acked if op.kind == "delete" for i in op.ids} - acked.keys()
    touched = set(history.inflight.ids) if history.inflight is not None else set()
    after = dict(acked)
    if history.inflight is not None:
        apply_to_model(after, history.inflight)
    verdict.checked_items = len(acked)
    for item_id in sorted((acked.keys() | mine.keys()) - touched):
        want, got = acked.get(item_id), mine.get(item_id)
        if want == got:
            continue
        if want is not None:
            verdict.lost += 1
            verdict.details.append(f"{where}: acknowledged {item_id} "
                                   f"{'missing' if got is None else 'changed'}")
        elif item_id in deleted:
            verdict.resurrected += 1
            verdict.details.append(f"{where}: deleted {item_id} is back")
        else:
            verdict.strays += 1
            verdict.details.append(f"{where}: stray {item_id}")
    rows = [(i, mine.get(i), acked.get(i), after.get(i)) for i in sorted(touched)]
    if all(g == a for _i, g, a, _b in rows) or all(g == b for _i, g, _a, b in rows):
        return verdict
    if all(g in (a, b) for _i, g, a, b in rows):
        verdict.partial += 1
        verdict.details.append(f"{where}: in-flight {history.inflight.kind} of {len(rows)} ids "
                               f"applied in part")
        return verdict
    for item_id, got, want_a, want_b in rows:
        if got in (want_a, want_b):
            continue
        if want_a is not None:
            verdict.lost += 1
        else:
            verdict.wrong += 1
        verdict.details.append(f"{where}: in-flight {item_id} holds a value no op wrote")
    return verdict


def judge(state: dict[str, Value], histories: dict[tuple[int, int], History],
          extra: dict[str, Value] | None = None) -> Verdict:
    """Per history (ids r<round>-t<history>-...): the state must equal the acknowledged one, or
    the acknowledged one plus the whole in-flight op. `extra` are items the parent wrote."""
    verdict = Verdict()
    by_history: dict[tuple[int, int], dict[str, Value]] = {key: {} for key in histories}
    extra = extra or {}
    for item_id, value in state.items():
        parsed = cw.parse_id(item_id)
        if item_id in extra:
            if extra[item_id] != value:
                verdict.lost += 1
                verdict.details.append(f"the parent's {item_id} changed")
        elif parsed is not None and parsed[:2] in by_history:
            by_history[parsed[:2]][item_id] = value
        else:
            verdict.strays += 1
            verdict.details.append(f"stray {item_id}")
    for item_id in extra.keys() - state.keys():
        verdict.lost += 1
        verdict.details.append(f"the parent's {item_id} is missing")
    for key, history in histories.items():
        verdict.add(_judge_history(by_history[key], history, f"history {key}"))
    return verdict


def check_queries(index: Any, state: dict[str, Value], seed: int = 0) -> int:
    """Exact search (untrained data) must match brute force over `state`. Returns queries run."""
    from conftest import assert_matches_oracle
    if not state or index.is_trained():
        return 0
    model = {i: np.frombuffer(v[0], dtype=np.float32) for i, v in state.items()}
    queries = np.random.default_rng(seed).standard_normal((3, DIM)).astype(np.float32)
    for q in queries:
        assert_matches_oracle(index.query(q, top_k=10), model, q, "euclidean", 10,
                              context="query after recovery")
    return len(queries)


def read_acks(path: str | os.PathLike, n_histories: int) -> tuple[str, list[list[str]]]:
    """(phase, per history the kinds of its acked ops in op order) from an ack file; phase is
    startup | open | workload (where the child was when it died)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        data = b""
    phase, acked = "startup", [[] for _ in range(n_histories)]
    for raw in data.split(b"\n")[:-1]:  # the last piece has no newline: torn or empty
        line = raw.decode()
        if line == cw.MARK_OPENING:
            phase = "open"
        elif line == cw.MARK_OPENED:
            phase = "workload"
        elif line != "done":
            h, k, kind = line.split()
            assert int(k) == len(acked[int(h)]), f"history {h} acked op {k} out of order"
            acked[int(h)].append(kind)
    return phase, acked


# ----------------------------------------------------------------------------- the child

def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("failpoint", "soak"))
    parser.add_argument("data_dir")
    parser.add_argument("ack_file")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--round", type=int, default=0)
    parser.add_argument("--durability", choices=("fsync", "os"), default="fsync")
    parser.add_argument("--max-ops", type=int, default=10 ** 9)
    parser.add_argument("--sync-threads", type=int, default=1)
    parser.add_argument("--async-tasks", type=int, default=0)
    parser.add_argument("--maintenance", default="")
    return parser.parse_args(argv)


def _fail() -> None:
    sys.stderr.write(traceback.format_exc())
    sys.stderr.flush()
    os._exit(3)


def _run_failpoint(args: argparse.Namespace, key: bytes, ack) -> None:
    from lsmvec import Client
    client = Client(args.data_dir, durability=args.durability)
    ack(cw.MARK_OPENING)
    index = client.load_index(INDEX_NAME, key)
    ack(cw.MARK_OPENED)
    for k in range(args.max_ops):
        op = planned_op(args.seed, k)
        cw.apply_op(index, op)
        ack(f"0 {k} {op.kind}")
    client.close()


def _run_soak(args: argparse.Namespace, key: bytes, ack) -> None:
    import anyio
    from lsmvec import AsyncClient
    maintenance = frozenset(k for k in args.maintenance.split(",") if k)
    n_sync = args.sync_threads

    def sync_history(index: Any, h: int) -> None:
        try:
            for k in range(args.max_ops):
                op = cw.make_op(args.seed, args.round, h, k, maintenance)
                cw.apply_op(index, op)
                ack(f"{h} {k} {op.kind}")
        except BaseException:
            _fail()

    async def async_history(aindex: Any, h: int) -> None:
        for k in range(args.max_ops):
            op = cw.make_op(args.seed, args.round, h, k, maintenance)
            await apply_op_async(aindex, op)
            ack(f"{h} {k} {op.kind}")

    async def main() -> None:
        async with AsyncClient(args.data_dir, durability=args.durability) as client:
            ack(cw.MARK_OPENING)
            aindex = await client.load_index(INDEX_NAME, key)
            ack(cw.MARK_OPENED)
            threads = [threading.Thread(target=sync_history, args=(aindex.sync, h), daemon=True)
                       for h in range(n_sync)]
            for t in threads:
                t.start()
            async with anyio.create_task_group() as tg:
                for h in range(n_sync, n_sync + args.async_tasks):
                    tg.start_soon(async_history, aindex, h)
            for t in threads:
                await anyio.to_thread.run_sync(t.join)

    anyio.run(main)


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    key = bytes.fromhex(os.environ[KEY_ENV])
    ack_fd = os.open(args.ack_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def ack(line: str) -> None:
        os.write(ack_fd, (line + "\n").encode())

    try:
        if args.mode == "failpoint":
            _run_failpoint(args, key, ack)
        else:
            _run_soak(args, key, ack)
    except BaseException:
        _fail()
    ack("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
