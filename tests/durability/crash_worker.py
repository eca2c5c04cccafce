"""The child process of the crash tests, and the deterministic workload both sides share.

The parent (tests/durability/test_crash.py) creates an index, starts this script and kills it with SIGKILL
at a random moment. This script opens the index and runs, in each of ``--threads`` threads, an
endless sequence of operations that is a pure function of (seed, round, thread, op number):
``make_op`` below. After an operation RETURNS, the thread appends ``"<thread> <op> <kind>"`` to
the ack file with one ``os.write`` on an O_APPEND descriptor. Only then is the op acknowledged.
(``os.write`` puts the line in the page cache, which SIGKILL does not touch, so no fsync is
needed for the ack file itself; a line torn by the kill has no newline and does not count.)

Id spaces: op k of thread t in round r creates ids ``r{r}-t{t}-b{k}-i{i}``; overwrites and
deletes only target ids of the same (round, thread) created by earlier ops, which that thread
already saw acknowledged. So each (round, thread) is an independent sequential history: the
acknowledged ops are a prefix, and at most the next op is in flight when the kill lands.

Usage: python crash_worker.py DATA_DIR INDEX_NAME ACK_FILE --seed S --round R --threads T
       --durability fsync|os [--maintenance flush,compact,train] [--max-ops N]
The index key is passed in hex in the environment variable LSMVEC_CRASH_KEY.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np

DIM = 16
KEY_ENV = "LSMVEC_CRASH_KEY"
MAX_BATCH = 200
MARK_OPENING = "opening"
MARK_OPENED = "opened"
MAINTENANCE_KINDS = ("flush", "compact", "train")
# Probability of each maintenance kind per op, when the engine has it.
_MAINTENANCE_P = {"flush": 0.04, "compact": 0.02, "train": 0.004}
_TAGS = ("cat", "dog", "bird", "fish")


@dataclass(frozen=True)
class Op:
    """One planned call. ``kind``: new | overwrite | delete | flush | compact | train.
    For new/overwrite: ids, float32 vectors, contents (bytes, str or None per item), metadata
    (dict or None per item) and the call form (dicts | tuples | numpy)."""

    kind: str
    ids: tuple[str, ...] = ()
    vectors: np.ndarray | None = None
    contents: tuple[bytes | str | None, ...] = ()
    metadata: tuple[dict | None, ...] = ()
    form: str = "dicts"


def item_id(round_no: int, thread: int, k: int, i: int) -> str:
    return f"r{round_no}-t{thread}-b{k}-i{i}"


def ghost_id(round_no: int, thread: int, k: int) -> str:
    """An id that is never created: deleting it must be ignored."""
    return f"r{round_no}-t{thread}-ghost{k}"


def parse_id(value: str) -> tuple[int, int, int, int] | None:
    """(round, thread, op, item) of an id made by item_id, else None."""
    parts = value.split("-")
    if len(parts) != 4 or [p[:1] for p in parts] != ["r", "t", "b", "i"]:
        return None
    try:
        return int(parts[0][1:]), int(parts[1][1:]), int(parts[2][1:]), int(parts[3][1:])
    except ValueError:
        return None


def _rng(seed: int, round_no: int, thread: int, k: int) -> np.random.Generator:
    return np.random.default_rng([seed, round_no, thread, k])


def _header(rng: np.random.Generator, maintenance: frozenset[str]) -> tuple[str, int]:
    """The first two draws of every op's generator: its kind and its batch size."""
    u = float(rng.random())
    size = int(rng.integers(1, MAX_BATCH + 1))
    for kind in MAINTENANCE_KINDS:
        p = _MAINTENANCE_P[kind] if kind in maintenance else 0.0
        if u < p:
            return kind, size
        u -= p
    if u < 0.62:
        return "new", size
    return ("overwrite" if u < 0.81 else "delete"), size


def _new_batch_size(seed: int, round_no: int, thread: int, j: int,
                    maintenance: frozenset[str]) -> int | None:
    """The size of op j when it creates new ids, else None."""
    kind, size = _header(_rng(seed, round_no, thread, j), maintenance)
    return size if kind == "new" else None


def _payload(rng: np.random.Generator, k: int, n: int, form: str
             ) -> tuple[np.ndarray, tuple, tuple]:
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    if form == "numpy":
        return vectors, (None,) * n, (None,) * n
    contents: list[bytes | str | None] = []
    metadata: list[dict | None] = []
    for i in range(n):
        c = int(rng.integers(0, 3))
        if c == 0 and form == "dicts":
            contents.append(None)
        elif c == 1:
            contents.append(f"text {k}/{i} \u00e9 {int(rng.integers(1 << 30))}")
        else:
            contents.append(rng.integers(0, 256, int(rng.integers(1, 40)), dtype=np.uint8).tobytes())
        if form == "dicts" and rng.random() < 0.2:
            metadata.append(None)
        else:
            metadata.append({"b": k, "i": i, "x": float(rng.random()),
                             "tag": _TAGS[int(rng.integers(len(_TAGS)))],
                             "nested": {"n": int(rng.integers(100)), "l": [1, "two", 3.5]}})
    return vectors, tuple(contents), tuple(metadata)


