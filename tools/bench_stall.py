"""`python -m tools.bench_stall [--backend asyncio|trio] [--n 100000] [--dim 384]`: the event
loop's longest stall while vectors are upserted from 4 tasks and the index is then trained.

A heartbeat task sleeps 1 ms in a loop and records each gap; any work holding the GIL (or the
loop) shows up as a long gap. Prints max and p99 for the ingest phase and for train().
"""
from __future__ import annotations

import argparse
import tempfile
import time

import anyio
import numpy as np

from engine import AsyncClient, generate_key

from .datasets import clustered


async def run(n: int, dim: int) -> dict[str, float]:
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
            last = now

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
    args = parser.parse_args(argv)
    result = anyio.run(run, args.n, args.dim, backend=args.backend)
    print(f"{args.backend}: ingest {args.n:,} x {args.dim} in {result['ingest_s']:.1f} s, loop stall "
          f"max {result['ingest_max_ms']:.1f} ms (p99 {result['ingest_p99_ms']:.2f}); train() "
          f"{result['train_s']:.1f} s, stall max {result['train_max_ms']:.1f} ms "
          f"(p99 {result['train_p99_ms']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
