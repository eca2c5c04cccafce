"""kill -9 of a writing process at random moments: no acknowledged write is lost, nothing is torn.

Each trial: the parent creates an index, starts tests/durability/crash_worker.py (a deterministic workload
of upserts, overwrites, deletes and, when the engine has them, flush / compact / train, in 1 or
4 threads) and sends SIGKILL after a random delay -- from the spawn (so the kill may land during
start-up, open or log replay) or from the moment the index is open. Then it reopens the index
in-process and checks, for every (round, thread) history separately (their id spaces are
disjoint and each history is sequential):

- the state equals the oracle (a dict) after exactly the acknowledged ops, or after those plus
  the one op that was in flight. That covers: every acknowledged upsert present with exactly its
  vector, contents and metadata unless a later acknowledged op changed it; every acknowledged
  delete absent; an unacknowledged batch wholly present or wholly absent; and the surviving ops
  being a prefix-closed subset (op k+1 never survives without op k);
- list_ids, get and get_num_vectors agree, and (on untrained data) queries match brute force;
- writes work again: one more upsert, reopen, everything still there.

With durability="os" a SIGKILL keeps the page cache, so the same no-loss rule applies.
Successive kills on one folder, with no clean open in between, crash the recovery of a crash.
"""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import crash_worker as cw
import fault_worker as fw
from conftest import assert_matches_oracle

pytestmark = pytest.mark.slow

INDEX_NAME = "crashy"
WORKER = str(Path(cw.__file__).resolve())
MARKER_TIMEOUT_S = 60.0
Value = fw.Value  # (float32 vector bytes, contents, metadata)


# ----------------------------------------------------------------------------- the engine's features

@functools.lru_cache(maxsize=None)
def available_maintenance() -> frozenset[str]:
    """Which of flush / compact / train the engine implements now (they are being added). A
    method that is missing or raises AttributeError / NotImplementedError is left out of the
    workload; any other error fails the test."""
    from lsmvec import Client, generate_key
    found: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp, Client(tmp) as client:
        index = client.create_index("probe", generate_key(), dimension=cw.DIM)
        rng = np.random.default_rng(0)
        index.upsert(ids=[f"p{i}" for i in range(300)],
                     vectors=rng.standard_normal((300, cw.DIM)).astype(np.float32))
        for name in cw.MAINTENANCE_KINDS:
            method = getattr(index, name, None)
            if method is None:
                continue
            try:
                method()
            except (AttributeError, NotImplementedError):
                continue
            found.add(name)
    return frozenset(found)


# ----------------------------------------------------------------------------- running a child

@dataclass
class ChildRun:
    """One killed child: what it was told and what it acknowledged."""

    seed: int
    round_no: int
    threads: int
    maintenance: frozenset[str]
    kill: str
    acked: list[int] = field(default_factory=list)  # per thread: ops 0..n-1 acknowledged
    phase: str = "startup"  # startup | open | workload: where the kill landed


def read_acks(path: Path, run: ChildRun) -> None:
    """Parse the ack file into run.acked / run.phase; check every thread acked in op order and
    that the acked kind is the planned one."""
    data = path.read_bytes() if path.exists() else b""
    lines = data.split(b"\n")[:-1]  # the last piece has no newline: torn or empty
    run.acked = [0] * run.threads
    for raw in lines:
        line = raw.decode()
        if line == cw.MARK_OPENING:
            run.phase = "open"
        elif line == cw.MARK_OPENED:
            run.phase = "workload"
        else:
            thread_s, k_s, kind = line.split()
            thread, k = int(thread_s), int(k_s)
            assert k == run.acked[thread], f"thread {thread} acked op {k} out of order: {line!r}"
            planned = planned_op(run.seed, run.round_no, thread, k, run.maintenance).kind
            assert kind == planned, f"ack {line!r} but op {k} is a {planned}"
            run.acked[thread] += 1


def run_child(folder: Path, key: bytes, run: ChildRun, durability: str, delay: float) -> ChildRun:
    """Start the worker, SIGKILL it `delay` s after the spawn or after its marker (run.kill:
    spawn | opening | opened), and read what it acknowledged."""
    ack_path = folder.parent / f"{folder.name}.r{run.round_no}.ack"
    err_path = folder.parent / f"{folder.name}.r{run.round_no}.err"
    cmd = [sys.executable, WORKER, str(folder), INDEX_NAME, str(ack_path), "--seed", str(run.seed),
           "--round", str(run.round_no), "--threads", str(run.threads), "--durability", durability,
           "--maintenance", ",".join(sorted(run.maintenance))]
    env = dict(os.environ, **{cw.KEY_ENV: key.hex()})
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        start = time.monotonic()
        if run.kill != "spawn":
            marker = (run.kill + "\n").encode()
            while not (ack_path.exists() and marker in ack_path.read_bytes()):
                _check_alive(proc, err_path)
                assert time.monotonic() - start < MARKER_TIMEOUT_S, f"no {run.kill!r} marker"
                time.sleep(0.002)
            start = time.monotonic()
        while (left := start + delay - time.monotonic()) > 0:
            _check_alive(proc, err_path)
            time.sleep(min(left, 0.005))
        _check_alive(proc, err_path)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, _child_failure(proc, err_path)
    read_acks(ack_path, run)
    return run


