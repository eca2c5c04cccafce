"""`python -m lsmvec.tools.bench_lsm`: lsmvec against raw ScaNN on the same vectors, in one run.

    python -m lsmvec.tools.bench_lsm --dataset synthetic --n 1000000 --dim 128
    python -m lsmvec.tools.bench_lsm --dataset minilm --n 100000        # 384-d MiniLM, cosine

Steps, all in this process unless said otherwise:
  a. durable ingest (durability="fsync", batches of --batch) with background compaction running
  b. train(): everything merged into ONE trained segment (tree + AH + exact reorder)
  c. recall@10 against exact numpy search, single-query QPS (one call per query) and batched QPS
     (one call with every query) at n_probes = default (None) and half / double the default
  d. raw ScaNN built in-process on the same vectors with the same parameters (choose_params +
     train_searcher; below the tree threshold, ScaNN's brute force, as lsmvec scans such data
     exactly: any n >= 1 works), queried with search / search_batched_parallel, same leaves
  e. the ratio lsmvec / raw ScaNN for single and batched QPS
  f. resident memory: a FRESH process imports everything, reads its RSS, opens the index and runs
     a few queries, reads its RSS again; the difference over the raw float32 bytes (n * dim * 4).
     The same is done for raw ScaNN (load_searcher of its serialized folder) for comparison
  g. reopen time: the fresh process's Client + load_index time (median of --reopens children)
  h. disk bytes of the index folder (and of raw ScaNN's serialized folder)
The single and batched measurements of the two systems are interleaved per n_probes, so a
background load hits both alike. The machine has 2 cores: other jobs skew absolute numbers.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import cProfile
import json
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from ._report import NativeLogFilter, folder_bytes, mbytes, seconds
from .datasets import brute_force_topk_chunked, clustered, clustered_queries

INDEX_NAME = "bench"
TOP_K = 10
WARMUP_QUERIES = 20
TARGETS = {"recall": 0.95, "single_ratio": 0.7, "memory_ratio": 2.0, "reopen_s": 3.0}


# -- measurements -------------------------------------------------------------------------------

def rss_bytes(field: str = "VmRSS") -> int:
    """This process's resident set (or VmHWM, its peak) from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the true top-k found; `found` may hold -1 padding."""
    hits = sum(len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


def lsm_ids(results: list[list[dict[str, Any]]], k: int) -> np.ndarray:
    out = np.full((len(results), k), -1, np.int64)
    for i, hits in enumerate(results):
        for j, hit in enumerate(hits[:k]):
            out[i, j] = int(hit["id"])
    return out


def time_single(search_one: Callable[[np.ndarray], np.ndarray], queries: np.ndarray,
                desc: str) -> tuple[np.ndarray, np.ndarray]:
    """One call per query, after a short warm-up: (ids (q, k), latencies seconds (q,))."""
    for q in queries[:WARMUP_QUERIES]:
        search_one(q)
    ids = np.full((len(queries), TOP_K), -1, np.int64)
    lat = np.empty(len(queries))
    for i, q in enumerate(tqdm(queries, desc=desc, unit="q", leave=False, file=sys.stderr)):
        t0 = time.perf_counter()
        found = search_one(q)
        lat[i] = time.perf_counter() - t0
        ids[i, :len(found)] = found[:TOP_K]
    return ids, lat


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


# -- data ---------------------------------------------------------------------------------------

def load_data(args: argparse.Namespace, say: Callable[[str], None]
              ) -> tuple[np.ndarray, np.ndarray, str, dict[str, Any]]:
    """(vectors, queries, metric, description)."""
    if args.dataset == "synthetic":
        t0 = time.perf_counter()
        data = clustered(args.n, args.dim, seed=args.seed)
        queries = clustered_queries(args.queries, args.dim, seed=args.seed)
        say(f"generated {args.n:,} x {args.dim} clustered vectors in {time.perf_counter() - t0:.1f}s")
        return data, queries, args.metric or "euclidean", {
            "dataset": "synthetic clustered (tools.datasets.clustered, 100 clusters, spread 0.6)",
            "seed": args.seed}
    if args.dataset == "file":
        if not args.data:
            raise SystemExit("--dataset file needs --data PATH (.npy, .fvecs or ann-benchmarks .hdf5)")
        from .datasets import load_file
        data, queries, file_metric = load_file(args.data, args.queries)
        say(f"loaded {data.shape[0]:,} x {data.shape[1]} vectors and {len(queries)} queries "
            f"from {args.data}")
        return data, queries, args.metric or file_metric or "euclidean", {
            "dataset": f"file {args.data}", "seed": None}
    from .minilm_data import load_or_embed
    got = load_or_embed(args.n, seed=args.seed, n_queries=args.queries, say=say)
    if got.n != args.n:
        say(f"NOTE: MiniLM corpus is {got.n:,} sentences, not {args.n:,} (embedding time limit)")
    say(f"MiniLM corpus {got.corpus.shape} from {got.corpus_path}"
        + (" (cache)" if got.from_cache else f" (embedded in {got.embed_seconds / 60:.1f} min)"))
    return got.corpus, got.queries, args.metric or "cosine", {
        "dataset": "all-MiniLM-L6-v2 embeddings of synthetic template sentences "
                   "(tools.minilm_data); queries use other templates",
        "seed": args.seed, "requested_n": args.n, "embed_seconds": got.embed_seconds}


# -- lsmvec -------------------------------------------------------------------------------------

def ingest(args: argparse.Namespace, folder: Path, key: bytes, data: np.ndarray, metric: str,
           ) -> tuple[Any, Any, dict[str, Any]]:
    """Create the index and upsert every row durably; background compaction does what it does."""
    from lsmvec import Client
    client = Client(folder)
    index = client.create_index(INDEX_NAME, key, dimension=data.shape[1], metric=metric)
    n = data.shape[0]
    ids = np.arange(n, dtype=np.int64)
    t0 = time.perf_counter()
    with tqdm(total=n, unit="rows", unit_scale=True, desc="lsmvec ingest", file=sys.stderr) as bar:
        for lo in range(0, n, args.batch):
            hi = min(n, lo + args.batch)
            index.upsert(ids=ids[lo:hi], vectors=data[lo:hi])
            bar.update(hi - lo)
    elapsed = time.perf_counter() - t0
    stats = index.stats()
    out = {"seconds": elapsed, "rows_per_s": n / elapsed,
           "segments_after_ingest": [(s["kind"], s["rows"]) for s in stats["segments"]],
           "memtable_rows_after_ingest": stats["memtable_rows"],
           "frozen_after_ingest": stats["frozen_memtables"],
           "background_error": stats["background_error"]}
    t0 = time.perf_counter()
    index.train()
    out["train_seconds"] = time.perf_counter() - t0
    stats = index.stats()
    out["segments_after_train"] = [(s["kind"], s["rows"], s["n_lists"]) for s in stats["segments"]]
    out["train_again_seconds"] = None
    if len(stats["segments"]) > 1:
        # train() lists the segments before it waits for a background merge already running;
        # that merge's output is then left out. Train again so the comparison is one tree
        # against one tree (same leaves), and report it.
        t0 = time.perf_counter()
        index.train()
        out["train_again_seconds"] = time.perf_counter() - t0
        stats = index.stats()
        out["segments_after_second_train"] = [(s["kind"], s["rows"], s["n_lists"])
                                              for s in stats["segments"]]
    if index.get_num_vectors() != n:
        raise RuntimeError(f"index holds {index.get_num_vectors()} vectors, expected {n}")
    return client, index, out


# -- children: a fresh process for reopen time and resident memory ------------------------------

def child_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh interpreter. Everything is imported first, so the RSS difference is
    what opening (and querying) costs, not the libraries' code."""
    import scann  # noqa: F401  (its shared library is part of the baseline)
    from scann.scann_ops.py import scann_ops_pybind

    from lsmvec import Client
    queries = np.load(spec["queries"], allow_pickle=False)
    base = rss_bytes()
    t0 = time.perf_counter()
    if spec["what"] == "lsmvec":
        profiler = cProfile.Profile() if spec.get("profile") else None
        if profiler is not None:
            profiler.enable()
        client = Client(spec["folder"])
        index = client.load_index(INDEX_NAME, bytes.fromhex(spec["key"]))
        opened = time.perf_counter() - t0
        if profiler is not None:
            profiler.disable()
            with open(spec["profile"], "w") as f:
                pstats.Stats(profiler, stream=f).sort_stats("cumulative").print_stats(40)
        after_open = rss_bytes()
        for q in queries:
            index.query(q, top_k=TOP_K)
        index.query(queries, top_k=TOP_K)
    else:
        searcher = scann_ops_pybind.load_searcher(spec["folder"])
        opened = time.perf_counter() - t0
        after_open = rss_bytes()
        for q in queries:
            searcher.search(q, TOP_K)
        searcher.search_batched_parallel(queries, TOP_K)
    return {"open_seconds": opened, "base_rss": base, "rss_after_open": after_open,
            "rss_after_queries": rss_bytes(), "peak_rss": rss_bytes("VmHWM")}


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` goes through stdin (it holds the key); the child answers one JSON line."""
    proc = subprocess.run([sys.executable, "-m", "lsmvec.tools.bench_lsm", "--child"],
                          input=json.dumps(spec), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the run ------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    from lsmvec.compaction.scann_assets import train_searcher
    from scann.scann_ops.py import scann_ops_pybind

    from lsmvec.compaction.scann_params import KIND_BRUTE, choose_params
    from lsmvec import generate_key
    from lsmvec.request.items import finish_vectors

    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    result: dict[str, Any] = {"args": vars(args), "loadavg_start": os.getloadavg()}
    data, queries, metric, result["data"] = load_data(args, say)
    n, dim = data.shape
    raw_bytes = n * dim * 4
    result.update(n=n, dim=dim, metric=metric, queries=len(queries), raw_float32_bytes=raw_bytes)
    t0 = time.perf_counter()
    truth = brute_force_topk_chunked(data, queries, TOP_K, metric)
    say(f"exact top-{TOP_K} of {len(queries)} queries in {time.perf_counter() - t0:.1f}s")

    root = Path(tempfile.mkdtemp(prefix=f"lsmvec-bench-{args.dataset}-", dir=args.workdir))
    key = generate_key()
    try:
        client, index, result["ingest"] = ingest(args, root / "lsm", key, data, metric)
        say(f"ingest {result['ingest']['rows_per_s']:,.0f} rows/s, train "
            f"{result['ingest']['train_seconds']:.1f}s -> {result['ingest']['segments_after_train']}")
        params = choose_params(n, dim, metric)
        result["params"] = params.as_dict()
        # The engine stores and searches unit vectors under cosine: raw ScaNN gets the same bytes.
        raw_vectors = np.ascontiguousarray(finish_vectors(data, metric) if metric == "cosine"
                                           else data, np.float32)
        brute = params.kind == KIND_BRUTE  # too few rows for a tree: both sides search exactly
        t0 = time.perf_counter()
        searcher = (scann_ops_pybind.builder(raw_vectors, min(TOP_K, n), params.distance)
                    .score_brute_force().build() if brute else train_searcher(raw_vectors, params))
        result["raw_build_seconds"] = time.perf_counter() - t0
        say(f"raw ScaNN built in {result['raw_build_seconds']:.1f}s "
            + ("(brute force)" if brute else f"({params.num_leaves} leaves)"))
        raw_queries = finish_vectors(queries, metric) if metric == "cosine" else queries
        default = params.leaves_to_search
        probes = [None] if brute else [None, max(1, default // 2), min(params.num_leaves, default * 2)]
        extra = () if brute else (params.reorder,)  # ScaNN's (pre_reorder_num_neighbors, leaves)
        result["search"] = []
        for probe in probes:
            leaves = default if probe is None else probe
            row: dict[str, Any] = {"n_probes": probe, "leaves": leaves}
            ids, lat = time_single(lambda q: lsm_ids([index.query(q, top_k=TOP_K, n_probes=probe)], TOP_K)[0],
                                   queries, f"lsmvec single leaves={leaves}")
            row["lsm_recall"], row["lsm_single_qps"] = recall_at_k(ids, truth), len(queries) / lat.sum()
            row["lsm_p50_ms"], row["lsm_p99_ms"] = np.percentile(lat, 50) * 1e3, np.percentile(lat, 99) * 1e3
            raw_args = () if brute else (*extra, leaves)
            ids, lat = time_single(lambda q: searcher.search(q, TOP_K, *raw_args)[0],
                                   raw_queries, f"raw single leaves={leaves}")
            row["raw_recall"], row["raw_single_qps"] = recall_at_k(ids, truth), len(queries) / lat.sum()
            row["raw_p50_ms"], row["raw_p99_ms"] = np.percentile(lat, 50) * 1e3, np.percentile(lat, 99) * 1e3
            ids, secs = time_batched(lambda qs: lsm_ids(index.query(qs, top_k=TOP_K, n_probes=probe), TOP_K),
                                     queries, args.repeats)
            row["lsm_batch_recall"], row["lsm_batch_qps"] = recall_at_k(ids, truth), len(queries) / secs
            ids, secs = time_batched(
                lambda qs: searcher.search_batched_parallel(qs, TOP_K, *raw_args)[0],
                raw_queries, args.repeats)
            row["raw_batch_recall"], row["raw_batch_qps"] = recall_at_k(ids, truth), len(queries) / secs
            _, secs = time_batched(lambda qs: searcher.search_batched(qs, TOP_K, *raw_args)[0],
                                   raw_queries, args.repeats)
            row["raw_batch_serial_qps"] = len(queries) / secs
            row["single_ratio"] = row["lsm_single_qps"] / row["raw_single_qps"]
            row["batch_ratio"] = row["lsm_batch_qps"] / row["raw_batch_qps"]
            result["search"].append(row)
            say(f"leaves={leaves}: recall {row['lsm_recall']:.3f} vs {row['raw_recall']:.3f}, single "
                f"{row['lsm_single_qps']:,.0f} vs {row['raw_single_qps']:,.0f} q/s, batched "
                f"{row['lsm_batch_qps']:,.0f} vs {row['raw_batch_qps']:,.0f} q/s")
        if args.profile:
            profile_single(index, queries, args.profile)
            say(f"cProfile of {len(queries)} lsmvec single queries -> {args.profile}")
        index.close()
        client.close()
        result["disk_bytes"] = folder_bytes(root / "lsm")
        raw_dir = root / "raw-scann"
        raw_dir.mkdir()
        searcher.serialize(str(raw_dir), relative_path=True)
        result["raw_disk_bytes"] = folder_bytes(raw_dir)
        searcher = None  # frees its memory before the children measure theirs
        np.save(root / "child-queries.npy", queries[:50], allow_pickle=False)
        np.save(root / "child-raw-queries.npy", np.ascontiguousarray(raw_queries[:50]), allow_pickle=False)
        children = []
        for _ in tqdm(range(args.reopens), desc="reopen children", leave=False, file=sys.stderr):
            # The profiled open is an extra child: cProfile's overhead stays out of the timings.
            children.append(run_child({"what": "lsmvec", "folder": str(root / "lsm"), "key": key.hex(),
                                       "queries": str(root / "child-queries.npy")}))
        if args.profile:
            run_child({"what": "lsmvec", "folder": str(root / "lsm"), "key": key.hex(),
                       "queries": str(root / "child-queries.npy"), "profile": args.profile + ".open"})
            say(f"cProfile of a reopen -> {args.profile}.open")
        result["reopen_children"] = children
        result["raw_child"] = run_child({"what": "raw", "folder": str(raw_dir),
                                         "queries": str(root / "child-raw-queries.npy")})
    finally:
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    result["reopen_seconds"] = statistics.median(c["open_seconds"] for c in children)
    result["resident_bytes"] = statistics.median(c["rss_after_queries"] - c["base_rss"] for c in children)
    result["raw_resident_bytes"] = result["raw_child"]["rss_after_queries"] - result["raw_child"]["base_rss"]
    result["loadavg_end"] = os.getloadavg()
    return result


def profile_single(index: Any, queries: np.ndarray, path: str) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for q in queries:
        index.query(q, top_k=TOP_K)
    profiler.disable()
    with open(path, "w") as f:
        pstats.Stats(profiler, stream=f).sort_stats("tottime").print_stats(25)
        pstats.Stats(profiler, stream=f).sort_stats("cumulative").print_stats(25)


# -- report -------------------------------------------------------------------------------------

def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def _segments(segments: list) -> str:
    return ", ".join(f"{k} {rows:,} rows" + (f" / {lists} leaves" if lists else "") for k, rows, lists in segments)


def report(r: dict[str, Any]) -> str:
    p, ing, raw_bytes = r["params"], r["ingest"], r["raw_float32_bytes"]
    scann = ("brute force (too few rows for a tree: lsmvec scans them exactly too)"
             if p["kind"] == "brute" else
             f"{p['num_leaves']} leaves, default search {p['leaves_to_search']}, "
             f"reorder {p['reorder']}, AH dims/block {p['dims_per_block']}, "
             f"training sample {p['training_sample_size']:,}")
    out = [f"## lsmvec vs raw ScaNN: {r['data']['dataset']}",
           f"n={r['n']:,} dim={r['dim']} metric={r['metric']} queries={r['queries']} k={TOP_K}; "
           f"ScaNN params: {scann}; load average at start "
           f"{r['loadavg_start'][0]:.2f}, at end {r['loadavg_end'][0]:.2f} (2 cores)", ""]
    segs = ", ".join(f"{k} {rows:,}" for k, rows in ing["segments_after_ingest"]) or "none"
    out.append(md_table(["build", "value"], [
        ["lsmvec durable ingest (fsync, background compaction on)",
         f"{ing['rows_per_s']:,.0f} rows/s ({seconds(ing['seconds'])})"],
        ["segments when ingest returned", f"{segs}; memtable {ing['memtable_rows_after_ingest']:,} "
                                          f"rows, {ing['frozen_after_ingest']} frozen"],
        ["lsmvec train() (waits for a running merge)", seconds(ing["train_seconds"])
         + f" -> {len(ing['segments_after_train'])} segment(s): "
         + _segments(ing["segments_after_train"])],
        *([["second train() (the first left > 1 segment)",
            f"{seconds(ing['train_again_seconds'])} -> " + _segments(ing["segments_after_second_train"])]]
          if ing.get("train_again_seconds") is not None else []),
        ["raw ScaNN build (same params)", seconds(r["raw_build_seconds"])],
    ]))
    out.append("")
    rows = []
    for s in r["search"]:
        label = "default" if s["n_probes"] is None else str(s["n_probes"])
        where = f"{s['leaves']} leaves" if s["leaves"] else "exact"
        rows.append([f"{label} ({where})", f"{s['lsm_recall']:.3f}", f"{s['raw_recall']:.3f}",
                     f"{s['lsm_single_qps']:,.0f}", f"{s['raw_single_qps']:,.0f}", f"{s['single_ratio']:.2f}",
                     f"{s['lsm_p50_ms']:.2f} / {s['raw_p50_ms']:.2f}",
                     f"{s['lsm_p99_ms']:.2f} / {s['raw_p99_ms']:.2f}",
                     f"{s['lsm_batch_qps']:,.0f}", f"{s['raw_batch_qps']:,.0f}", f"{s['batch_ratio']:.2f}",
                     f"{s['raw_batch_serial_qps']:,.0f}"])
    out.append(md_table(["n_probes", "recall lsm", "recall raw", "single q/s lsm", "single q/s raw",
                         "single ratio", "p50 ms lsm / raw", "p99 ms lsm / raw", "batch q/s lsm", "batch q/s raw (parallel)",
                         "batch ratio", "raw serial batch q/s"], rows))
    out.append("")
    reopen = [c["open_seconds"] for c in r["reopen_children"]]
    child = r["reopen_children"][0]
    out.append(md_table(["resources", "lsmvec", "raw ScaNN"], [
        ["open in a fresh process (median)", f"{seconds(r['reopen_seconds'])} "
         f"(runs: {', '.join(f'{t:.2f}' for t in reopen)} s)", seconds(r["raw_child"]["open_seconds"])],
        ["resident after open + queries", f"{mbytes(r['resident_bytes'])} = "
         f"{r['resident_bytes'] / raw_bytes:.2f} x raw float32",
         f"{mbytes(r['raw_resident_bytes'])} = {r['raw_resident_bytes'] / raw_bytes:.2f} x"],
        ["peak RSS during open (over baseline)", f"{mbytes(child['peak_rss'] - child['base_rss'])}",
         mbytes(r["raw_child"]["peak_rss"] - r["raw_child"]["base_rss"])],
        ["disk", f"{mbytes(r['disk_bytes'])} = {r['disk_bytes'] / raw_bytes:.2f} x raw float32",
         f"{mbytes(r['raw_disk_bytes'])} = {r['raw_disk_bytes'] / raw_bytes:.2f} x"],
        ["raw float32 vectors", mbytes(raw_bytes), ""],
    ]))
    out.append("")
    d = r["search"][0]
    checks = [("recall@10 at default >= 0.95", f"{d['lsm_recall']:.3f}", d["lsm_recall"] >= TARGETS["recall"]),
              ("single-query QPS >= 0.7 x raw ScaNN", f"{d['single_ratio']:.2f} x",
               d["single_ratio"] >= TARGETS["single_ratio"]),
              ("resident memory <= 2 x raw float32", f"{r['resident_bytes'] / raw_bytes:.2f} x",
               r["resident_bytes"] / raw_bytes <= TARGETS["memory_ratio"]),
              ("reopen < 3 s" + ("" if r["n"] >= 1_000_000 else f" (asked at 1M; this is {r['n']:,})"),
               seconds(r["reopen_seconds"]), r["reopen_seconds"] < TARGETS["reopen_s"])]
    out.append(md_table(["target", "measured", "met"], [[a, b, "yes" if c else "NO"] for a, b, c in checks]))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("synthetic", "minilm", "file"), default="synthetic")
    parser.add_argument("--data", default=None,
                        help="with --dataset file: a .npy, .fvecs or ann-benchmarks .hdf5 file")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128, help="synthetic only (MiniLM is 384)")
    parser.add_argument("--metric", choices=("euclidean", "cosine"), default=None,
                        help="default: euclidean for synthetic, cosine for minilm")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=10_000, help="rows per upsert call")
    parser.add_argument("--repeats", type=int, default=3, help="batched calls timed (median)")
    parser.add_argument("--reopens", type=int, default=3, help="fresh processes for reopen/RSS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="parent of the index folder (default: /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the index folder")
    parser.add_argument("--profile", default=None, help="cProfile the lsmvec single-query loop here")
    parser.add_argument("--json", default=None, help="write results here (default under /tmp)")
    parser.add_argument("--show-native-logs", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        with NativeLogFilter():
            answer = child_main(json.loads(sys.stdin.read()))
        print(json.dumps(answer))
        return 0
    with NativeLogFilter(enabled=not args.show_native_logs):
        result = run(args)
    text = report(result)
    print(text)
    path = args.json or f"/tmp/bench_lsm-{args.dataset}-{result['n']}.json"
    with open(path, "w") as f:
        json.dump({**result, "markdown": text}, f, indent=1, default=float)
    print(f"\nJSON: {path}", file=sys.stderr)
    png = os.path.splitext(path)[0] + ".png"
    if plot(result, png):
        print(f"plot: {png}", file=sys.stderr)
    return 0


def plot(result: dict, path: str) -> bool:
    """Recall vs single-query QPS, lsmvec and raw ScaNN; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    points = sorted(result["search"], key=lambda s: s["leaves"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for who, label in (("lsm", "lsmvec"), ("raw", "raw ScaNN")):
        ax.plot([s[f"{who}_recall"] for s in points], [s[f"{who}_single_qps"] for s in points],
                marker="o", label=label)
    ax.set_xlabel("recall@10")
    ax.set_ylabel("single-query QPS")
    ax.set_title(f"{result.get('dataset', '')} n={result['n']:,}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


if __name__ == "__main__":
    sys.exit(main())
