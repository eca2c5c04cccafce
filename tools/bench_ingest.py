"""`lsmvec bench-ingest` (= `python -m lsmvec.tools.bench_ingest`): durable upsert throughput, sync
counts, reopen and log replay speed, and the raw disk baseline they are bounded by. (`lsmvec
bench` is another benchmark: lsmvec against raw ScaNN, recall and query speed.)

Every configuration runs in a fresh subprocess (`python -m lsmvec.tools.bench_ingest --one CONFIG
--json`), so the page cache, allocator and thread state one leaves behind do not flatter or hurt
the next:
  disk        write + fdatasync blocks of one batch's size (1.5 MB at 1000 x 384) to a new file
  fsync-<T>t  durability="fsync" (the default), T threads on one index (group commit); default
              settings, so background flushes into segments run during the ingest
  os-1t       durability="os", one thread: the log is written per call, not fsynced
  logonly-1t  durability="fsync", one thread, background compaction off and a memtable larger
              than the data: the log path alone. It ends like kill -9 (os._exit, no close):
              everything acknowledged is in the log and nowhere else
  reopen      a new process opens what fsync-<first T>t left after its clean close
  replay      a new process opens what logonly-1t left: log replay (+ load), then close, which
              flushes the replayed rows into a segment
In each child, os.fsync and os.fdatasync are wrapped by counters, so "syncs/call" is what the
engine asked the OS for during the ingest loop, background flushes included (group commit
drives it below 1). `--profile` runs the 1-thread ingest loop in this process under cProfile instead.

`--vs-reference` runs tools/ingest_reference.py instead: lsmvec against the reference product
(cyborgdb-core) and the disk's ceiling, interleaved in one process (see there).
"""
from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from tqdm import tqdm

from ._report import NativeLogFilter, folder_bytes, seconds, table
from .datasets import clustered

INDEX_NAME = "bench"
# A fixed key: the replay child must open what the ingest child wrote, and a benchmark's data
# is synthetic. Never do this with real data.
BENCH_KEY = hashlib.sha256(b"lsmvec benchmark key").digest()
# Engine tuning options (stored in the index's CONFIG) that keep every row in the log for the
# replay measurement; used only when the engine knows them (it stores unknown ones silently).
LOG_ONLY_OPTIONS = {"background_compaction": False}
LOG_ONLY_MEMTABLE_OPTION = "memtable_bytes"


# -- counting syncs ---------------------------------------------------------------------------

