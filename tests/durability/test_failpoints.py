"""Every named failpoint, armed to crash: the process dies by SIGKILL exactly at the site, and
what it leaves behind recovers to the acknowledged state.

For each site of wal.failpoints.SITES and a few skip counts, a child (tests/durability/fault_worker.py,
mode "failpoint") runs a deterministic workload -- upserts, overwrites, deletes, and flush /
compact / train at fixed periods, with a 20 kB memtable and background compaction off so flushes
and merges happen inside known calls -- acknowledging each op after it returns. The site is
armed through LSMVEC_FAILPOINTS="<site>=crash@<skip>". The parent asserts the child died by
SIGKILL (so the site was reached; exit 0 would mean it never was), reopens the index and checks:
every acknowledged op holds and the op in flight is all or nothing (fault_worker.judge), exact
queries match brute force, every folder under segments/ is a manifest segment (no orphans),
verify() is ok, the log is bounded, and writes work again (upsert + delete + flush, reopen).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fault_worker as fw
from lsmvec.compaction.filenames import segment_dir_name
from lsmvec.db.maintenance import MAX_FROZEN
from lsmvec.wal import failpoints

pytestmark = pytest.mark.slow

WORKER = str(Path(fw.__file__).resolve())
CHILD_TIMEOUT_S = 120
MAX_OPS = 400
_SKIPS = {
    "wal.after_write": (0, 7, 60), "wal.after_sync": (0, 7, 60),
    "merge.before_commit": (0, 2, 5), "merge.after_commit": (0, 2, 5),
    "merge.removing_old": (0, 3, 20),
}
_DEFAULT_SKIPS = (0, 4, 20)
# Extra trials with durability="os" (the record is only in the page cache when the kill lands).
_OS_TRIALS = (("wal.after_write", 11), ("wal.after_sync", 11), ("flush.before_wal_truncate", 2))
MAX_BATCH_LOG_BYTES = 64 << 10
"""A crash_worker batch (<= 200 items of 16 floats, short contents, small metadata) as one
sealed log record stays below this."""
WAL_BYTES_BOUND = (MAX_FROZEN + 1) * (fw.SMALL_MEMTABLE + MAX_BATCH_LOG_BYTES)
"""After a crash the log past the checkpoint holds at most the live memtable and MAX_FROZEN
frozen ones, each at most memtable_bytes plus the batch that filled it."""
WAL_FILES_BOUND = MAX_FROZEN + 3
"""One file per flush roll of the unflushed memtables, plus the one a reopen starts."""


def trials() -> list[tuple[str, int, str]]:
    out = [(site, skip, "fsync") for site in sorted(failpoints.SITES)
           for skip in _SKIPS.get(site, _DEFAULT_SKIPS)]
    return out + [(site, skip, "os") for site, skip in _OS_TRIALS]


def run_trial(root: Path, number: int, site: str, skip: int, durability: str) -> dict[str, Any]:
    """One child killed at `site`; the checks of the module docstring. Returns its figures."""
    from lsmvec import generate_key
    folder = root / f"t{number}"
    data_dir, key, seed = folder / "data", generate_key(), 100 + number
    fw.create_index(data_dir, key, durability=durability)
    ack, err = folder / "ack", folder / "err"
    env = {**os.environ, fw.KEY_ENV: key.hex(), "LSMVEC_FAILPOINTS": f"{site}=crash@{skip}"}
    cmd = [sys.executable, WORKER, "failpoint", str(data_dir), str(ack), "--seed", str(seed),
           "--durability", durability, "--max-ops", str(MAX_OPS)]
    with open(err, "wb") as err_f:
        proc = fw.spawn(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err_f)
    where = f"{site}@{skip} ({durability}, seed {seed})"
    try:
        proc.wait(timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{where}: the child hung for {CHILD_TIMEOUT_S} s")
    assert proc.returncode == -signal.SIGKILL, (
        f"{where}: the child was not killed at the site (exit {proc.returncode}); a clean exit "
        f"means the site was never reached in {MAX_OPS} ops:\n{err.read_text(errors='replace')[-3000:]}")
    phase, acked = fw.read_acks(ack, 1)
    n = len(acked[0])
    planned = [fw.planned_op(seed, k) for k in range(n + 1)]
    assert acked[0] == [op.kind for op in planned[:n]], f"{where}: acks differ from the plan"
    inflight = planned[n] if phase == "workload" else None
    history = fw.History(planned[:n], inflight)

    with fw.FORK_GUARD:
        return _check_recovery(data_dir, key, seed, durability, history, where) | {
            "site": site, "skip": skip, "durability": durability, "phase": phase, "acked": n,
            "inflight": inflight.kind if inflight else None}


def _check_recovery(data_dir: Path, key: bytes, seed: int, durability: str,
                    history: fw.History, where: str) -> dict[str, Any]:
    """Reopen after the kill: the checks of the module docstring."""
    from lsmvec import Client
    with Client(data_dir, durability=durability) as client:
        index = client.load_index(fw.INDEX_NAME, key)
        state = fw.read_state(index)
        verdict = fw.judge(state, {(0, 0): history})
        assert verdict.ok, f"{where}: {verdict.summary()}: {verdict.details[:8]}"
        fw.check_queries(index, state, seed)
        stats = index.stats()
        assert stats["wal_files"] <= WAL_FILES_BOUND and stats["wal_bytes"] <= WAL_BYTES_BOUND, \
            f"{where}: log after recovery: {stats['wal_files']} files, {stats['wal_bytes']} bytes"
        wal_after_crash = (stats["wal_files"], stats["wal_bytes"])
        # An open that replays a full memtable flushes it in the background (even with
        # background_compaction off): flush() waits for that, so the listing below is stable.
        index.flush()
        assert sorted(index.list_ids()) == sorted(state), f"{where}: a flush changed the ids"
        stats = index.stats()
        seg_root = data_dir / fw.INDEX_NAME / "segments"
        on_disk = sorted(os.listdir(seg_root)) if seg_root.exists() else []
        named = sorted(segment_dir_name(s["id"]) for s in stats["segments"])
        assert on_disk == named, f"{where}: segment folders {on_disk}, manifest {named}"
        report = index.verify()
        assert report["ok"], f"{where}: verify: {report['problems'][:3]}"
        # Writes work again: one upsert, one delete, a flush that frees the log.
        vec = np.random.default_rng(seed).standard_normal(fw.DIM).astype(np.float32)
        index.upsert([{"id": "after-fault", "vector": vec, "contents": b"again", "metadata": {"n": 1}}])
        expected = dict(state)
        expected["after-fault"] = (vec.tobytes(), b"again", {"n": 1})
        if state:
            victim = sorted(state)[0]
            index.delete([victim])
            del expected[victim]
        index.flush()
        assert index.stats()["wal_files"] <= 2, f"{where}: a flush did not free the log"
    with Client(data_dir, durability=durability) as client:
        again = fw.read_state(client.load_index(fw.INDEX_NAME, key))
    assert again == expected, f"{where}: the writes after recovery did not hold"
    return {"live": len(state), "checked": verdict.checked_items, "wal": wal_after_crash}


def test_every_failpoint_crash_recovers_the_acknowledged_state(tmp_path: Path,
                                                               record_property: Any) -> None:
    plan = trials()
    assert {site for site, _s, _d in plan} == set(failpoints.SITES)
    with fw.scratch(tmp_path) as root:
        results = fw.run_parallel([(run_trial, (root, i, *t)) for i, t in enumerate(plan)])
    inflight: dict[str, int] = {}
    for r in results:
        label = r["inflight"] or "none (killed while opening)"
        inflight[label] = inflight.get(label, 0) + 1
    worst_wal = max(r["wal"][1] for r in results)
    summary = (f"failpoints: {len(results)} crash trials, {len(failpoints.SITES)} sites armed "
               f"({len(plan)} site/skip/durability arms), all killed at the site; acked ops "
               f"{sum(r['acked'] for r in results)}; op in flight at the kill {inflight}; "
               f"acknowledged items checked {sum(r['checked'] for r in results)}; acknowledged "
               f"writes lost 0, partial batches 0, orphan folders 0; largest log after recovery "
               f"{worst_wal} bytes (bound {WAL_BYTES_BOUND})")
    record_property("failpoint_summary", summary)
    print(summary)
