"""`python -m lsmvec.tools.bench_lsm`: lsmvec against raw ScaNN on the same vectors, in one run.

    python -m lsmvec.tools.bench_lsm --dataset synthetic --n 1000000 --dim 128
    python -m lsmvec.tools.bench_lsm --dataset minilm --n 60000        # 384-d MiniLM, cosine
    python -m lsmvec.tools.bench_lsm --dataset gaussian --n 50000 --dim 64   # the hard case

Steps, all in this process unless said otherwise:
  a. durable ingest (durability="fsync", batches of --batch; items carry ~80 bytes of metadata
     unless --no-metadata) with background compaction running
  b. train(): everything merged into ONE trained segment (tree + AH + exact reorder)
  c. raw ScaNN built in-process on the same vectors with the same parameters (choose_params with
     the segment's calibrated leaves and reorder; below the tree threshold ScaNN's brute force)
  d. single queries (one call per query), at n_probes = default (None), half and double: recall@10
     against exact numpy search, then --rounds interleaved rounds: per round and mode, one pass
     of raw ScaNN and one of lsmvec over all queries, back to back, order swapped each round;
     the ratio is the median over rounds. Raw ScaNN is the searcher of lsmvec's own segment
     (same tree, same parameters: the ratio is lsmvec's overhead alone). Modes: ids + distances;
     at the default also include=["distance", "metadata"] with the item cache warm, and with it
     switched off (every hit read from LMDB and decrypted)
  e. batched QPS (one call with every query) against the separate build's search_batched_parallel
  (--storage-precision float16 / int8: the index option; raw ScaNN's reorder uses the same
   precision, so ratios stay like for like)
  f. resident memory: a FRESH process imports everything, reads its RSS, opens the index and runs
     a few queries, reads its RSS again; the difference over the raw float32 bytes (n * dim * 4).
     The same is done for raw ScaNN (load_searcher of its serialized folder) for comparison
  g. reopen time: the fresh process's Client + load_index + first query (median of --reopens children)
  h. disk bytes of the index folder (and of raw ScaNN's serialized folder)
The machine has 2 cores: other jobs skew absolute numbers; the interleaved ratios much less.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import cProfile
import dataclasses
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

from ._report import NativeLogFilter, folder_bytes
from .bench_lsm_report import TOP_K, plot, report
from .bench_timing import interleaved_single, lsm_ids, padded, recall_at_k, time_batched
from .datasets import brute_force_topk_chunked, clustered, clustered_queries

INDEX_NAME = "bench"
META_INCLUDE = ["distance", "metadata"]


# -- measurements -------------------------------------------------------------------------------

def resident_split() -> dict[str, int]:
    """This process's resident bytes by kind of mapping (/proc/self/smaps): "anon" (heap,
    anonymous maps: ScaNN's arrays, Python objects), "store" (pages of LMDB's data.mdb the
    process touched: page cache it shares, which the kernel may drop) and "files" (the rest:
    libraries' code and other mapped files)."""
    out = {"anon": 0, "store": 0, "files": 0}
    kind = "anon"
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=6)
            if head and "-" in head[0] and not head[0].endswith(":"):
                path = head[5].strip() if len(head) > 5 else ""
                kind = ("anon" if not path or path.startswith("[") else
                        "store" if path.endswith("data.mdb") else "files")
            elif head and head[0] == "Rss:":
                out[kind] += int(head[1]) * 1024
    return out


