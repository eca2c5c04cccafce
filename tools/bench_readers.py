"""`bench_readers`: one writer process and N read_only reader processes on one index folder.

    python -m lsmvec.tools.bench_readers --minutes 10 --readers 3

The load is tools/readers_load.py's (batches of upserts / updates / deletes / filter deletes,
flush / compact / train at fixed periods; durability "os"). One writer runs the whole time;
the run alternates phases of --phase seconds WITH the readers (N processes started for the
phase, stopped at its end) and WITHOUT, so writer ops/s with and without readers are measured
in the same process, interleaved (the machine's noise hits both alike); the ratio is the median
over phase pairs. Every read of every reader is judged against the oracle at the end (no
partial batch, no resurrected delete, nothing seen before it was started, never going back);
staleness is the time from the ack of the first batch a read does not show to the read's start.

Readers read flat out by default (--pause: seconds between reads, a paced client). JSON lines
on stdout: one per phase ({"phase": "readers"|"alone", "writer_ops_s", "reads_s" per reader,
"maintenance_s": mean seconds per flush / compact / train, "folder_bytes", "data_mdb"}), then
the summary (staleness p50 / p99 / max,
violations, ratio, folder bytes max / live data, data.mdb growth).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lsmvec.tools import readers_load as rl
from lsmvec.tools._report import folder_bytes


def _spawn(args: list[str], env: dict[str, str], err: Path) -> subprocess.Popen:
    with open(err, "ab") as handle:
        return subprocess.Popen([sys.executable, "-m", "lsmvec.tools.readers_load", *args],
                                env=env, stdout=subprocess.DEVNULL, stderr=handle)


def _opened(path: Path) -> bool:
    return path.exists() and b'"opened"' in path.read_bytes()


def _acks_between(journal: rl.Journal, t0: float, t1: float) -> int:
    return sum(1 for t in journal.acks.values() if t0 <= t < t1)


def _reads_between(path: Path, t0: float, t1: float) -> int:
    count = 0
    for line in path.read_bytes().split(b"\n")[:-1]:
        read = json.loads(line)
        count += "t0" in read and t0 <= read["t0"] < t1
    return count


def _maintenance(journal: rl.Journal, t0: float, t1: float) -> dict[str, float]:
    """Mean seconds per flush / compact / train that started in [t0, t1)."""
    took: dict[str, list[float]] = {}
    for kind, start, end in journal.maintenance:
        if t0 <= start < t1:
            took.setdefault(kind, []).append(end - start)
    return {kind: round(statistics.mean(v), 3) for kind, v in sorted(took.items())}


def run(root: Path, minutes: float, readers: int, phase: float, max_staleness: float,
        seed: int, pause: float = 0.0) -> dict:
    from lsmvec import generate_key
    key = generate_key()
    env = dict(os.environ, **{rl.KEY_ENV: key.hex()})
    folder, journal_path = root / "data", root / "journal"
    store = folder / rl.INDEX / "store" / "data.mdb"
    rl.create(folder, key)
    writer = _spawn(["writer", str(folder), str(journal_path), "--seed", str(seed),
                     "--stop-file", str(root / "stop")], env, root / "writer.err")
    while not journal_path.exists() or not rl.read_journal(journal_path).opens:
        if writer.poll() is not None:
            raise SystemExit(f"writer failed: {(root / 'writer.err').read_text()[-2000:]}")
        time.sleep(0.05)
    end = time.monotonic() + minutes * 60
    files: list[Path] = []
    ratios, phases, bytes_seen = [], [], []
    n = 0
    while time.monotonic() < end:
        with_readers = n % 2 == 0
        mine: list[Path] = []
        procs: list[subprocess.Popen] = []
        stop = root / f"stop{n}"
        if with_readers:
            for r in range(readers):
                out = root / f"reads{n}-{r}"
                mine.append(out)
                procs.append(_spawn(["reader", str(folder), str(out), "--seed", str(seed),
                                     "--stop-file", str(stop), "--max-staleness",
                                     str(max_staleness), "--pause", str(pause)],
                                    env, root / "readers.err"))
            while not all(_opened(p) for p in mine):  # measure once every reader answers
                if any(p.poll() is not None for p in procs):
                    raise SystemExit(f"reader failed: {(root / 'readers.err').read_text()[-2000:]}")
                time.sleep(0.05)
        t0 = time.monotonic()
        while (now := time.monotonic()) < t0 + phase:
            bytes_seen.append(folder_bytes(folder))
            time.sleep(min(0.5, t0 + phase - now))
        t1 = time.monotonic()
        stop.touch()
        for proc in procs:
            proc.wait()
        files += mine
        journal = rl.read_journal(journal_path)
        row = {"phase": "readers" if with_readers else "alone", "seconds": round(t1 - t0, 1),
               "writer_ops_s": round(_acks_between(journal, t0, t1) / (t1 - t0), 1),
               "reads_s": [round(_reads_between(p, t0, t1) / (t1 - t0), 1) for p in mine],
               "maintenance_s": _maintenance(journal, t0, t1),
               "folder_bytes": bytes_seen[-1], "data_mdb": store.stat().st_size}
        print(json.dumps(row), flush=True)
        phases.append(row)
        if not with_readers and len(phases) >= 2:
            ratios.append(phases[-2]["writer_ops_s"] / max(row["writer_ops_s"], 1e-9))
        n += 1
    (root / "stop").touch()
    writer.wait()
    journal = rl.read_journal(journal_path)
    verdict = rl.judge(rl.Oracle(seed, journal.acked + 1), journal, files)
    live = _live_bytes(root, key, folder, journal.acked, seed)
    summary = {
        "summary": True, "minutes": minutes, "readers": readers, "max_staleness": max_staleness,
        "read_pause": pause,
        "batches": journal.acked, "reads": verdict.reads, "violations": len(verdict.violations),
        "first_violations": verdict.violations[:3],
        "staleness_s": {k: round(v, 3) for k, v in verdict.percentiles().items()},
        "writer_ops_ratio_readers_vs_alone_median": round(statistics.median(ratios), 3) if ratios else None,
        "folder_bytes_max": max(bytes_seen), "live_bytes": live,
        "folder_max_over_live": round(max(bytes_seen) / live, 2),
        "data_mdb_first_phase": phases[0]["data_mdb"], "data_mdb_end": store.stat().st_size}
    print(json.dumps(summary), flush=True)
    return summary


def _live_bytes(root: Path, key: bytes, folder: Path, acked: int, seed: int) -> int:
    """The folder of a fresh index holding exactly the final state, written in one go, closed."""
    from lsmvec import Client
    fresh = root / "fresh"
    state = rl.state_after(seed, acked)
    rl.create(fresh, key)
    with Client(fresh) as client:
        index = client.load_index(rl.INDEX, key)
        if state:
            index.upsert([{"id": f"i{n}", "vector": rl.vector_of(seed, n, vb),
                           "metadata": {"v": vb, "b": mb}} for n, (vb, mb) in state.items()])
    with Client(folder) as client:  # and the real index holds exactly that state
        if rl.read_state(client.load_index(rl.INDEX, key)) != state:
            raise SystemExit("the index does not hold the acknowledged state")
    return folder_bytes(fresh / rl.INDEX)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--phase", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--max-staleness", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds each reader waits between reads (0: flat out)")
    parser.add_argument("--dir", help="work folder (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="lsmvec-readers-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        summary = run(root, args.minutes, args.readers, args.phase, args.max_staleness,
                      args.seed, args.pause)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
