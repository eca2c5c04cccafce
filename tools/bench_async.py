"""Group commit, measured: N concurrent upsert tasks vs the same upserts awaited one by one.

    python -m lsmvec.tools.bench_async [--backend asyncio|trio] [--fsync-delay-ms X] [--repeat 5]
                                [--tasks 200] [--items 10] [--dim 384]

Both runs use durability="fsync" (every upsert returns only after its log record is on disk).
os.fdatasync is wrapped to count calls and, with --fsync-delay-ms, to sleep that long first:
this machine's fsync may take well under a millisecond, so wall time alone understates what
sharing one fsync among many callers saves on a slower disk. Prints wall time, upserts/s and
fsyncs and worker-thread calls per call and the garbage collector's pauses for both runs, and
the speed-up per round and its median. The heap is collected before each run.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np

from lsmvec import AsyncClient, AsyncIndex, generate_key

from .gc_pauses import GcPauses

__all__ = ["RunResult", "bench", "main"]


@dataclass
class RunResult:
    """One timed run: wall seconds, upsert calls, fdatasync calls, worker-thread batches and
    the garbage collector's pauses during the run."""

    name: str
    seconds: float
    calls: int
    fsyncs: int
    batches: int
    gc_seconds: float

    def line(self, items: int) -> str:
        return (f"{self.name:<11} {self.seconds * 1000:8.1f} ms  {self.calls / self.seconds:7.0f} "
                f"upserts/s  {self.calls * items / self.seconds:8.0f} vectors/s  "
                f"{self.fsyncs / self.calls:.3f} fsyncs and {self.batches / self.calls:.3f} "
                f"thread calls per call  gc pauses {self.gc_seconds * 1000:5.1f} ms")


class SyncCounter:
    """Wraps os.fdatasync: counts calls and optionally sleeps `delay_s` to emulate a slow disk."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self.count = 0
        self._lock = threading.Lock()

    @contextmanager
    def installed(self) -> Iterator["SyncCounter"]:
        real: Callable[[int], None] = os.fdatasync

        def fdatasync(fd: int) -> None:
            with self._lock:
                self.count += 1
            if self.delay_s:
                time.sleep(self.delay_s)
            real(fd)

        os.fdatasync = fdatasync  # type: ignore[assignment]
        try:
            yield self
        finally:
            os.fdatasync = real  # type: ignore[assignment]


async def _timed(name: str, counter: SyncCounter, index: AsyncIndex, tasks: int,
                 body: Callable[[], Awaitable[None]]) -> RunResult:
    gc.collect()  # both runs start from the same heap; pauses inside a run are reported
    before, batches = counter.count, index._writes.batches
    with GcPauses().installed() as clock:
        start = time.perf_counter()
        await body()
        seconds = time.perf_counter() - start
    return RunResult(name, seconds, tasks, counter.count - before,
                     index._writes.batches - batches, clock.seconds)


async def bench(folder: Path, *, tasks: int, items: int, dim: int, delay_s: float,
                repeat: int = 1) -> list[tuple[RunResult, RunResult]]:
    """`repeat` rounds of: upsert `tasks` batches of `items` vectors one by one into a fresh
    index, then all concurrently into another. Raises AssertionError when an index does not
    end up with every vector."""
    rng = np.random.default_rng(0)
    batches = rng.standard_normal((tasks, items, dim)).astype(np.float32)
    ids = [[f"t{t}-{i}" for i in range(items)] for t in range(tasks)]
    key = generate_key()
    counter = SyncCounter(delay_s)
    rounds = []
    with counter.installed():
        async with AsyncClient(folder, durability="fsync") as client:
            for r in range(repeat):
                one_by_one = await client.create_index(f"one_by_one{r}", key, dimension=dim)
                concurrent = await client.create_index(f"concurrent{r}", key, dimension=dim)
                for index in (one_by_one, concurrent):  # warm up the threads and the log
                    await index.upsert(ids=["warm"], vectors=batches[0][:1])

                async def sequential() -> None:
                    for t in range(tasks):
                        await one_by_one.upsert(ids=ids[t], vectors=batches[t])

                async def together() -> None:
                    async with anyio.create_task_group() as tg:
                        for t in range(tasks):
                            tg.start_soon(lambda t=t: concurrent.upsert(ids=ids[t],
                                                                         vectors=batches[t]))

                seq = await _timed("one by one", counter, one_by_one, tasks, sequential)
                conc = await _timed("concurrent", counter, concurrent, tasks, together)
                for index in (one_by_one, concurrent):
                    n = await index.get_num_vectors()
                    assert n == tasks * items + 1, f"{n} vectors after the run, expected {tasks * items + 1}"
                    await index.delete_index()
                rounds.append((seq, conc))
    return rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--fsync-delay-ms", type=float, default=0.0,
                        help="sleep this long inside every os.fdatasync (emulates a slower disk)")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeat", type=int, default=5, help="rounds (fresh indexes each)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lsmvec-bench-async-") as tmp:
        rounds = anyio.run(lambda: bench(Path(tmp), tasks=args.tasks, items=args.items,
                                         dim=args.dim, delay_s=args.fsync_delay_ms / 1000,
                                         repeat=args.repeat),
                           backend=args.backend)
    print(f"backend={args.backend} tasks={args.tasks} items/task={args.items} dim={args.dim} "
          f"durability=fsync added fsync delay={args.fsync_delay_ms} ms")
    for seq, conc in rounds:
        print(seq.line(args.items))
        print(conc.line(args.items))
        print(f"  speed-up {seq.seconds / conc.seconds:.1f}x")
    ups = sorted(seq.seconds / conc.seconds for seq, conc in rounds)
    print(f"speed-up median {statistics.median(ups):.1f}x (min {ups[0]:.1f}x, max {ups[-1]:.1f}x) "
          f"over {len(ups)} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