def make_op(seed: int, round_no: int, thread: int, k: int,
            maintenance: frozenset[str] = frozenset()) -> Op:
    """Op number k of (round, thread): a pure function of its arguments."""
    rng = _rng(seed, round_no, thread, k)
    kind, size = _header(rng, maintenance)
    if kind in MAINTENANCE_KINDS:
        return Op(kind)
    form = ("dicts", "dicts", "tuples", "numpy")[int(rng.integers(4))]
    if kind == "new":
        ids = tuple(item_id(round_no, thread, k, i) for i in range(size))
        vectors, contents, metadata = _payload(rng, k, size, form)
        return Op("new", ids, vectors, contents, metadata, form)
    # overwrite / delete: a random subset of an earlier op's new ids (all acknowledged).
    target: tuple[int, int] | None = None
    for _ in range(6 if k else 0):
        j = int(rng.integers(0, k))
        n_j = _new_batch_size(seed, round_no, thread, j, maintenance)
        if n_j is not None:
            target = (j, n_j)
            break
    if target is None:  # nothing earlier to target: create a fresh batch instead
        ids = tuple(item_id(round_no, thread, k, i) for i in range(size))
        vectors, contents, metadata = _payload(rng, k, size, form)
        return Op("new", ids, vectors, contents, metadata, form)
    j, n_j = target
    m = int(rng.integers(1, n_j + 1))
    chosen = sorted(int(x) for x in rng.choice(n_j, m, replace=False))
    ids = tuple(item_id(round_no, thread, j, i) for i in chosen)
    if kind == "delete":
        return Op("delete", ids + (ghost_id(round_no, thread, k),))
    vectors, contents, metadata = _payload(rng, k, len(ids), form)
    return Op("overwrite", ids, vectors, contents, metadata, form)


def expected_item(op: Op, row: int) -> tuple[np.ndarray, bytes | None, dict]:
    """What `get` must return for row `row` of upsert op `op`: (vector, contents, metadata)."""
    contents = op.contents[row]
    if isinstance(contents, str):
        contents = contents.encode("utf-8")
    return op.vectors[row], contents, op.metadata[row] or {}  # type: ignore[index]


def apply_op(index: Any, op: Op) -> None:
    """Run one planned op against an open Index."""
    if op.kind in ("new", "overwrite"):
        if op.form == "numpy":
            index.upsert(ids=np.array(op.ids), vectors=op.vectors)
        elif op.form == "tuples":
            index.upsert([(i, v.tolist(), c, m) if m is not None else (i, v.tolist(), c)
                          for i, v, c, m in zip(op.ids, op.vectors, op.contents, op.metadata)])
        else:
            items = []
            for i, v, c, m in zip(op.ids, op.vectors, op.contents, op.metadata):
                item: dict[str, Any] = {"id": i, "vector": v}
                if c is not None:
                    item["contents"] = c
                if m is not None:
                    item["metadata"] = m
                items.append(item)
            index.upsert(items)
    elif op.kind == "delete":
        index.delete(list(op.ids))
    else:
        getattr(index, op.kind)()


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("index_name")
    parser.add_argument("ack_file")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--round", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--durability", choices=("fsync", "os"), default="fsync")
    parser.add_argument("--maintenance", default="")
    parser.add_argument("--max-ops", type=int, default=10 ** 9)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    maintenance = frozenset(k for k in args.maintenance.split(",") if k)
    key = bytes.fromhex(os.environ[KEY_ENV])
    ack_fd = os.open(args.ack_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def ack(line: str) -> None:
        os.write(ack_fd, (line + "\n").encode())

    def fail() -> None:
        sys.stderr.write(traceback.format_exc())
        sys.stderr.flush()
        os._exit(3)

    try:
        from lsmvec import Client
        client = Client(args.data_dir, durability=args.durability)
        ack(MARK_OPENING)  # from here until "opened": lock, config check, log replay
        index = client.load_index(args.index_name, key)
    except BaseException:
        fail()
    ack(MARK_OPENED)

    def run(thread: int) -> None:
        try:
            for k in range(args.max_ops):
                op = make_op(args.seed, args.round, thread, k, maintenance)
                apply_op(index, op)
                ack(f"{thread} {k} {op.kind}")
        except BaseException:
            fail()

    workers = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(args.threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    client.close()
    ack("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
