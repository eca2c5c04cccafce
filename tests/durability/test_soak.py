"""kill -9 soak: 200+ short trials of mixed sync and async writers, each killed at a random
moment; not one acknowledged write lost, not one batch applied in part.

Each trial creates an index (memtable 20 kB; background compaction on or off; durability fsync
or os) and starts tests/durability/fault_worker.py in "soak" mode: sync threads on an Index and async tasks
on an AsyncIndex over the same open index, every history running crash_worker.make_op ops
(upserts, overwrites, deletes, flush, compact, train) and acknowledging each op after it returns.
The parent sends SIGKILL 0.05-0.4 s after the child reports the index open. Every fifth trial
is a chain: a second child on the same folder is killed right after it starts opening (inside
recovery of the first crash). Then the parent reopens the index and checks every history with
fault_worker.judge (acknowledged state, or acknowledged + the whole in-flight op), exact queries
against brute force, verify(), and that writes work again. Trials run two at a time.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import crash_worker as cw
import fault_worker as fw

pytestmark = pytest.mark.slow

TRIALS = 200
WORKER = str(Path(fw.__file__).resolve())
MAINTENANCE = frozenset(cw.MAINTENANCE_KINDS)
MARKER_TIMEOUT_S = 60.0
# (sync threads, async tasks) per trial, in rotation: sync only, async only, and mixed.
WRITERS = ((1, 0), (0, 2), (2, 2), (3, 1), (0, 4), (1, 1))


def _kill_child(folder: Path, key: bytes, seed: int, round_no: int, writers: tuple[int, int],
                durability: str, marker: str, delay: float) -> tuple[str, list[list[str]]]:
    """Start a soak child, SIGKILL it `delay` s after `marker` shows up in its ack file; return
    (phase, acked kinds per history)."""
    ack, err = folder.parent / f"{folder.name}.r{round_no}.ack", folder.parent / f"{folder.name}.err"
    cmd = [sys.executable, WORKER, "soak", str(folder), str(ack), "--seed", str(seed),
           "--round", str(round_no), "--sync-threads", str(writers[0]), "--async-tasks",
           str(writers[1]), "--durability", durability, "--maintenance", ",".join(sorted(MAINTENANCE))]
    env = {**os.environ, fw.KEY_ENV: key.hex()}
    with open(err, "wb") as err_f:
        proc = fw.spawn(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err_f)
    try:
        start = time.monotonic()
        wanted = (marker + "\n").encode()
        while not (ack.exists() and wanted in ack.read_bytes()):
            assert proc.poll() is None, f"the child exited early:\n{err.read_text(errors='replace')[-3000:]}"
            assert time.monotonic() - start < MARKER_TIMEOUT_S, f"no {marker!r} marker"
            time.sleep(0.002)
        time.sleep(delay)
        assert proc.poll() is None, f"the child exited early:\n{err.read_text(errors='replace')[-3000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return fw.read_acks(ack, sum(writers))


def run_trial(root: Path, n: int) -> dict[str, Any]:
    from lsmvec import generate_key
    rng = np.random.default_rng(9000 + n)
    folder, key, seed = root / f"t{n}" / "data", generate_key(), 9000 + n
    durability = ("fsync", "os")[n % 2]
    writers = WRITERS[n % len(WRITERS)]
    fw.create_index(folder, key, durability=durability, background_compaction=bool(n % 3))
    plan = [("opened", float(rng.uniform(0.05, 0.4)))]
    if n % 5 == 4:  # a chain: the next child dies inside the recovery of this crash
        plan.append(("opening", float(rng.uniform(0.0, 0.05))))
    histories: dict[tuple[int, int], fw.History] = {}
    phases, acked_kinds, inflight_kinds = [], {}, {}
    for round_no, (marker, delay) in enumerate(plan):
        phase, acked = _kill_child(folder, key, seed, round_no, writers, durability, marker, delay)
        phases.append(phase)
        for h, kinds in enumerate(acked):
            ops = [cw.make_op(seed, round_no, h, k, MAINTENANCE) for k in range(len(kinds) + 1)]
            assert kinds == [op.kind for op in ops[:-1]], f"trial {n}: acks differ from the plan"
            inflight = ops[-1] if phase == "workload" else None
            histories[(round_no, h)] = fw.History(ops[:-1], inflight)
            for op in ops[:-1]:
                acked_kinds[op.kind] = acked_kinds.get(op.kind, 0) + 1
            if inflight is not None:
                inflight_kinds[inflight.kind] = inflight_kinds.get(inflight.kind, 0) + 1
    with fw.FORK_GUARD:
        verdict, state = _check(folder, key, seed, durability, histories, n)
    return {"verdict": verdict, "phases": phases, "acked": acked_kinds, "inflight": inflight_kinds,
            "writers": writers, "live": len(state), "trial": n}


def _check(folder: Path, key: bytes, seed: int, durability: str,
           histories: dict[tuple[int, int], fw.History], n: int) -> tuple[fw.Verdict, dict]:
    """Reopen after the kill(s): judge every history, then verify and write again."""
    from lsmvec import Client
    with Client(folder, durability=durability) as client:
        index = client.load_index(fw.INDEX_NAME, key)
        state = fw.read_state(index)
        verdict = fw.judge(state, histories)
        if verdict.ok:
            fw.check_queries(index, state, seed)
            index.flush()  # verify() races a background flush started by the open
            report = index.verify()
            assert report["ok"], f"trial {n}: verify: {report['problems'][:3]}"
            vec = np.ones(fw.DIM, np.float32)
            index.upsert([{"id": "after-kill", "vector": vec}])
    if verdict.ok:
        with Client(folder, durability=durability) as client:
            again = fw.read_state(client.load_index(fw.INDEX_NAME, key))
        assert again == {**state, "after-kill": (vec.tobytes(), None, {})}, \
            f"trial {n}: the write after recovery did not hold"
    return verdict, state


def _merge(into: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


def test_kill9_soak_loses_no_acknowledged_write(tmp_path: Path, record_property: Any) -> None:
    with fw.scratch(tmp_path) as root:
        results = fw.run_parallel([(run_trial, (root, n)) for n in range(TRIALS)])
    total = fw.Verdict()
    phases: dict[str, int] = {}
    acked: dict[str, int] = {}
    inflight: dict[str, int] = {}
    for r in results:
        total.add(r["verdict"])
        _merge(phases, {p: r["phases"].count(p) for p in set(r["phases"])})
        _merge(acked, r["acked"])
        _merge(inflight, r["inflight"])
    kills = sum(len(r["phases"]) for r in results)
    async_trials = sum(1 for r in results if r["writers"][1])
    summary = (f"soak: {len(results)} trials, {kills} kill -9 ({async_trials} trials with async "
               f"writers), kills landed in {phases}; ops acknowledged {dict(sorted(acked.items()))}; "
               f"op in flight per history at the kill {dict(sorted(inflight.items()))}; acknowledged "
               f"items checked {total.checked_items}; acknowledged writes lost {total.lost}, "
               f"partial batches {total.partial}, resurrected {total.resurrected}, wrong values "
               f"{total.wrong}, strays {total.strays}")
    record_property("soak_summary", summary)
    print(summary)
    assert total.ok, f"{total.summary()}: {total.details[:10]}"
