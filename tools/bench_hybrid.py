"""`python -m lsmvec.tools.bench_hybrid`: latency of text and hybrid queries against vector-only
ones, and the disk cost of the text index (issue 19: "hybrid <= 2x vector-only on 100k items").

    python -m lsmvec.tools.bench_hybrid [--n 100000] [--queries 300] [--rounds 5]
        [--dataset minilm|gaussian] [--fresh 10000] [--dir DIR]

Everything goes through the public API, as a user would: Client(folder).create_index(name, key,
dimension=384, metric="cosine", text_fields=["text"]), upsert of {"id", "vector", "metadata":
{"text": sentence, "g": row % 10}}, then train() (flush + merge into one ScaNN tree).

Data: tools/minilm_data.py's deterministic English sentences as the text; as vectors either
their MiniLM embeddings (--dataset minilm, cached under ~/.cache/lsmvec-bench) or Gaussian
random vectors of the same dimension (--dataset gaussian: hard data for the vector side, the
text side unchanged). Queries: the held-out query sentences; vector = the sentence's embedding
(Gaussian: a random vector), text = the FULL query sentence (a user's hybrid query is one
string), hybrid = both, default alpha / rrf_k / window_mult, top_k=10, default include.

Latency: the wall time of each Python call (time.perf_counter). One process; every round runs
one pass over all queries of each mode (vector, text, hybrid, then the same three with the
filter {"g": {"$eq": group}}: 10 groups, 10% selective, the queries in 10 blocks of one group
each -- see group_of), in an order rotated each round.
p50/p95 are taken over the queries of each round; the figures reported are the median over
rounds of those, and a ratio is the median over rounds of the per-round ratio (both modes of a
ratio measured in the same round, so drift of the shared machine cancels).
Fresh data: then --fresh more rows (copies of the first rows' sentences and vectors under new
ids) are upserted and left in the memtable (unflushed: checked in stats()), and the three
unfiltered modes measured again the same way.
Disk: the same data built twice, with and without text_fields, each trained and closed; the
difference of the folders' bytes is the text index's cost.
One JSON line per measurement on stdout; a progress bar on stderr only from the CLI.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np

MODES = ("vector", "text", "hybrid")
GROUPS = 10
TOP_K = 10
BATCH = 2000
"""Items per upsert call while loading (one log record each)."""
WARMUP = 20
"""Queries of each mode run before timing: lazy memtable text indexes, caches, first calls."""


def dataset(name: str, n: int, n_queries: int, seed: int = 0
            ) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """(corpus vectors, corpus sentences, query vectors, query sentences)."""
    from lsmvec.tools.minilm_data import corpus_sentences, load_or_embed, query_sentences
    texts, qtexts = corpus_sentences(n, seed), query_sentences(n_queries, seed)
    if name == "minilm":
        data = load_or_embed(n, seed=seed, n_queries=max(1000, n_queries), max_minutes=None)
        return data.corpus, texts, data.queries[:n_queries], qtexts
    rng = np.random.default_rng(seed)
    dim = 384  # MiniLM's: the same row sizes as the minilm case
    return (rng.standard_normal((n, dim), np.float32), texts,
            rng.standard_normal((n_queries, dim), np.float32), qtexts)


def folder_bytes(folder: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of the files under `folder`, links not followed."""
    size = blocks = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            size += st.st_size
            blocks += st.st_blocks * 512
    return size, blocks


def _items(vectors: np.ndarray, texts: list[str], lo: int, hi: int, prefix: str = "") -> list:
    return [{"id": f"{prefix}{i}", "vector": vectors[i],
             "metadata": {"text": texts[i], "g": i % GROUPS}} for i in range(lo, hi)]


def build(client: Any, name: str, key: bytes, vectors: np.ndarray, texts: list[str], *,
          text: bool, bar: Callable[[int], None]) -> tuple[Any, dict]:
    """A trained index of all rows; (index, timings)."""
    options = {"text_fields": ["text"]} if text else {}
    index = client.create_index(name, key, dimension=vectors.shape[1], metric="cosine",
                                **options)
    t0 = time.perf_counter()
    for lo in range(0, len(vectors), BATCH):
        hi = min(lo + BATCH, len(vectors))
        index.upsert(_items(vectors, texts, lo, hi))
        bar(hi - lo)
    t1 = time.perf_counter()
    index.train()
    t2 = time.perf_counter()
    return index, {"upsert_s": round(t1 - t0, 2), "train_s": round(t2 - t1, 2)}


