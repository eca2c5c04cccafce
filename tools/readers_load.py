"""One writer process and reader processes on one index folder: the load, its roles and its judge.

Shared by tests/durability/test_readers.py and tools/bench_readers.py. Processes run
``python -m lsmvec.tools.readers_load writer|reader FOLDER JOURNAL ...`` (key in KEY_ENV).

Batches. Batch k is ONE call (one log record: all or nothing for any reader), a pure function of
(seed, k, the oracle state after batch k-1) -- ``plan``: an upsert of some pool ids, a
metadata-only update of live ids, a delete of ids, or a delete by filter. Every item written by
batch k carries k: its vector is ``vector_of(seed, n, vb)`` (v[0] = vb, v[1] = n) and its
metadata {"v": vb, "b": mb} (vb: the batch that wrote the vector, mb: the last batch that wrote
the item). So a state is a set of (n, vb, mb) and every read names which batches it shows.

The writer appends to the JOURNAL, with one os.write each (the page cache survives SIGKILL; a
torn last line does not count): ``S k t`` before the call of batch k, ``A k t`` once it returned
(acknowledged), ``R k t`` when a new writer found unacknowledged batch k landed, ``M kind t0 t1``
for a flush / compact / train, ``O t`` once opened. t is time.monotonic() (CLOCK_MONOTONIC:
one clock for every process of the machine). A new writer reads the journal, rebuilds the
oracle, checks the index holds exactly the acknowledged batches (plus perhaps the one in flight)
and goes on.

A reader writes one JSON line per read to its own file: {"k": get|list|query, "t0", "t1",
"s": ...}. ``judge`` finds, for every read, the batches k whose state it equals (for a query:
contains) and checks: some k exists (no partial batch, no resurrected delete, no torn item);
batch k was started before the read ended; k never goes back per reader. Staleness of a read
of state k: its start minus the ack of batch k+1 when that came first (else 0).
"""
from __future__ import annotations

import argparse
import bisect
import collections
import json
import os
import sys
import time
from dataclasses import dataclass, field
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

KEY_ENV = "LSMVEC_READERS_KEY"
INDEX = "shared"
DIM = 8
POOL = 400
MEMTABLE_BYTES = 20_000
"""A freeze every few batches: flushes (log checkpoints) come often under the readers."""
PERIODS = (("train", 97), ("compact", 29), ("flush", 11))
"""After batch k the writer runs `kind` when (k + 1) % period == 0 (first match wins)."""
State = frozenset  # of (n, vb, mb)


def vector_of(seed: int, n: int, vb: int) -> np.ndarray:
    v = np.empty(DIM, dtype=np.float32)
    v[0], v[1] = vb, n
    v[2:] = np.random.default_rng([seed, vb, n]).standard_normal(DIM - 2)
    return v


def plan(seed: int, k: int, state: dict[int, tuple[int, int]]) -> tuple[str, list]:
    """Batch k: (kind, items or ids or filter). `state`: n -> (vb, mb) after batch k-1."""
    rng = np.random.default_rng([seed, k, 7])
    u = float(rng.random())
    live = sorted(state)
    if u < 0.15 and len(live) > 5:
        ids = sorted(set(int(x) for x in rng.choice(live, int(rng.integers(1, 6)), replace=False)))
        return "update", ids
    if u < 0.30 and live:
        picks = set(int(x) for x in rng.choice(POOL, int(rng.integers(1, 8)), replace=False))
        picks.add(int(rng.choice(live)))  # at least one live id: the state changes
        return "delete", sorted(picks)
    if u < 0.33 and k > 60:
        return "delete_filter", [k - 60]  # every item last written before batch k - 60
    n = int(rng.integers(1, 40))
    return "upsert", sorted(set(int(x) for x in rng.choice(POOL, n, replace=False)))