def _check_alive(proc: subprocess.Popen, err_path: Path) -> None:
    assert proc.poll() is None, _child_failure(proc, err_path)


def _child_failure(proc: subprocess.Popen, err_path: Path) -> str:
    return (f"the worker exited by itself (code {proc.returncode}) before the kill:\n"
            f"{err_path.read_text(errors='replace')[-4000:]}")


# ----------------------------------------------------------------------------- the oracle

@functools.lru_cache(maxsize=None)
def planned_op(seed: int, round_no: int, thread: int, k: int, maintenance: frozenset[str]) -> cw.Op:
    """cw.make_op, memoised: every check recomputes the same histories."""
    return cw.make_op(seed, round_no, thread, k, maintenance)


def _apply_to_model(model: dict[str, Value], op: cw.Op) -> None:
    if op.kind in ("new", "overwrite"):
        for row, item_id in enumerate(op.ids):
            vec, contents, metadata = cw.expected_item(op, row)
            model[item_id] = (vec.tobytes(), contents, metadata)
    elif op.kind == "delete":
        for item_id in op.ids:
            model.pop(item_id, None)


@dataclass
class History:
    """One (round, thread): the oracle after the acked ops and after the in-flight op too."""

    run: ChildRun
    thread: int
    acked_state: dict[str, Value]
    inflight_state: dict[str, Value]
    inflight: cw.Op
    mentioned: set[str]  # every id these ops touch (incl. deleted and never-created ones)


def histories(run: ChildRun) -> list[History]:
    out = []
    for thread in range(run.threads):
        model: dict[str, Value] = {}
        mentioned: set[str] = set()
        n = run.acked[thread]
        for k in range(n):
            op = planned_op(run.seed, run.round_no, thread, k, run.maintenance)
            _apply_to_model(model, op)
            mentioned.update(op.ids)
        inflight = planned_op(run.seed, run.round_no, thread, n, run.maintenance)
        after = dict(model)
        _apply_to_model(after, inflight)
        mentioned.update(inflight.ids)
        out.append(History(run, thread, model, after, inflight, mentioned))
    return out


def _differences(actual: dict[str, Value], model: dict[str, Value], limit: int = 8) -> list[str]:
    diffs = [f"missing {i}" for i in sorted(model.keys() - actual.keys())]
    diffs += [f"unexpected {i}" for i in sorted(actual.keys() - model.keys())]
    diffs += [f"changed {i}: got {actual[i]!r:.120} want {model[i]!r:.120}"
              for i in sorted(model.keys() & actual.keys()) if actual[i] != model[i]]
    return diffs[:limit] + ([f"... {len(diffs) - limit} more"] if len(diffs) > limit else [])


def check_against_oracle(index: Any, runs: list[ChildRun], extra: dict[str, Value]) -> dict[str, Value]:
    """Assert the reopened index holds, per history, its acked state or its acked+in-flight
    state; `extra` are items the parent wrote itself. Returns the full state read."""
    state = fw.read_state(index, dim=cw.DIM)
    rest = dict(state)
    for item_id, value in extra.items():
        assert rest.pop(item_id, None) == value, f"the parent's own item {item_id} is wrong"
    chosen: dict[str, Value] = dict(extra)
    by_history: dict[tuple[int, int], dict[str, Value]] = {}
    for item_id, value in state.items():
        if item_id not in extra and (p := cw.parse_id(item_id)) is not None:
            by_history.setdefault(p[:2], {})[item_id] = value
            del rest[item_id]
    for run in runs:
        for h in histories(run):
            mine = by_history.pop((run.round_no, h.thread), {})
            absent = sorted(h.mentioned - mine.keys())  # deleted, never created, ghosts
            assert index.get(absent) == [], \
                f"get returns ids that list_ids does not list (round {run.round_no} thread {h.thread})"
            where = (f"round {run.round_no} thread {h.thread} (seed {run.seed}, kill "
                     f"{run.kill} in {run.phase}, {h.run.acked[h.thread]} ops acked, in flight: "
                     f"{h.inflight.kind} of {len(h.inflight.ids)} ids)")
            if mine == h.acked_state or mine == h.inflight_state:
                chosen.update(mine)
                continue
            pytest.fail(f"{where}: state is neither the acknowledged one nor acknowledged + the "
                        f"in-flight op.\n vs acked: {_differences(mine, h.acked_state)}\n vs "
                        f"acked+in-flight: {_differences(mine, h.inflight_state)}")
    strays = sorted(rest) + sorted(i for ids in by_history.values() for i in ids)
    assert not strays, f"ids nobody wrote: {strays[:10]}"
    _check_queries(index, chosen)
    return state