class SyncCounter:
    """Wraps os.fsync / os.fdatasync (the engine calls them through the os module) and counts."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._saved: dict[str, Callable[[int], None]] = {}

    def _wrap(self, real: Callable[[int], None]) -> Callable[[int], None]:
        def counted(fd: int) -> None:
            with self._lock:
                self.count += 1
            real(fd)
        return counted

    def __enter__(self) -> "SyncCounter":
        for name in ("fsync", "fdatasync"):
            real = getattr(os, name, None)
            if real is not None:
                self._saved[name] = real
                setattr(os, name, self._wrap(real))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, real in self._saved.items():
            setattr(os, name, real)


# -- the children -----------------------------------------------------------------------------

def _engine_has_option(name: str) -> bool:
    """Whether the engine knows tuning option `name`: one of its IndexOptions, or (an engine
    without them, which stored unknown options silently) a name its source reads."""
    try:
        from lsmvec.request.options import IndexOptions
    except ImportError:
        import lsmvec
        needles = (f'"{name}"', f"'{name}'")
        return any(any(n in path.read_text(errors="replace") for n in needles)
                   for path in Path(lsmvec.__file__).parent.rglob("*.py"))
    return name in IndexOptions.names()


def _log_only_options(n: int, dim: int) -> dict[str, Any]:
    """Options that keep `n` rows in one memtable with no background flush, or {} if unknown."""
    options: dict[str, Any] = dict(LOG_ONLY_OPTIONS)
    options[LOG_ONLY_MEMTABLE_OPTION] = 4 * n * (dim * 4 + 256) + (64 << 20)
    return options if all(_engine_has_option(k) for k in options) else {}


def _parse_ingest(config: str) -> tuple[str, int, bool]:
    """"fsync-8t" -> ("fsync", 8, False); "logonly-1t" -> ("fsync", 1, True)."""
    mode, threads = config.split("-")
    log_only = mode == "logonly"
    return ("fsync" if log_only else mode), int(threads.rstrip("t")), log_only


def _batches(n: int, batch: int) -> list[tuple[int, int]]:
    return [(start, min(n, start + batch)) for start in range(0, n, batch)]


def run_ingest(args: argparse.Namespace, config: str, folder: Path,
               profiler: cProfile.Profile | None = None) -> dict[str, Any]:
    """One ingest configuration; `folder` is kept (the replay child reads the fsync-1t one)."""
    from lsmvec import Client

    durability, threads, log_only = _parse_ingest(config)
    data = clustered(args.n, args.dim, seed=0)
    ids = np.arange(args.n, dtype=np.int64)
    batches = _batches(args.n, args.batch)
    options = _log_only_options(args.n, args.dim) if log_only else {}
    client = Client(folder, durability=durability)
    index = client.create_index(INDEX_NAME, BENCH_KEY, dimension=args.dim, metric=args.metric, **options)
    latencies = np.zeros(len(batches))
    bar = tqdm(total=args.n, unit="rows", unit_scale=True, desc=config, leave=False)
    bar_lock = threading.Lock()

    def one(i: int) -> None:
        start, stop = batches[i]
        t0 = time.perf_counter()
        index.upsert(ids=ids[start:stop], vectors=data[start:stop])
        latencies[i] = time.perf_counter() - t0
        with bar_lock:
            bar.update(stop - start)

    with SyncCounter() as syncs:
        if profiler is not None:
            profiler.enable()
        t0 = time.perf_counter()
        if threads == 1:
            for i in range(len(batches)):
                one(i)
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                list(pool.map(one, range(len(batches))))
        elapsed = time.perf_counter() - t0
        if profiler is not None:
            profiler.disable()
        synced = syncs.count
    bar.close()
    written = folder_bytes(folder / INDEX_NAME)
    if index.get_num_vectors() != args.n:
        raise SystemExit(f"{config}: index holds {index.get_num_vectors()} vectors, expected {args.n}")
    result = {
        "config": config, "kind": "ingest", "durability": durability, "threads": threads,
        "log_only": log_only, "n": args.n, "dim": args.dim, "batch": args.batch, "metric": args.metric,
        "calls": len(batches), "seconds": elapsed, "vectors_per_s": args.n / elapsed,
        "mb_per_s": data.nbytes / 1e6 / elapsed, "index_bytes": written,
        "syncs": synced, "syncs_per_call": synced / len(batches),
        "call_p50_s": float(np.percentile(latencies, 50)), "call_p99_s": float(np.percentile(latencies, 99)),
        "close_s": None, "options": options,
    }
    if log_only:
        return result  # the caller ends the process without close(), like kill -9
    t0 = time.perf_counter()
    index.close()
    client.close()
    result["close_s"] = time.perf_counter() - t0
    return result


def _rows_in_segments(stats: dict[str, Any]) -> int | None:
    segments = stats.get("segments")
    if not isinstance(segments, list):
        return None
    return sum(int(seg.get("rows", 0)) - int(seg.get("dead_rows", 0)) for seg in segments if isinstance(seg, dict))


def run_reopen(args: argparse.Namespace, folder: Path, config: str) -> dict[str, Any]:
    """Open the index another child left, in this fresh process, and time it. "replay" also
    times the close, which flushes the replayed rows into a segment."""
    from lsmvec import Client

    wal_bytes = folder_bytes(folder / INDEX_NAME / "wal")
    t0 = time.perf_counter()
    client = Client(folder)
    index = client.load_index(INDEX_NAME, BENCH_KEY)
    elapsed = time.perf_counter() - t0
    count = index.get_num_vectors()
    if count != args.n:
        raise SystemExit(f"{config}: reopened index holds {count} vectors, expected {args.n}")
    try:
        stats = index.stats()
    except Exception as exc:  # stats() is an extra whose shape still changes: report, go on
        stats = {"error": f"{exc.__class__.__name__}: {exc}"}
    in_segments = _rows_in_segments(stats)
    close_time = None
    if config == "replay":
        t0 = time.perf_counter()
        index.close()
        client.close()
        close_time = time.perf_counter() - t0
    else:
        index.close()
        client.close()
    return {
        "config": config, "kind": "reopen", "source": folder.name, "vectors": count, "seconds": elapsed,
        "vectors_per_s": count / elapsed if elapsed > 0 else float("inf"),
        "wal_bytes": wal_bytes, "wal_mb_per_s": wal_bytes / 1e6 / elapsed if elapsed > 0 else float("inf"),
        "rows_from_log": None if in_segments is None else count - in_segments, "close_s": close_time,
    }


def run_disk(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """The ceiling: append one batch's worth of bytes and fdatasync, as the log does per group."""
    block = os.urandom(args.batch * args.dim * 4)
    count = len(_batches(args.n, args.batch))
    sync = getattr(os, "fdatasync", os.fsync)
    path = folder / "disk-baseline.bin"
    latencies = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        t0 = time.perf_counter()
        for _ in tqdm(range(count), unit="blocks", desc="disk", leave=False):
            t1 = time.perf_counter()
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view):]
            sync(fd)
            latencies.append(time.perf_counter() - t1)
        elapsed = time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink()
    return {
        "config": "disk", "kind": "disk", "block_bytes": len(block), "blocks": count, "seconds": elapsed,
        "mb_per_s": len(block) * count / 1e6 / elapsed, "write_sync_p50_s": statistics.median(latencies),
    }


