"""Timing helpers of `lsmvec bench` (tools/bench_lsm.py): recall, single-query passes
interleaved with raw ScaNN's, batched calls."""
from __future__ import annotations

import statistics
import sys
import time
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from .bench_lsm_report import TOP_K

WARMUP_QUERIES = 20


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the true top-k found; `found` may hold -1 padding."""
    hits = sum(len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


def padded(found: np.ndarray) -> np.ndarray:
    out = np.full(TOP_K, -1, np.int64)
    out[:len(found)] = found[:TOP_K]
    return out


def lsm_ids(results: list[list[dict[str, Any]]], k: int) -> np.ndarray:
    out = np.full((len(results), k), -1, np.int64)
    for i, hits in enumerate(results):
        for j, hit in enumerate(hits[:k]):
            out[i, j] = int(hit["id"])
    return out


def pass_times(search_one: Callable[[np.ndarray], Any], queries: np.ndarray
               ) -> tuple[np.ndarray, float]:
    """One pass, one call per query: each call's latency (seconds), and the pass's CPU time
    in this thread (what other processes' load does not add to)."""
    lat = np.empty(len(queries))
    clock = time.perf_counter
    cpu = time.thread_time()
    for i, q in enumerate(queries):
        t0 = clock()
        search_one(q)
        lat[i] = clock() - t0
    return lat, time.thread_time() - cpu


def interleaved_single(raw_one: Callable[[np.ndarray], Any], raw_queries: np.ndarray,
                       modes: dict[str, tuple[Callable[[np.ndarray], Any], Callable | None]],
                       queries: np.ndarray, rounds: int, desc: str) -> dict[str, Any]:
    """Single-query QPS of raw ScaNN and of each lsmvec mode (name -> (query one, set-up run
    before its passes)), interleaved: every round times, for each mode, a raw pass and that
    mode's pass over all queries back to back (which goes first alternates by round), so load
    from other processes hits both sides of each ratio alike. Per mode: the median over rounds
    of raw time / lsmvec time (the QPS ratio) -- of wall time, and of this thread's CPU time,
    which another process taking the core does not inflate --, the median QPS, p50/p99."""
    for name, (one, setup) in modes.items():  # warm-up: caches, branch predictors, the lot
        if setup is not None:
            setup()
        for q, rq in zip(queries[:WARMUP_QUERIES], raw_queries[:WARMUP_QUERIES]):
            one(q)
            raw_one(rq)
    times: dict[str, list] = {name: [] for name in modes}
    raw_times: dict[str, list] = {name: [] for name in modes}
    cpu: dict[str, list] = {name: [] for name in modes}
    raw_cpu: dict[str, list] = {name: [] for name in modes}
    lat: dict[str, list] = {name: [] for name in (*modes, "raw")}
    for rnd in tqdm(range(rounds), desc=desc, unit="round", leave=False, file=sys.stderr):
        for name, (one, setup) in modes.items():
            if setup is not None:
                setup()
            order = ("raw", name) if rnd % 2 == 0 else (name, "raw")
            for who in order:
                got, used = (pass_times(raw_one, raw_queries) if who == "raw"
                             else pass_times(one, queries))
                (raw_times[name] if who == "raw" else times[name]).append(got.sum())
                (raw_cpu[name] if who == "raw" else cpu[name]).append(used)
                lat[who].append(got)
    out: dict[str, Any] = {}
    n = len(queries)
    for name in modes:
        ratios = [r / t for r, t in zip(raw_times[name], times[name])]
        out[name] = {"ratio": statistics.median(ratios), "ratios": ratios,
                     "cpu_ratio": statistics.median(r / t for r, t in zip(raw_cpu[name], cpu[name])),
                     "qps": n / statistics.median(times[name]),
                     "raw_qps": n / statistics.median(raw_times[name])}
    for who, parts in lat.items():
        joined = np.concatenate(parts)
        out.setdefault(who, {}).update(p50_ms=float(np.percentile(joined, 50) * 1e3),
                                       p99_ms=float(np.percentile(joined, 99) * 1e3))
    return out


def time_batched(search_all: Callable[[np.ndarray], np.ndarray], queries: np.ndarray,
                 repeats: int) -> tuple[np.ndarray, float]:
    """The whole query set in one call, `repeats` times: (ids, median seconds per call)."""
    search_all(queries[:WARMUP_QUERIES])
    times, ids = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        ids = search_all(queries)
        times.append(time.perf_counter() - t0)
    return ids, statistics.median(times)