def rss_bytes(field: str = "VmRSS") -> int:
    """This process's resident set (or VmHWM, its peak) from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


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
    if args.dataset == "gaussian":  # the hard case: no cluster structure for the tree to use
        rng = np.random.default_rng(args.seed)
        data = rng.standard_normal((args.n, args.dim), dtype=np.float32)
        queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
        say(f"generated {args.n:,} x {args.dim} Gaussian vectors")
        return data, queries, args.metric or "euclidean", {
            "dataset": "Gaussian N(0, 1) (no structure: the hard case for a tree)", "seed": args.seed}
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

_TOPICS = ("science", "sport", "music", "travel", "food", "finance", "health")


def item_metadata(i: int) -> dict[str, Any]:
    """What an application stores beside a vector (~80 bytes packed): a title, a number, a
    category and a short list of tags."""
    return {"title": f"document {i}", "n": i, "category": _TOPICS[i % len(_TOPICS)],
            "tags": [_TOPICS[(i * 3) % len(_TOPICS)], f"t{i % 13}"]}


def own_searcher(index: Any) -> tuple[Any, dict[str, Any]] | None:
    """(ScaNN searcher, segment stats) of the index's one trained segment -- the very index
    lsmvec searches -- or None when the index is not one trained segment."""
    segments = index.stats()["segments"]
    if len(segments) != 1 or segments[0]["kind"] != "tree_ah":
        return None
    return index._core.segments[0].segment._scann, segments[0]  # a benchmark may look inside

def ingest(args: argparse.Namespace, folder: Path, key: bytes, data: np.ndarray, metric: str,
           ) -> tuple[Any, Any, dict[str, Any]]:
    """Create the index and upsert every row durably; background compaction does what it does."""
    from lsmvec import Client
    client = Client(folder)
    index = client.create_index(INDEX_NAME, key, dimension=data.shape[1], metric=metric,
                                storage_precision=args.storage_precision)
    n = data.shape[0]
    ids = np.arange(n, dtype=np.int64)
    t0 = time.perf_counter()
    with tqdm(total=n, unit="rows", unit_scale=True, desc="lsmvec ingest", file=sys.stderr) as bar:
        for lo in range(0, n, args.batch):
            hi = min(n, lo + args.batch)
            if args.metadata:
                index.upsert([{"id": str(i), "vector": data[i], "metadata": item_metadata(i)}
                              for i in range(lo, hi)])
            else:
                index.upsert(ids=ids[lo:hi], vectors=data[lo:hi])
            bar.update(hi - lo)
    elapsed = time.perf_counter() - t0
    stats = index.stats()
    out = {"seconds": elapsed, "rows_per_s": n / elapsed, "metadata": args.metadata,
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
    base_split = resident_split()
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
        index.query(queries[0], top_k=TOP_K)
        first = time.perf_counter() - t0
        for q in queries:
            index.query(q, top_k=TOP_K)
        index.query(queries, top_k=TOP_K)
    else:
        searcher = scann_ops_pybind.load_searcher(spec["folder"])
        opened = time.perf_counter() - t0
        after_open = rss_bytes()
        searcher.search(queries[0], TOP_K)
        first = time.perf_counter() - t0
        for q in queries:
            searcher.search(q, TOP_K)
        searcher.search_batched_parallel(queries, TOP_K)
    split = resident_split()
    return {"open_seconds": opened, "first_query_seconds": first, "base_rss": base,
            "rss_after_open": after_open,
            "rss_after_queries": rss_bytes(), "peak_rss": rss_bytes("VmHWM"),
            "split_after_queries": {k: split[k] - base_split[k] for k in split}}


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` goes through stdin (it holds the key); the child answers one JSON line."""
    proc = subprocess.run([sys.executable, "-m", "lsmvec.tools.bench_lsm", "--child"],
                          input=json.dumps(spec), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the run ------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    from lsmvec.compaction.compactor import usable_cores
    from lsmvec.compaction.scann_assets import train_searcher
    from scann.scann_ops.py import scann_ops_pybind

    from lsmvec.compaction.scann_params import KIND_BRUTE, choose_params
    from lsmvec.db.item_cache import ItemCache
    from lsmvec import generate_key
    from lsmvec.request.items import finish_vectors
    from lsmvec.request.options import REORDER_PRECISION

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
        params = choose_params(n, dim, metric,
                               reorder_precision=REORDER_PRECISION[args.storage_precision])
        own = own_searcher(index)
        if own is not None:  # the segment's calibrated default search, not the initial guess
            params = dataclasses.replace(params, leaves_to_search=own[1]["leaves_to_search"],
                                         reorder=own[1]["reorder"])
        result["params"] = params.as_dict()
        # The engine stores and searches unit vectors under cosine: raw ScaNN gets the same bytes.
        raw_vectors = np.ascontiguousarray(finish_vectors(data, metric) if metric == "cosine"
                                           else data, np.float32)
        brute = params.kind == KIND_BRUTE  # too few rows for a tree: both sides search exactly
        t0 = time.perf_counter()
        searcher = (scann_ops_pybind.builder(raw_vectors, min(TOP_K, n), params.distance)
                    .score_brute_force().build() if brute
                    else train_searcher(raw_vectors, params, usable_cores()))  # as train()
        result["raw_build_seconds"] = time.perf_counter() - t0
        say(f"raw ScaNN built in {result['raw_build_seconds']:.1f}s "
            + ("(brute force)" if brute else f"({params.num_leaves} leaves)"))
        raw_queries = np.ascontiguousarray(finish_vectors(queries, metric) if metric == "cosine"
                                           else queries, np.float32)
        default = params.leaves_to_search
        probes = [None] if brute else [None, max(1, default // 2), min(params.num_leaves, default * 2)]
        extra = () if brute else (params.reorder,)  # ScaNN's (pre_reorder_num_neighbors, leaves)
        # single queries: raw ScaNN is the searcher lsmvec's own segment holds (same tree, same
        # parameters), so the ratio is lsmvec's overhead alone
        single = own[0] if own is not None else searcher
        result["raw_single_source"] = ("the ScaNN searcher of lsmvec's own trained segment"
                                       if own is not None else "a separate raw ScaNN build")
        result["single_rounds"] = args.rounds
        core = index._core  # the metadata cache is swapped for an empty one of 0 bytes (kept
        cache, no_cache = core.item_cache, ItemCache(0)  # aside, warm) for the "no cache" mode

        def use_cache(which: ItemCache) -> None:
            core.item_cache = which
            for source in core.segments:
                source.cache = which

        def cache_on() -> None:
            use_cache(cache)

        def cache_off() -> None:
            use_cache(no_cache)

        result["search"] = []
        for probe in probes:
            leaves = default if probe is None else probe
            row: dict[str, Any] = {"n_probes": probe, "leaves": leaves}
            raw_args = () if brute else (*extra, leaves)
            one = (lambda q: single.search(q, TOP_K, *raw_args)) if own is not None else \
                (lambda q: searcher.search(q, TOP_K, *raw_args))
            lsm = lambda q: index.query(q, top_k=TOP_K, n_probes=probe)  # noqa: E731
            meta = lambda q: index.query(q, top_k=TOP_K, n_probes=probe, include=META_INCLUDE)  # noqa: E731
            row["lsm_recall"] = recall_at_k(lsm_ids([lsm(q) for q in queries], TOP_K), truth)
            row["raw_recall"] = recall_at_k(np.stack([padded(one(q)[0]) for q in raw_queries]), truth)
            modes = {"ids": (lsm, None)}
            if args.metadata and probe is None:
                modes.update(meta=(meta, cache_on), meta_cold=(meta, cache_off))
            got = interleaved_single(one, raw_queries, modes, queries, args.rounds,
                                     f"single queries, leaves={leaves}")
            cache_on()
            row.update(lsm_single_qps=got["ids"]["qps"], raw_single_qps=got["ids"]["raw_qps"],
                       single_ratio=got["ids"]["ratio"], single_ratios=got["ids"]["ratios"],
                       single_cpu_ratio=got["ids"]["cpu_ratio"],
                       lsm_p50_ms=got["ids"]["p50_ms"], lsm_p99_ms=got["ids"]["p99_ms"],
                       raw_p50_ms=got["raw"]["p50_ms"], raw_p99_ms=got["raw"]["p99_ms"])
            for name in ("meta", "meta_cold"):
                if name in got:
                    row.update({f"{name}_ratio": got[name]["ratio"],
                                f"{name}_cpu_ratio": got[name]["cpu_ratio"],
                                f"{name}_ratios": got[name]["ratios"],
                                f"lsm_{name}_qps": got[name]["qps"]})
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
            row["batch_ratio"] = row["lsm_batch_qps"] / row["raw_batch_qps"]
            result["search"].append(row)
            say(f"leaves={leaves}: recall {row['lsm_recall']:.3f} vs {row['raw_recall']:.3f}, single "
                f"{row['lsm_single_qps']:,.0f} vs {row['raw_single_qps']:,.0f} q/s (ratio "
                f"{row['single_ratio']:.2f}" + (f", with metadata {row['meta_ratio']:.2f}, no cache "
                                                 f"{row['meta_cold_ratio']:.2f}" if "meta_ratio" in row else "")
                + f"), batched {row['lsm_batch_qps']:,.0f} vs {row['raw_batch_qps']:,.0f} q/s")
        own = single = None  # the segment's searcher goes with the index
        result["item_cache"] = {"hits": cache.hits, "misses": cache.misses, "bytes": cache.nbytes,
                                "entries": len(cache), "max_bytes": cache.max_bytes}
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
    result["reopen_seconds"] = statistics.median(c["first_query_seconds"] for c in children)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("synthetic", "minilm", "gaussian", "file"),
                        default="synthetic")
    parser.add_argument("--data", default=None,
                        help="with --dataset file: a .npy, .fvecs or ann-benchmarks .hdf5 file")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128, help="synthetic only (MiniLM is 384)")
    parser.add_argument("--metric", choices=("euclidean", "cosine"), default=None,
                        help="default: euclidean for synthetic, cosine for minilm")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=10_000, help="rows per upsert call")
    parser.add_argument("--repeats", type=int, default=3, help="batched calls timed (median)")
    parser.add_argument("--rounds", type=int, default=7,
                        help="interleaved rounds of single-query passes (median ratio)")
    parser.add_argument("--metadata", action=argparse.BooleanOptionalAction, default=True,
                        help="items carry metadata (~80 bytes); also measure include=metadata")
    parser.add_argument("--reopens", type=int, default=3, help="fresh processes for reopen/RSS")
    parser.add_argument("--storage-precision", choices=("float32", "float16", "int8"),
                        default="float32", help="the index option; raw ScaNN reorders at the "
                        "same precision (bfloat16 for float16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="parent of the index folder (default: /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the index folder")
    parser.add_argument("--profile", default=None, help="cProfile the lsmvec single-query loop here")
    parser.add_argument("--json", default=None, help="write results here (default under /tmp)")
    parser.add_argument("--show-native-logs", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reopens < 1:
        parser.error("--reopens must be >= 1 (the reopen time and resident memory come from them)")
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


if __name__ == "__main__":
    sys.exit(main())