def run_one(args: argparse.Namespace, config: str) -> dict[str, Any]:
    base = Path(args.data)
    if config == "disk":
        return run_disk(args, base)
    if config == "reopen":
        return run_reopen(args, base / args.source, config)
    if config == "replay":
        return run_reopen(args, base / "logonly-1t", config)
    folder = base / config
    shutil.rmtree(folder, ignore_errors=True)
    return run_ingest(args, config, folder)


# -- the parent -------------------------------------------------------------------------------

def _configs(threads: list[int]) -> Iterator[str]:
    yield "disk"
    for t in threads:
        yield f"fsync-{t}t"
    yield "os-1t"
    yield "logonly-1t"
    yield "reopen"
    yield "replay"


def _spawn(args: argparse.Namespace, config: str, base: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "lsmvec.tools.bench_ingest", "--one", config, "--json", "--data", str(base),
           "--source", f"fsync-{args.thread_counts[0]}t", *(["--verbose"] if args.verbose else []),
           "--n", str(args.n), "--dim", str(args.dim), "--batch", str(args.batch), "--metric", args.metric]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # stderr: progress bars, tracebacks
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"config": config, "error": f"child exited with status {proc.returncode}"}
    return json.loads(lines[-1])


def _ingest_label(r: dict[str, Any]) -> str:
    label = f"{r['durability']}, {r['threads']} thread{'s' if r['threads'] > 1 else ''}"
    return label + (", log only, no close" if r.get("log_only") else "")


def _summary(results: list[dict[str, Any]]) -> str:
    by = {r["config"]: r for r in results}
    disk = by.get("disk", {}).get("mb_per_s")
    out = []
    for r in results:
        if "error" in r:
            out.append(f"{r['config']}: {r['error']}")
    if disk:
        d = by["disk"]
        out.append(f"raw disk: {d['blocks']} x {d['block_bytes'] / 1e6:.2f} MB append + fdatasync: "
                   f"{disk:,.0f} MB/s (median {seconds(d['write_sync_p50_s'])} per block)\n")
    rows = []
    for r in results:
        if r.get("kind") == "ingest":
            rows.append([_ingest_label(r), f"{r['vectors_per_s']:,.0f}", f"{r['mb_per_s']:,.0f}",
                         f"{r['mb_per_s'] / disk:.0%}" if disk else "n/a", f"{r['syncs_per_call']:.2f}",
                         seconds(r["call_p50_s"]), seconds(r["call_p99_s"]),
                         seconds(r["close_s"]) if r["close_s"] is not None else "-"])
    if rows:
        first = next(r for r in results if r.get("kind") == "ingest")
        out.append(table([f"upsert {first['n']:,} x {first['dim']}, {first['batch']:,} rows/call", "vectors/s",
                          "MB/s", "of disk", "syncs/call", "call p50", "call p99", "close"], rows))
    for name, label in (("reopen", "reopen after a clean close"), ("replay", "reopen after kill")):
        r = by.get(name)
        if not r or "error" in r:
            continue
        from_log = r["rows_from_log"]
        what = "unknown share from the log" if from_log is None else f"{from_log:,} rows replayed from the log"
        line = (f"\n{label} ({r['source']}): {r['vectors']:,} vectors in {seconds(r['seconds'])} = "
                f"{r['vectors_per_s']:,.0f} vectors/s; {what}")
        if from_log:
            line += f", {r['wal_mb_per_s']:,.0f} MB/s of log"
        if r.get("close_s") is not None:
            line += f"\n  then close (flushes the replayed rows into a segment): {seconds(r['close_s'])}"
        out.append(line)
    return "\n".join(out)