def apply_plan(state: dict[int, tuple[int, int]], k: int, kind: str, arg: list) -> None:
    if kind == "upsert":
        state.update((n, (k, k)) for n in arg)
    elif kind == "update":
        state.update((n, (state[n][0], k)) for n in arg)
    elif kind == "delete":
        for n in arg:
            state.pop(n, None)
    else:
        for n in [n for n, (_vb, mb) in state.items() if mb < arg[0]]:
            del state[n]


def run_batch(index: Any, seed: int, k: int, kind: str, arg: list,
              state: dict[int, tuple[int, int]]) -> None:
    if kind == "upsert":
        index.upsert([{"id": f"i{n}", "vector": vector_of(seed, n, k),
                       "metadata": {"v": k, "b": k}} for n in arg])
    elif kind == "update":
        index.update([{"id": f"i{n}", "metadata": {"v": state[n][0], "b": k}} for n in arg])
    elif kind == "delete":
        index.delete([f"i{n}" for n in arg])
    else:
        index.delete(filters={"b": {"$lt": arg[0]}})


def states(seed: int, count: int) -> Iterator[dict[int, tuple[int, int]]]:
    """The oracle, one state at a time: the state after batches 0..k-1 for k = 0..count
    (the first is empty); each a new dict."""
    state: dict[int, tuple[int, int]] = {}
    yield dict(state)
    for k in range(count):
        apply_plan(state, k, *plan(seed, k, state))
        yield dict(state)


def state_after(seed: int, count: int) -> dict[int, tuple[int, int]]:
    """The state after batches 0..count-1."""
    return collections.deque(states(seed, count), maxlen=1)[0]


def as_set(state: dict[int, tuple[int, int]]) -> State:
    return frozenset((n, vb, mb) for n, (vb, mb) in state.items())


# ----------------------------------------------------------------------------- the journal

@dataclass
class Journal:
    starts: dict[int, float] = field(default_factory=dict)  # first start of batch k
    acks: dict[int, float] = field(default_factory=dict)  # ack (or found after a crash)
    maintenance: list[tuple[str, float, float]] = field(default_factory=list)
    opens: list[float] = field(default_factory=list)

    @property
    def acked(self) -> int:
        """Batches 0..acked-1 are acknowledged."""
        k = 0
        while k in self.acks:
            k += 1
        return k


def read_journal(path: str | os.PathLike) -> Journal:
    journal = Journal()
    data = Path(path).read_bytes() if Path(path).exists() else b""
    for line in data.decode().split("\n")[:-1]:  # a torn last line has no newline
        parts = line.split()
        if parts[0] == "S":
            journal.starts.setdefault(int(parts[1]), float(parts[2]))
        elif parts[0] in ("A", "R"):
            journal.acks[int(parts[1])] = float(parts[2])
        elif parts[0] == "M":
            journal.maintenance.append((parts[1], float(parts[2]), float(parts[3])))
        elif parts[0] == "O":
            journal.opens.append(float(parts[1]))
    return journal


def create(folder: str | os.PathLike, key: bytes, durability: str = "os") -> None:
    """The shared index (euclidean, DIM, small memtable, no background compaction: the
    writer's explicit flush / compact / train are the only maintenance)."""
    from lsmvec import Client
    with Client(folder, durability=durability) as client:
        client.create_index(INDEX, key, dimension=DIM, metric="euclidean",
                            memtable_bytes=MEMTABLE_BYTES, background_compaction=False)


def read_state(index: Any) -> dict[int, tuple[int, int]]:
    items = index.get([f"i{n}" for n in range(POOL)], include=["metadata"])
    return {int(it["id"][1:]): (it["metadata"]["v"], it["metadata"]["b"]) for it in items}


