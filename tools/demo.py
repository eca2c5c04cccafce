"""`python -m lsmvec.tools.demo` (what `make demo` runs): a guided tour of lsmvec with timings.

Creates an index in a temporary folder, upserts synthetic clustered vectors (durable default
settings), queries them at once (single queries, one batch, recall@10 against numpy brute
force), flushes (every memtable into an immutable segment; --train merges them into one) and
says what kind of segments stats() shows (exact "brute" scans or trained ScaNN trees), queries
again, closes, reopens, checks the same queries return the same ids as before close, and
removes the folder. Exit status 1 when a
check fails (a count, a result shape, or a query that differs after reopen).
"""
from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lsmvec import Client, generate_key

from ._report import NativeLogFilter, folder_bytes, mbytes, rate, seconds
from .datasets import brute_force_topk, clustered, clustered_queries

INDEX_NAME = "demo"
N_SINGLE_QUERIES = 5
N_BATCH_QUERIES = 100
TOP_K = 10
RECALL_TARGET = 0.95  # what the engine's automatic n_probes aims at (docs/api.md)


def _ids(hits: list[dict[str, Any]]) -> list[str]:
    return [hit["id"] for hit in hits]


def _recall(results: list[list[dict[str, Any]]], truth: np.ndarray) -> float:
    found = sum(len({int(i) for i in _ids(hits)} & set(row.tolist())) for hits, row in zip(results, truth))
    return found / truth.size


def _stats_line(index: Any) -> str:
    """stats() is an lsmvec extra whose keys still grow: show what is there, never fail on it."""
    try:
        stats = index.stats()
    except Exception as exc:  # a demo must not die on a diagnostic; say what happened
        return f"(stats() unavailable: {exc.__class__.__name__})"
    shown = []
    for key in ("vectors", "memtable_rows", "frozen_memtables", "segments", "wal_files", "wal_bytes",
                "training_state"):
        value = stats.get(key)
        if value is None:
            continue
        if key == "segments" and isinstance(value, list):
            kinds = sorted({str(seg.get("kind")) for seg in value if isinstance(seg, dict)})
            rows = [seg.get("rows") for seg in value if isinstance(seg, dict)]
            value = f"{len(value)} {rows} {'/'.join(kinds)}".rstrip()
        shown.append(f"{key}={value:,}" if isinstance(value, int) else f"{key}={value}")
    return ", ".join(shown) or str(stats)


_KINDS = {"brute": "exact (brute: a numpy scan of every row)",
          "tree_ah": "trained ScaNN (tree_ah: partitions + asymmetric hashing + exact reorder)"}


def _segments_said(index: Any) -> str:
    """What stats() shows of the segments, in words: never claims a kind it does not list."""
    try:
        segments = index.stats().get("segments") or []
    except Exception as exc:  # a demo must not die on a diagnostic; say what happened
        return f"(stats() unavailable: {exc.__class__.__name__})"
    if not segments:
        return "no segments"
    parts = []
    for kind in sorted({str(seg.get("kind")) for seg in segments}):
        mine = [seg for seg in segments if str(seg.get("kind")) == kind]
        rows = sum(int(seg.get("rows") or 0) for seg in mine)
        leaves = sum(int(seg.get("n_lists") or 0) for seg in mine)
        parts.append(f"{len(mine)} {_KINDS.get(kind, kind)} segment(s), {rows:,} rows"
                     + (f", {leaves:,} leaves" if leaves else ""))
    return "; ".join(parts)


def _query_round(index: Any, queries: np.ndarray, truth: np.ndarray, checks: "Checks"
                 ) -> tuple[list[list[str]], list[list[str]], float]:
    """Single queries (latency), one batch (throughput, recall@TOP_K): the ids, for comparison."""
    singles: list[list[str]] = []
    latencies: list[float] = []
    for q in queries[:N_SINGLE_QUERIES]:
        t0 = time.perf_counter()
        hits = index.query(q, top_k=TOP_K)
        latencies.append(time.perf_counter() - t0)
        singles.append(_ids(hits))
    print(f"  {N_SINGLE_QUERIES} single queries (top_k={TOP_K}): median {seconds(statistics.median(latencies))}, "
          f"min {seconds(min(latencies))}, max {seconds(max(latencies))}")
    first = index.query(queries[0], top_k=3)
    print("  query 0 -> " + ", ".join(f"id {h['id']} (distance {h['distance']:.4f})" for h in first))
    t0 = time.perf_counter()
    results = index.query(queries, top_k=TOP_K)
    elapsed = time.perf_counter() - t0
    recall = _recall(results, truth)
    print(f"  batch of {len(queries)} queries: {seconds(elapsed)} ({seconds(elapsed / len(queries))} per query); "
          f"recall@{TOP_K} vs numpy brute force: {recall:.4f}")
    checks.expect(len(results) == len(queries) and all(len(h) == TOP_K for h in results),
                  f"batch query returned {len(queries)} lists of {TOP_K} hits")
    return singles, [_ids(h) for h in results], recall