def _profile(args: argparse.Namespace, config: str) -> None:
    """The ingest loop of one configuration (not its close) under cProfile, in this process."""
    base = Path(tempfile.mkdtemp(prefix="lsmvec-bench-", dir=args.dir))
    try:
        profiler = cProfile.Profile()
        result = run_ingest(args, config, base / config, profiler)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{config} under cProfile: {result['vectors_per_s']:,.0f} vectors/s (profiling slows it); "
          f"call p50 {seconds(result['call_p50_s'])}, p99 {seconds(result['call_p99_s'])}")
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats(args.profile).print_stats(15)
    print(buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lsmvec bench-ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="vectors per configuration (default 100000)")
    parser.add_argument("--dim", type=int, default=384, help="dimension (default 384)")
    parser.add_argument("--batch", type=int, default=1000, help="rows per upsert call (default 1000)")
    parser.add_argument("--threads", default="1,8", help="thread counts for durability=fsync (default 1,8)")
    parser.add_argument("--metric", default="cosine", choices=("cosine", "euclidean", "squared_euclidean"))
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                        help="write the results as JSON to PATH (bare --json: stdout)")
    parser.add_argument("--dir", default=None, help="where to put the data (default: the temp dir)")
    parser.add_argument("--profile", nargs="?", const="tottime", default=None, metavar="SORT",
                        help="profile the fsync-1t ingest loop in-process instead (sort: tottime, "
                             "cumulative); with --one CONFIG, that configuration's")
    parser.add_argument("--vs-reference", action="store_true",
                        help="lsmvec vs cyborgdb-core and the disk's ceiling, interleaved in this "
                             "process, one thread (tools/ingest_reference.py)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of --vs-reference (default 5)")
    parser.add_argument("--verbose", action="store_true", help="show ScaNN's native INFO/WARNING log lines")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child: one configuration
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)  # child: the shared data folder
    parser.add_argument("--source", default="fsync-1t", help=argparse.SUPPRESS)  # replay child: what to reopen
    args = parser.parse_args(argv)
    try:
        threads = args.thread_counts = [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error(f"--threads takes comma-separated ints, got {args.threads!r}")
    if args.n < 1 or args.dim < 1 or args.batch < 1 or not threads or min(threads) < 1:
        parser.error("--n, --dim, --batch and --threads must be positive")

    if args.vs_reference:
        from .ingest_reference import vs_reference
        with NativeLogFilter(enabled=not args.verbose):
            result = vs_reference(args)
        if args.json and args.json != "-":
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        elif args.json:
            print(json.dumps(result))
        return 0
    if args.profile:
        with NativeLogFilter(enabled=not args.verbose):
            _profile(args, args.one or "fsync-1t")
        return 0
    if args.one:
        with NativeLogFilter(enabled=not args.verbose):
            result = run_one(args, args.one)
        text = json.dumps(result)
        if args.json in (None, "-"):
            print(text, flush=True)
        else:
            Path(args.json).write_text(text + "\n")
        if result.get("log_only"):
            os._exit(0)  # like kill -9: no close, no flush; the replay child reopens this
        return 0

    env = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    print(f"lsmvec bench-ingest: {args.n:,} x {args.dim} float32 ({args.metric}), batches of {args.batch:,}; "
          f"{env['cpus']} CPUs, Python {env['python']}; each configuration in a fresh process")
    base = Path(tempfile.mkdtemp(prefix="lsmvec-bench-", dir=args.dir))
    results = []
    try:
        configs = list(_configs(threads))
        for i, config in enumerate(configs, 1):
            print(f"[{i}/{len(configs)}] {config}", file=sys.stderr, flush=True)
            results.append(_spawn(args, config, base))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(_summary(results))
    if args.json:
        payload = json.dumps({"env": env, "results": results}, indent=1)
        if args.json == "-":
            print(payload)
        else:
            Path(args.json).write_text(payload + "\n")
            print(f"results written to {args.json}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
