"""`lsmvec bench-space`: how much disk an index holds under sustained writes, against its live data.

    python -m lsmvec.tools.bench_space --mode overwrite --rounds 60      # issue 17's figure 1
    python -m lsmvec.tools.bench_space --mode mixed --seconds 600        # a 10-minute mixed load

overwrite: the same --n ids (x --dim) re-upserted --rounds times in batches of --batch, with
    background compaction as configured and NO explicit flush or compact.
mixed:     for --seconds, a steady mix per batch: 50% overwrites of live ids, 25% new ids, 25%
    deletes of live ids (the live count stays near --n), one upsert + one delete call per batch.

A sampler thread walks the index folder (sizes of every file: log, segments, store, CONFIG)
every --sample seconds and after every batch it keeps the peak. The reference "live bytes" is
the folder of a FRESH index holding exactly the live items at the end, written in one go and
closed (so: one compact segment, an empty log): the ratio folder / live is the space
amplification a user sees. Segment counts and the engine's write-pressure counters (stats()
"write_pressure": slowed and stopped writes) are reported too.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from lsmvec.tools._report import folder_bytes, mbytes, table


class Sampler:
    """Walks `folder` every `period` seconds in a thread and keeps the peak size."""

    def __init__(self, folder: Path, period: float) -> None:
        self.folder, self.period = folder, period
        self.peak = 0
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        size = folder_bytes(self.folder)
        self.samples.append(size)
        self.peak = max(self.peak, size)
        return size

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def fresh_bytes(root: Path, key: bytes, ids: list[str], vectors: np.ndarray) -> int:
    from lsmvec import Client
    with Client(root) as client:
        index = client.create_index("fresh", key, dimension=vectors.shape[1])
        for start in range(0, len(ids), 10_000):
            index.upsert(ids[start:start + 10_000], vectors[start:start + 10_000])
    return folder_bytes(root / "fresh")


def run(args: argparse.Namespace) -> dict:
    from lsmvec import Client, generate_key
    rng = np.random.default_rng(args.seed)
    key = generate_key()
    work = Path(tempfile.mkdtemp(prefix="lsmvec-bench-space-", dir=args.dir))
    live: dict[str, np.ndarray] = {}
    next_id = 0
    segments_max = 0
    rows_per_round: list[float] = []
    client = Client(work / "client")
    index = client.create_index("churn", key, dimension=args.dim)
    folder = work / "client" / "churn"
    started = time.monotonic()
    batches = 0
    with Sampler(folder, args.sample) as sampler:
        if args.mode == "overwrite":
            ids = [f"item-{i:07d}" for i in range(args.n)]
            for round_no in range(args.rounds):
                t0 = time.monotonic()
                for start in range(0, args.n, args.batch):
                    part = ids[start:start + args.batch]
                    vecs = rng.standard_normal((len(part), args.dim)).astype(np.float32)
                    index.upsert(part, vecs)
                    live.update(zip(part, vecs))
                    batches += 1
                    sampler.sample()
                rows_per_round.append(args.n / (time.monotonic() - t0))
                segments_max = max(segments_max, len(index.stats()["segments"]))
                if args.progress:
                    print(f"round {round_no + 1}: {mbytes(sampler.samples[-1])} "
                          f"peak {mbytes(sampler.peak)}", file=sys.stderr)
        else:
            deadline = started + args.seconds
            while time.monotonic() < deadline:
                keys = list(live)
                n_over = args.batch // 2 if keys else 0
                n_new = args.batch - n_over if len(live) < args.n else args.batch // 4
                n_del = min(len(keys), args.batch // 4) if len(live) >= args.n // 2 else 0
                picked = rng.choice(len(keys), n_over + n_del, replace=False) if keys else []
                over = [keys[i] for i in picked[:n_over]]
                gone = [keys[i] for i in picked[n_over:]]
                new = [f"item-{next_id + i:08d}" for i in range(n_new)]
                next_id += n_new
                part = over + new
                vecs = rng.standard_normal((len(part), args.dim)).astype(np.float32)
                index.upsert(part, vecs)
                live.update(zip(part, vecs))
                if gone:
                    index.delete(gone)
                    for item_id in gone:
                        del live[item_id]
                batches += 1
                sampler.sample()
                if batches % 50 == 0:
                    segments_max = max(segments_max, len(index.stats()["segments"]))
        stats = index.stats()
        segments_max = max(segments_max, len(stats["segments"]))
        end_bytes = sampler.sample()
    elapsed = time.monotonic() - started
    client.close()
    closed_bytes = folder_bytes(folder)
    live_ids = sorted(live)
    live_bytes = fresh_bytes(work / "fresh", key, live_ids,
                             np.stack([live[i] for i in live_ids]) if live_ids else
                             np.zeros((0, args.dim), np.float32))
    result = {
        "mode": args.mode, "n": args.n, "dim": args.dim, "batch": args.batch,
        "rounds": args.rounds if args.mode == "overwrite" else None,
        "seconds": round(elapsed, 1), "batches": batches, "live_items": len(live),
        "live_bytes": live_bytes, "peak_bytes": sampler.peak, "end_bytes": end_bytes,
        "closed_bytes": closed_bytes,
        "peak_ratio": round(sampler.peak / live_bytes, 2),
        "end_ratio": round(end_bytes / live_bytes, 2),
        "median_ratio": round(statistics.median(sampler.samples) / live_bytes, 2),
        "segments_max": segments_max, "segments_end": len(stats["segments"]),
        "write_pressure": stats.get("write_pressure"),
        "rows_per_s": round(len(live) and batches * args.batch / elapsed),
    }
    if not args.keep:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("overwrite", "mixed"), default="overwrite")
    parser.add_argument("--n", type=int, default=10_000, help="ids (overwrite) / target live count")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--sample", type=float, default=0.05, help="sampler period, seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", default=None, help="where the temporary indexes go")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return 0
    print(table(["figure", "value"], [
        ["mode", f"{result['mode']} ({result['n']:,} x {result['dim']}, batches of {result['batch']})"],
        ["live data (fresh index)", mbytes(result["live_bytes"])],
        ["peak folder", f"{mbytes(result['peak_bytes'])} ({result['peak_ratio']}x)"],
        ["median folder", f"{result['median_ratio']}x"],
        ["folder at the end / closed", f"{mbytes(result['end_bytes'])} / {mbytes(result['closed_bytes'])}"],
        ["segments max / end", f"{result['segments_max']} / {result['segments_end']}"],
        ["write pressure", json.dumps(result["write_pressure"])],
        ["elapsed", f"{result['seconds']} s ({result['batches']} batches)"],
    ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