def group_of(j: int, n_queries: int) -> int:
    """Query j's filter group: queries in GROUPS consecutive blocks, one group each. Cycling
    the group every query (j % 10) would defeat the per-segment cache of filtered row
    submatrices (8 entries, first in first out: 10 cycling masks always miss), so every
    filtered vector query would decrypt the whole segment's vectors; `thrash` measures that
    case apart."""
    return min(GROUPS - 1, j * GROUPS // max(n_queries, 1))


def _filter(group: int) -> dict:
    return {"g": {"$eq": group}}


def calls(index: Any, qvecs: np.ndarray, qtexts: list[str], filtered: bool
          ) -> dict[str, Callable[[int], list]]:
    """mode name -> one query j through the public API."""
    if filtered:
        nq = len(qvecs)
        return {"vector+filter": lambda j: index.query(qvecs[j], top_k=TOP_K,
                                                       filters=_filter(group_of(j, nq))),
                "text+filter": lambda j: index.query(text=qtexts[j], top_k=TOP_K,
                                                     filters=_filter(group_of(j, nq))),
                "hybrid+filter": lambda j: index.query(qvecs[j], top_k=TOP_K, text=qtexts[j],
                                                       filters=_filter(group_of(j, nq)))}
    return {"vector": lambda j: index.query(qvecs[j], top_k=TOP_K),
            "text": lambda j: index.query(text=qtexts[j], top_k=TOP_K),
            "hybrid": lambda j: index.query(qvecs[j], top_k=TOP_K, text=qtexts[j])}


def check(modes: dict[str, Callable[[int], list]], n_queries: int) -> None:
    """The answers are what was asked for (not timed): top_k rows (text: at most), filtered
    rows of the query's group (ids are f"{prefix}{row}", group = row % 10), scored rows
    best first. Raises AssertionError otherwise: a fast wrong answer is no figure."""
    for name, call in modes.items():
        for j in range(min(n_queries, 20)):
            rows = call(j)
            ids = [r["id"] for r in rows]
            assert len(set(ids)) == len(ids), (name, j, ids)
            if name.startswith("vector"):
                assert len(rows) == TOP_K, (name, j, len(rows))
            else:
                assert 0 < len(rows) <= TOP_K, (name, j, len(rows))
                scores = [r["score"] for r in rows]
                assert scores == sorted(scores, reverse=True), (name, j, scores)
            if name.endswith("+filter"):
                groups = {int(i.lstrip("f")) % GROUPS for i in ids}
                assert groups == {group_of(j, n_queries)}, (name, j, ids)


def measure(modes: dict[str, Callable[[int], list]], n_queries: int, rounds: int,
            tick: Callable[[int], None]) -> dict[str, list[np.ndarray]]:
    """mode -> per round, the latency (s) of each query. Modes interleaved: each round one pass
    of every mode, the order rotated by one each round."""
    names = list(modes)
    for name in names:
        for j in range(min(WARMUP, n_queries)):
            modes[name](j)
    out: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for rnd in range(rounds):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for name in order:
            call = modes[name]
            lat = np.empty(n_queries)
            for j in range(n_queries):
                t = time.perf_counter()
                call(j)
                lat[j] = time.perf_counter() - t
            out[name].append(lat)
            tick(1)
    return out


def summarise(case: str, times: dict[str, list[np.ndarray]]) -> list[dict]:
    """Per mode: median over rounds of the round's p50 / p95 / mean (ms); per non-vector mode:
    median over rounds of its p50 (and p95) over the vector mode's of the same round."""
    rows = []
    for name, per_round in times.items():
        p50 = [float(np.percentile(t, 50)) * 1e3 for t in per_round]
        p95 = [float(np.percentile(t, 95)) * 1e3 for t in per_round]
        mean = [float(t.mean()) * 1e3 for t in per_round]
        rows.append({"what": "latency_ms", "case": case, "mode": name,
                     "p50": round(statistics.median(p50), 3),
                     "p95": round(statistics.median(p95), 3),
                     "mean": round(statistics.median(mean), 3),
                     "p50_rounds": [round(v, 3) for v in p50],
                     "queries": int(per_round[0].size), "rounds": len(per_round)})
    names = list(times)
    base = names[0]  # the vector mode
    ratios: dict[str, Any] = {"what": "ratio_vs_vector", "case": case}
    for name in names[1:]:
        mode = name.split("+")[0]
        for q in (50, 95):
            per = [np.percentile(a, q) / np.percentile(b, q)
                   for a, b in zip(times[name], times[base])]
            ratios[f"{mode}_p{q}"] = round(float(statistics.median(per)), 3)
    rows.append(ratios)
    return rows


def run(args: argparse.Namespace, progress: bool = False) -> list[dict]:
    """All measurements as JSON-able rows (also printed as they come when called by main)."""
    from lsmvec import Client, generate_key
    emit: Callable[[dict], None] = getattr(args, "emit", None) or (lambda row: None)
    out: list[dict] = []

    def put(row: dict) -> None:
        out.append(row)
        emit(row)

    vectors, texts, qvecs, qtexts = dataset(args.dataset, args.n, args.queries)
    n = len(vectors)
    fresh = min(args.fresh, n)
    put({"what": "setup", "dataset": args.dataset, "n": n, "dimension": int(vectors.shape[1]),
         "queries": len(qvecs), "rounds": args.rounds, "top_k": TOP_K, "fresh": fresh,
         "metric": "cosine", "text_query": "the full query sentence",
         "example_query": qtexts[0], "filter": "{'g': {'$eq': group}} (10% of rows; 10 blocks of queries)",
         "latency": "median over rounds of each round's p50/p95 over all queries"})
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-hybrid-"))
    work.mkdir(parents=True, exist_ok=True)
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=2 * n + args.rounds * 9 + fresh, unit="step", file=sys.stderr,
                   dynamic_ncols=True, desc=f"bench_hybrid {args.dataset}")
    else:
        bar = None
    tick = bar.update if bar is not None else (lambda k: None)
    key = generate_key()
    try:
        with Client(work / "db") as client, (bar if bar is not None else nullcontext()):
            # disk cost: without text first (then removed), with text kept for the queries
            sizes = {}
            for with_text in (False, True):
                name = "with_text" if with_text else "no_text"
                index, times = build(client, name, key, vectors, texts, text=with_text, bar=tick)
                index.close()
                size, alloc = folder_bytes(work / "db" / name)
                sizes[with_text] = (size, alloc)
                put({"what": "build", "text_fields": ["text"] if with_text else [], **times,
                     "folder_bytes": size, "allocated_bytes": alloc})
                if not with_text:
                    client.delete_index(name, key)
            cost = sizes[True][0] - sizes[False][0]
            put({"what": "disk", "bytes_with_text": sizes[True][0],
                 "bytes_without_text": sizes[False][0], "text_index_bytes": cost,
                 "text_index_bytes_per_row": round(cost / n, 1),
                 "text_index_share": round(cost / sizes[True][0], 3),
                 "allocated_text_index_bytes": sizes[True][1] - sizes[False][1],
                 "text_bytes_per_row_utf8": round(sum(len(t.encode()) for t in texts) / n, 1)})

            index = client.load_index("with_text", key)
            plain = calls(index, qvecs, qtexts, filtered=False)
            filtered = calls(index, qvecs, qtexts, filtered=True)
            check({**plain, **filtered}, len(qvecs))
            times = measure({**plain, **filtered}, len(qvecs), args.rounds, tick)
            for row in summarise("trained", {k: times[k] for k in plain}):
                put(row)
            for row in summarise("trained+filter", {k: times[k] for k in filtered}):
                put(row)
            lat = []
            for j in range(2 * GROUPS):  # the group changing every query: see group_of
                t = time.perf_counter()
                index.query(qvecs[j % len(qvecs)], top_k=TOP_K, filters=_filter(j % GROUPS))
                lat.append(time.perf_counter() - t)
            put({"what": "latency_ms", "case": "filter_group_cycling", "mode": "vector+filter",
                 "p50": round(float(np.percentile(lat, 50)) * 1e3, 3),
                 "p95": round(float(np.percentile(lat, 95)) * 1e3, 3),
                 "mean": round(float(np.mean(lat)) * 1e3, 3), "queries": len(lat), "rounds": 1})

            if fresh:
                for lo in range(0, fresh, BATCH):
                    hi = min(lo + BATCH, fresh)
                    index.upsert(_items(vectors, texts, lo, hi, prefix="f"))
                    tick(hi - lo)
                stats = index.stats()
                put({"what": "fresh_rows", "memtable_rows": stats["memtable_rows"],
                     "frozen_memtables": stats["frozen_memtables"],
                     "segments": [s["rows"] for s in stats["segments"]]})
                check(plain, len(qvecs))
                times = measure(plain, len(qvecs), args.rounds, tick)
                for row in summarise("trained+fresh_memtable", times):
                    put(row)
                if index.stats()["memtable_rows"] != stats["memtable_rows"]:
                    put({"what": "warning", "text": "the memtable was flushed during the run"})
            index.close()
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000, help="corpus rows (default 100000)")
    p.add_argument("--queries", type=int, default=300, help="queries per pass (default 300)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--dataset", choices=("minilm", "gaussian"), default="minilm")
    p.add_argument("--fresh", type=int, default=10_000,
                   help="unflushed rows for the fresh-data case (default 10000; 0: skip)")
    p.add_argument("--dir", default=None, help="work folder (kept); default: a temp folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.n < 1 or args.queries < 1 or args.rounds < 1 or args.fresh < 0:
        raise SystemExit("--n, --queries and --rounds must be positive, --fresh >= 0")
    args.emit = lambda row: print(json.dumps(row), file=sys.stdout, flush=True)
    run(args, progress=sys.stderr.isatty())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
