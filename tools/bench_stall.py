"""`python -m tools.bench_stall [--backend asyncio|trio] [--n 100000] [--dim 384]`: the event
loop's longest stall while vectors are upserted from 4 tasks and the index is then trained.

A heartbeat task sleeps 1 ms in a loop and records each gap; any work holding the GIL (or the
loop) shows up as a long gap. Prints max and p99 for the ingest phase and for train().

What used to stall: ScaNN's serialize() (about 0.4 s holding the GIL; now run in a forked
child, see compaction/scann_serialize.py), NumPy fancy-index copies of whole segments (now
gathered in 4 MiB blocks) and full garbage collections set off by 100k short-lived tuples
(now vectorised). What remains is the fork itself, about 10-18 ms at 1.2 GB resident.
"""
from __future__ import annotations

import argparse
import resource
import sys
import threading
import traceback
from pathlib import Path
import tempfile
import time

import anyio
import numpy as np

from engine import AsyncClient, generate_key

from .datasets import clustered

EXPLAIN_MS = 10.0


def _where_threads_are() -> list[str]:
    """Where the other threads stand right after a long gap (the likely culprit's last
    frames): lsmvec's own frames only."""
    me = threading.get_ident()
    found = []
    for ident, frame in sys._current_frames().items():
        if ident == me:
            continue
        stack = [f"{Path(f.filename).name}:{f.lineno}:{f.name}"
                 for f in traceback.extract_stack(frame)
                 if any(part in f.filename for part in ("/engine/", "/compaction/", "/wal/"))]
        if stack:
            found.append(" > ".join(stack[-4:]))
    return found


async def run(n: int, dim: int, explain: list | None = None) -> dict[str, float]:
    vectors = clustered(n, dim, seed=1)
    gaps: list[float] = []
    phase_marks: list[int] = []
    stop = anyio.Event()

    async def heartbeat() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await anyio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            if explain is not None and now - last > EXPLAIN_MS / 1000:
                explain.append((now - last, _where_threads_are()))
            last = time.perf_counter()

    async with AsyncClient(tempfile.mkdtemp(prefix="lsmvec-stall-")) as client:
        index = await client.create_index("s", generate_key(), dimension=dim, metric="cosine")
        async with anyio.create_task_group() as group:
            group.start_soon(heartbeat)

            async def writer(worker: int) -> None:
                for start in range(worker * 1000, n, 4000):
                    await index.upsert(ids=np.arange(start, min(start + 1000, n)),
                                       vectors=vectors[start:start + 1000])

            started = time.perf_counter()
            async with anyio.create_task_group() as writers:
                for worker in range(4):
                    writers.start_soon(writer, worker)
            ingest_s = time.perf_counter() - started
            phase_marks.append(len(gaps))
            started = time.perf_counter()
            await index.train()
            train_s = time.perf_counter() - started
            stop.set()
    ingest = np.array(gaps[:phase_marks[0]] or [0.0]) * 1000
    train = np.array(gaps[phase_marks[0]:] or [0.0]) * 1000
    return {"ingest_s": ingest_s, "ingest_max_ms": float(ingest.max()),
            "ingest_p99_ms": float(np.percentile(ingest, 99)), "train_s": train_s,
            "train_max_ms": float(train.max()), "train_p99_ms": float(np.percentile(train, 99))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_stall", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--explain", action="store_true",
                        help=f"print where lsmvec's threads were after each gap over {EXPLAIN_MS:g} ms")
    parser.add_argument("--repeat", type=int, default=1, help="runs in this process; the worst "
                        "stall over all runs is printed last")
    args = parser.parse_args(argv)
    worst = {"ingest_max_ms": 0.0, "train_max_ms": 0.0}
    for _ in range(args.repeat):
        explain: list | None = [] if args.explain else None
        result = anyio.run(run, args.n, args.dim, explain, backend=args.backend)
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{args.backend}: ingest {args.n:,} x {args.dim} in {result['ingest_s']:.1f} s, "
              f"loop stall max {result['ingest_max_ms']:.1f} ms (p99 "
              f"{result['ingest_p99_ms']:.2f}); train() {result['train_s']:.1f} s, stall max "
              f"{result['train_max_ms']:.1f} ms (p99 {result['train_p99_ms']:.2f}); "
              f"peak RSS {rss_mb:,.0f} MB")
        for gap, where in explain or []:
            print(f"  gap {gap * 1000:.1f} ms; threads then at: {' | '.join(where) or '-'}")
        for key in worst:
            worst[key] = max(worst[key], result[key])
    if args.repeat > 1:
        print(f"worst of {args.repeat}: ingest stall {worst['ingest_max_ms']:.1f} ms, train() "
              f"stall {worst['train_max_ms']:.1f} ms (target < 20 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