class Checks:
    """Collects pass/fail lines; the demo's exit status is whether all passed."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def expect(self, ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAILED'}] {what}")
        if not ok:
            self.failed.append(what)


def run(n: int, dim: int, batch: int, metric: str, folder: Path, train: bool = False) -> int:
    checks = Checks()
    key = generate_key()
    print(f"lsmvec demo: {n:,} x {dim} float32 vectors, metric={metric}, batches of {batch:,}, "
          f"durability=fsync (default)\nfolder: {folder}\n")

    t0 = time.perf_counter()
    data = clustered(n, dim, seed=0)
    queries = clustered_queries(N_BATCH_QUERIES, dim, seed=0)
    ids = np.arange(n, dtype=np.int64)
    print(f"generated {n:,} clustered vectors + {N_BATCH_QUERIES} queries in {seconds(time.perf_counter() - t0)}")

    # -- ingest ---------------------------------------------------------------------------------
    client = Client(folder)
    index = client.create_index(INDEX_NAME, key, dimension=dim, metric=metric)
    t0 = time.perf_counter()
    with tqdm(total=n, unit="rows", unit_scale=True, desc="upsert", leave=False) as bar:
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            index.upsert(ids=ids[start:stop], vectors=data[start:stop])
            bar.update(stop - start)
    ingest = time.perf_counter() - t0
    print(f"\n1. upsert: {n:,} rows in {seconds(ingest)} = {rate(n, ingest, 'rows')} "
          f"({rate(data.nbytes / 1e6, ingest, 'MB')} of vectors), each call durable on return")
    checks.expect(index.get_num_vectors() == n, f"get_num_vectors() == {n:,}")
    print(f"  stats: {_stats_line(index)}")

    # -- queries on fresh data, then on trained segments ---------------------------------------
    truth = brute_force_topk(data, queries, TOP_K, metric)
    print("\n2. queries right after the upserts (read-your-writes; unflushed rows are searched exactly)")
    _query_round(index, queries, truth, checks)
    t0 = time.perf_counter()
    if train:
        index.train()
        what = "train(): flushed and merged everything into one segment"
    else:
        index.flush()
        what = "flush(): every memtable written as an immutable segment"
    print(f"\n3. {what} in {seconds(time.perf_counter() - t0)}: {_segments_said(index)}"
          f"\n  stats: {_stats_line(index)}")
    singles, batch_results, recall = _query_round(index, queries, truth, checks)
    if recall < RECALL_TARGET:
        print(f"  note: recall is below the {RECALL_TARGET} target of the automatic n_probes")

    # -- close and reopen -----------------------------------------------------------------------
    t0 = time.perf_counter()
    index.close()
    client.close()
    close_time = time.perf_counter() - t0
    on_disk = folder_bytes(folder)
    t0 = time.perf_counter()
    client = Client(folder)
    index = client.load_index(INDEX_NAME, key)
    reopen = time.perf_counter() - t0
    print(f"\n4. close: {seconds(close_time)}; on disk: {mbytes(on_disk)}; "
          f"reopen (load_index): {seconds(reopen)} = {rate(n, reopen, 'rows')}")
    print(f"  stats: {_stats_line(index)}")
    checks.expect(index.get_num_vectors() == n, f"get_num_vectors() == {n:,} after reopen")
    again_singles = [_ids(index.query(q, top_k=TOP_K)) for q in queries[:N_SINGLE_QUERIES]]
    again_batch = [_ids(h) for h in index.query(queries, top_k=TOP_K)]
    same = sum(a == b for a, b in zip(again_singles, singles))
    same += sum(a == b for a, b in zip(again_batch, batch_results))
    total = N_SINGLE_QUERIES + len(queries)
    checks.expect(same == total, f"same ids after reopen for {same}/{total} queries")
    index.close()
    client.close()

    print("\n" + ("all checks passed" if not checks.failed else f"FAILED: {'; '.join(checks.failed)}"))
    return 0 if not checks.failed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsmvec.tools.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="vectors to upsert (default 100000)")
    parser.add_argument("--dim", type=int, default=384, help="dimension (default 384)")
    parser.add_argument("--batch", type=int, default=1000, help="rows per upsert call (default 1000)")
    parser.add_argument("--metric", default="cosine", choices=("cosine", "euclidean", "squared_euclidean"))
    parser.add_argument("--train", action="store_true",
                        help="train() (merge into one segment) instead of flush(); slower")
    parser.add_argument("--verbose", action="store_true", help="show ScaNN's native INFO/WARNING log lines")
    args = parser.parse_args(argv)
    if args.n < N_BATCH_QUERIES or args.dim < 1 or args.batch < 1:
        parser.error(f"need --n >= {N_BATCH_QUERIES}, --dim >= 1, --batch >= 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="lsmvec-demo-"))
    native = NativeLogFilter(enabled=not args.verbose)
    try:
        with native:
            status = run(args.n, args.dim, args.batch, args.metric, folder, args.train)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    hidden = f"; {native.hidden} native ScaNN log lines hidden (--verbose shows them)" if native.hidden else ""
    print(f"total {seconds(time.perf_counter() - started)}; removed {folder}{hidden}")
    return status


if __name__ == "__main__":
    sys.exit(main())