def writer(folder: str, journal_path: str, key: bytes, seed: int, batches: int,
           stop_file: str, durability: str) -> None:
    from lsmvec import Client
    fd = os.open(journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def note(line: str) -> None:
        os.write(fd, (line + "\n").encode())

    journal = read_journal(journal_path)
    done = journal.acked
    oracle = list(collections.deque(states(seed, done + 1), maxlen=2))  # states done, done + 1
    with Client(folder, durability=durability) as client:
        index = client.load_index(INDEX, key)
        found = read_state(index)
        if done in journal.starts and found == oracle[1]:
            note(f"R {done} {time.monotonic():.6f}")  # it landed before the kill
            done += 1
        elif found != oracle[0]:
            raise SystemExit(f"writer: the index does not hold the {done} acknowledged batches")
        note(f"O {time.monotonic():.6f}")
        state = found
        for k in range(done, batches):
            if os.path.exists(stop_file):
                break
            kind, arg = plan(seed, k, state)
            note(f"S {k} {time.monotonic():.6f}")
            run_batch(index, seed, k, kind, arg, state)
            note(f"A {k} {time.monotonic():.6f}")
            apply_plan(state, k, kind, arg)
            for name, period in PERIODS:
                if (k + 1) % period == 0:
                    t0 = time.monotonic()
                    getattr(index, name)()
                    note(f"M {name} {t0:.6f} {time.monotonic():.6f}")
                    break


def reader(folder: str, out_path: str, key: bytes, seed: int, stop_file: str,
           max_staleness: float, max_reads: int, pause: float = 0.0) -> None:
    """Reads in turn (get of the whole pool, list_ids, a query) until the stop file exists
    or max_reads; `pause` seconds between reads (0: as fast as it can)."""
    from lsmvec import Client
    fd = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    rng = np.random.default_rng([seed, os.getpid()])
    pool = [f"i{n}" for n in range(POOL)]
    with Client(folder, read_only=True) as client:
        index = client.load_index(INDEX, key, max_staleness=max_staleness)
        os.write(fd, b'{"k": "opened"}\n')
        for r in range(max_reads):
            if os.path.exists(stop_file):
                break
            kind = ("get", "list", "query")[r % 3]
            t0 = time.monotonic()
            if kind == "get":
                seen = _items(seed, index.get(pool, include=["vector", "metadata"]))
            elif kind == "list":
                seen = sorted(int(i[1:]) for i in index.list_ids())
            else:
                q = rng.standard_normal(DIM).astype(np.float32) * 3
                seen = _items(seed, index.query(q, top_k=10, include=["vector", "metadata"]))
            t1 = time.monotonic()
            os.write(fd, (json.dumps({"k": kind, "t0": t0, "t1": t1, "s": seen}) + "\n").encode())
            if pause:
                time.sleep(pause)  # a paced client, not a busy loop


def _items(seed: int, items: list[dict]) -> list:
    """[n, vb, mb] per item; vb -1 when the vector is not the one batch vb wrote."""
    out = []
    for it in items:
        n, meta = int(it["id"][1:]), it["metadata"]
        vb = int(meta["v"])
        ok = np.array_equal(np.asarray(it["vector"], dtype=np.float32), vector_of(seed, n, vb))
        out.append([n, vb if ok else -1, int(meta["b"])])
    return out


# ----------------------------------------------------------------------------- the judge

@dataclass
class Verdict:
    reads: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    staleness: list[float] = field(default_factory=list)  # per get/list read, 0 when current
    max_seen: int = -1

    def percentiles(self) -> dict[str, float]:
        if not self.staleness:
            return {"p50": 0.0, "p99": 0.0, "max": 0.0}
        s = np.sort(np.array(self.staleness))
        return {"p50": float(np.percentile(s, 50)), "p99": float(np.percentile(s, 99)),
                "max": float(s[-1])}


class Oracle:
    """What reads are judged against, for the states 0..count (state j: after batches < j),
    in memory linear in the number of changes, not states x items: a fingerprint of each state
    (of its items; of its ids) and, per item value (n, vb, mb), the ranges of states holding
    it."""

    def __init__(self, seed: int, count: int):
        self.count = count
        self.by_items: dict[int, list[int]] = {}
        self.by_ids: dict[int, list[int]] = {}
        self.empty: list[int] = []
        self.spans: dict[tuple[int, int, int], list[list[int]]] = {}  # [first, end) states
        prev: dict[int, tuple[int, int]] = {}
        for j, state in enumerate(states(seed, count)):
            self.by_items.setdefault(hash(as_set(state)), []).append(j)
            self.by_ids.setdefault(hash(frozenset(state)), []).append(j)
            if not state:
                self.empty.append(j)
            for n, value in state.items():
                if prev.get(n) != value:
                    self.spans.setdefault((n, *value), []).append([j, count + 1])
            for n, value in prev.items():
                if state.get(n) != value:
                    self.spans[(n, *value)][-1][1] = j
            prev = state

    def holding(self, items: frozenset, lo: int, hi: int) -> list[int]:
        """The states j in lo..hi that hold every one of `items`."""
        if not items:
            return [j for j in self.empty if lo <= j <= hi]
        ok = [(lo, hi + 1)]  # disjoint [first, end) ranges, intersected with each item's
        for item in items:
            ok = [(max(a, c), min(b, d)) for a, b in ok for c, d in self.spans.get(item, [])
                  if max(a, c) < min(b, d)]
            if not ok:
                return []
        return [j for a, b in ok for j in range(a, b)]


def judge(oracle: Oracle, journal: Journal, out_paths: list[Path]) -> Verdict:
    """Every read of every reader file against the oracle (states[j]: after batches < j)."""
    verdict = Verdict()
    starts = [journal.starts.get(k, float("inf")) for k in range(oracle.count)]
    assert starts == sorted(starts), "batches start in order"
    for path in out_paths:
        lo = 0  # the earliest state this reader may still show
        for line in path.read_bytes().decode().split("\n")[:-1]:
            read = json.loads(line)
            kind = read["k"]
            if kind == "opened":
                continue
            verdict.reads[kind] = verdict.reads.get(kind, 0) + 1
            t0, t1 = read["t0"], read["t1"]
            # state j shows batch j-1: it may be seen once that batch was started
            newest = bisect.bisect_right(starts, t1)  # states 0..newest were started by t1
            if kind == "get":
                seen = frozenset(tuple(x) for x in read["s"])
                match = oracle.by_items.get(hash(seen), [])
            elif kind == "list":
                match = oracle.by_ids.get(hash(frozenset(read["s"])), [])
            else:
                match = oracle.holding(frozenset(tuple(x) for x in read["s"]), lo, newest)
            allowed = [j for j in match if j <= newest]
            feasible = [j for j in allowed if j >= lo]
            where = f"{path.name} {kind} read at {t0:.3f}"
            if not match:
                verdict.violations.append(f"{where}: equals no committed state: {read['s']}")
                continue
            if not allowed:
                verdict.violations.append(f"{where}: shows batch {min(match) - 1} before it "
                                          "was started")
                continue
            if not feasible:
                verdict.violations.append(f"{where}: went back to state {max(allowed)} after "
                                          f"state {lo}")
                continue
            lo = min(feasible)
            top = max(feasible)
            verdict.max_seen = max(verdict.max_seen, top)
            if kind != "query":
                ack = journal.acks.get(top)  # batch `top` makes state top + 1
                verdict.staleness.append(max(0.0, t0 - ack) if ack is not None else 0.0)
    return verdict


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=("writer", "reader"))
    parser.add_argument("folder")
    parser.add_argument("out")  # writer: the journal; reader: its reads file
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--batches", type=int, default=10 ** 9)
    parser.add_argument("--durability", default="os")
    parser.add_argument("--max-staleness", type=float, default=1.0)
    parser.add_argument("--max-reads", type=int, default=10 ** 9)
    parser.add_argument("--pause", type=float, default=0.0)
    args = parser.parse_args(argv)
    key = bytes.fromhex(os.environ[KEY_ENV])
    if args.role == "writer":
        writer(args.folder, args.out, key, args.seed, args.batches, args.stop_file,
               args.durability)
    else:
        reader(args.folder, args.out, key, args.seed, args.stop_file, args.max_staleness,
               args.max_reads, args.pause)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