def _check_queries(index: Any, state: dict[str, Value]) -> None:
    """Exact search on untrained data must match brute force over the recovered state."""
    if not state or index.is_trained():
        return
    model = {i: np.frombuffer(v[0], dtype=np.float32) for i, v in state.items()}
    rng = np.random.default_rng(len(state))
    for q in rng.standard_normal((3, cw.DIM)).astype(np.float32):
        assert_matches_oracle(index.query(q, top_k=10), model, q, "euclidean", 10,
                              context="query after recovery")


# ----------------------------------------------------------------------------- the scenario

def create(folder: Path, key: bytes) -> None:
    from lsmvec import Client
    with Client(folder) as client:
        client.create_index(INDEX_NAME, key, dimension=cw.DIM, metric="euclidean")


def check_and_write_again(folder: Path, key: bytes, runs: list[ChildRun], durability: str) -> int:
    """Reopen, check against the oracle, upsert once more, reopen, check again. Returns the
    number of live items."""
    from lsmvec import Client
    rng = np.random.default_rng([len(runs), runs[-1].seed])
    new_vec = rng.standard_normal(cw.DIM).astype(np.float32)
    new_item = {"after-crash": (new_vec.tobytes(), b"again", {"n": 1})}
    with Client(folder, durability=durability) as client:
        index = client.load_index(INDEX_NAME, key)
        before = check_against_oracle(index, runs, {})
        index.upsert([{"id": "after-crash", "vector": new_vec, "contents": b"again",
                       "metadata": {"n": 1}}])
    with Client(folder, durability=durability) as client:
        index = client.load_index(INDEX_NAME, key)
        after = check_against_oracle(index, runs, new_item)
    assert after == {**before, **new_item}, "the reopen after the extra write changed the state"
    return len(after)


def _report(record_property: Any, runs: list[ChildRun], live: int) -> None:
    phases = {p: sum(r.phase == p for r in runs) for p in ("startup", "open", "workload")}
    acked: dict[str, int] = {}
    inflight: dict[str, int] = {}
    for run in runs:
        for thread, n in enumerate(run.acked):
            last = n if run.phase == "workload" else n - 1  # the op next when the kill landed
            for k in range(last + 1):
                kind = planned_op(run.seed, run.round_no, thread, k, run.maintenance).kind
                tally = acked if k < n else inflight
                tally[kind] = tally.get(kind, 0) + 1
    summary = (f"{len(runs)} kills, landed in {phases}; ops acked {dict(sorted(acked.items()))}; "
               f"next op per thread at the kill {dict(sorted(inflight.items()))}; {live} live "
               f"items; maintenance in workload: {sorted(available_maintenance()) or 'none'}")
    record_property("crash_summary", summary)
    print(summary)


TRIALS_PER_CASE = 6


@pytest.mark.parametrize("threads,durability", [(1, "fsync"), (4, "fsync"), (1, "os"), (4, "os")])
def test_kill9_at_random_moments_loses_no_acknowledged_write(tmp_path: Path, threads: int,
                                                             durability: str,
                                                             record_property: Any) -> None:
    from lsmvec import generate_key
    maintenance = available_maintenance()
    runs, live = [], 0
    for trial in range(TRIALS_PER_CASE):
        seed = 1000 * threads + 100 * (durability == "os") + trial
        rng = np.random.default_rng(seed)
        folder, key = tmp_path / f"t{trial}", generate_key()
        create(folder, key)
        if trial % 2 == 0:  # from the spawn: may land in start-up, open or replay
            kill, delay = "spawn", float(rng.uniform(0.05, 1.5))
        else:
            kill, delay = "opened", float(rng.uniform(0.05, 0.7))
        run = run_child(folder, key, ChildRun(seed, 0, threads, maintenance, kill), durability, delay)
        live += check_and_write_again(folder, key, [run], durability)
        runs.append(run)
    _report(record_property, runs, live)


@pytest.mark.parametrize("threads,durability", [(1, "fsync"), (4, "os")])
def test_successive_kills_on_one_folder_crash_the_recovery(tmp_path: Path, threads: int,
                                                           durability: str,
                                                           record_property: Any) -> None:
    """Six children on the same folder, no clean open in between: several are killed while
    opening / replaying what the previous kill left behind."""
    from lsmvec import generate_key
    maintenance = available_maintenance()
    folder, key = tmp_path / "same", generate_key()
    create(folder, key)
    seed = 7000 + threads
    rng = np.random.default_rng(seed)
    plan = [("opened", 0.4), ("opening", 0.0), ("opened", 0.3), ("opening", 0.01),
            ("spawn", None), ("opening", 0.003), ("opened", 0.2)]
    runs = []
    for round_no, (kill, delay) in enumerate(plan):
        if delay is None:
            delay = float(rng.uniform(0.05, 1.5))
        elif kill == "opened":
            delay = float(rng.uniform(0.05, delay))
        runs.append(run_child(folder, key, ChildRun(seed, round_no, threads, maintenance, kill),
                              durability, delay))
    live = check_and_write_again(folder, key, runs, durability)
    _report(record_property, runs, live)
