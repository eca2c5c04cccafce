"""`python -m lsmvec.tools.bench_filters`: recall@10 and QPS of filtered queries (issue 6).

    python -m lsmvec.tools.bench_filters --n 200000 --dim 128 [--json out.json]
    python -m lsmvec.tools.bench_filters --dataset minilm --n 100000   # only if tools.minilm_data cached it

Every item gets metadata with five boolean fields true for exactly 0.1%, 1%, 10%, 50% and 90%
of the rows ({"p0001", "p001", "p01", "p05", "p09"}, independent, fixed seed) and an int
"r" uniform in [0, 100000). Items are upserted as dicts in batches of --batch, then `train()`
puts everything into one trained segment. Measured, per filter, in this process:
  recall@10   against exact numpy search over the matching rows only
  single QPS  one `query` call per query (after a short warm-up)
  batched QPS one call with the whole 2-D query array (median of --repeats)
  wrong       returned ids that do not match the filter (must be 0)
Table 1: equality filters {"pXXX": True}, which the engine answers from its term index (an exact
row mask: few rows -> exact search over them, many -> ANN excluding the rest). Table 2: range
filters {"r": {"$lt": t}} of the same selectivities, which have no plan and fall back to
post-filtering with metadata read from the store. The unfiltered baseline is measured before
and after the filtered cells; ratios use the mean of the two. Fallback cells stop after
--budget seconds and report how many queries they measured. The machine has 2 cores: other
jobs skew absolute numbers, so the load average is printed with each table.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import cProfile
import hashlib
import io
import json
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from ._report import NativeLogFilter
from .datasets import brute_force_topk_chunked, clustered, clustered_queries

INDEX_NAME = "bench_filters"
BENCH_KEY = hashlib.sha256(b"lsmvec filter benchmark key").digest()  # synthetic data only
TOP_K = 10
WARMUP_QUERIES = 10
R_RANGE = 100_000
SELECTIVITIES: dict[str, float] = {"p0001": 0.001, "p001": 0.01, "p01": 0.1, "p05": 0.5, "p09": 0.9}
TARGET_RECALL = 0.95
TARGET_QPS_SHARE = 1 / 3


@dataclass
class Cell:
    """One row of a result table."""

    name: str
    filters: dict[str, Any] | None
    matching: int
    path: str
    recall: float = float("nan")
    single_qps: float = float("nan")
    single_p50_ms: float = float("nan")
    batched_qps: float = float("nan")
    queries_measured: int = 0
    wrong: int = 0
    short: int = 0  # queries that got fewer than min(k, matching) hits
    notes: list[str] = field(default_factory=list)


# -- data ---------------------------------------------------------------------------------------

def load_vectors(args: argparse.Namespace, say: Callable[[str], None]
                 ) -> tuple[np.ndarray, np.ndarray, str, str]:
    """(vectors, queries, metric, description). MiniLM only from an existing cache."""
    if args.dataset == "minilm":
        from .minilm_data import VERSION, cache_dir, load_or_embed
        folder = cache_dir()
        corpus = folder / f"minilm-v{VERSION}-n{args.n}-s{args.seed}-corpus.npy"
        cached_q = sorted((int(p.name.split("-q")[1].split("-")[0]), p)
                          for p in folder.glob(f"minilm-v{VERSION}-s{args.seed}-q*-queries.npy"))
        cached_q = [(nq, p) for nq, p in cached_q if nq >= args.queries]
        if corpus.is_file() and cached_q:
            got = load_or_embed(args.n, seed=args.seed, n_queries=cached_q[0][0], folder=folder,
                                max_minutes=None, say=say)
            return (got.corpus, got.queries[:args.queries], args.metric or "cosine",
                    f"MiniLM (all-MiniLM-L6-v2) {got.corpus.shape} from {got.corpus_path}")
        say(f"no MiniLM cache for n={args.n} under {folder}: using synthetic clustered vectors "
            f"(run `python -m lsmvec.tools.minilm_data --n {args.n}` first)")
    data = clustered(args.n, args.dim, seed=args.seed)
    queries = clustered_queries(args.queries, args.dim, seed=args.seed)
    return (data, queries, args.metric or "euclidean",
            f"synthetic clustered {data.shape} (tools.datasets.clustered, seed {args.seed})")


def make_metadata(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Boolean columns with exactly round(p * n) true rows each (at least 1), and r."""
    rng = np.random.default_rng([seed, 6])
    flags = {}
    for name, share in SELECTIVITIES.items():
        column = np.zeros(n, bool)
        column[rng.permutation(n)[:max(1, round(share * n))]] = True
        flags[name] = column
    return flags, rng.integers(0, R_RANGE, n)


def ingest(index: Any, data: np.ndarray, flags: dict[str, np.ndarray], r: np.ndarray,
           batch: int) -> float:
    """Dict upserts with metadata, then train(); returns seconds."""
    n = data.shape[0]
    t0 = time.perf_counter()
    with tqdm(total=n, unit="rows", unit_scale=True, desc="upsert", file=sys.stderr) as bar:
        for lo in range(0, n, batch):
            hi = min(n, lo + batch)
            items = [{"id": str(i), "vector": data[i],
                      "metadata": {**{k: bool(col[i]) for k, col in flags.items()}, "r": int(r[i])}}
                     for i in range(lo, hi)]
            index.upsert(items)
            bar.update(hi - lo)
    return time.perf_counter() - t0


# -- measurement --------------------------------------------------------------------------------

def to_rows(hits: list[dict[str, Any]]) -> np.ndarray:
    return np.array([int(h["id"]) for h in hits[:TOP_K]], np.int64)


def filtered_truth(data: np.ndarray, queries: np.ndarray, mask: np.ndarray | None, metric: str
                   ) -> list[np.ndarray]:
    rows = np.arange(data.shape[0]) if mask is None else np.flatnonzero(mask)
    if rows.size == 0:
        return [np.zeros(0, np.int64) for _ in queries]
    return list(rows[brute_force_topk_chunked(data[rows], queries, TOP_K, metric)])


def score(cell: Cell, found: list[np.ndarray], truth: list[np.ndarray], mask: np.ndarray | None) -> None:
    """Recall against the filtered truth (fewer than k matching rows: all of them are the
    truth), ids that break the filter, and queries answered with fewer hits than exist."""
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    total = sum(len(t) for t in truth)
    cell.recall = hits / total if total else 1.0
    cell.wrong = 0 if mask is None else int(sum(np.count_nonzero(~mask[f]) for f in found))
    cell.short = sum(len(f) < len(t) for f, t in zip(found, truth))


def measure(index: Any, cell: Cell, queries: np.ndarray, truth: list[np.ndarray],
            mask: np.ndarray | None, repeats: int, budget: float, n_probes: int | None = None) -> None:
    """Single-query pass (stops after `budget` s), then batched calls over the same queries."""
    flt = cell.filters

    def query(q: np.ndarray) -> list:
        return index.query(q, top_k=TOP_K, filters=flt, n_probes=n_probes)

    for q in queries[:WARMUP_QUERIES]:
        query(q)
    found, lat = [], []
    started = time.perf_counter()
    for q in tqdm(queries, desc=f"{cell.name} single", unit="q", leave=False, file=sys.stderr):
        t0 = time.perf_counter()
        hits = query(q)
        lat.append(time.perf_counter() - t0)
        found.append(to_rows(hits))
        if time.perf_counter() - started > budget:
            break
    m = len(found)
    cell.queries_measured = m
    if m < len(queries):
        cell.notes.append(f"single: budget {budget:g}s reached after {m} queries")
    cell.single_qps = m / sum(lat)
    cell.single_p50_ms = statistics.median(lat) * 1e3
    score(cell, found, truth[:m], mask)
    if cell.short:
        cell.notes.append(f"{cell.short}/{m} queries got fewer than min(k, matching) hits")
    times = []
    for _ in tqdm(range(repeats), desc=f"{cell.name} batched", leave=False, file=sys.stderr):
        t0 = time.perf_counter()
        batch_hits = query(queries[:m])
        times.append(time.perf_counter() - t0)
        if sum(times) > budget:
            break
    cell.batched_qps = m / statistics.median(times)
    batch_found = [to_rows(h) for h in batch_hits]
    agree = sum(np.array_equal(a, b) for a, b in zip(found, batch_found))
    if agree < m:
        cell.notes.append(f"batched results differ from single for {m - agree}/{m} queries")


def planned_path(matching: int, n: int) -> str:
    """Which branch engine.segments.SegmentSource._planned takes for one segment of n rows."""
    from lsmvec.db import segments
    limit = max(getattr(segments, "_PREFILTER_MIN_ROWS", 4096), n // getattr(segments, "_PREFILTER_SHARE", 20))
    return "plan: exact" if matching <= limit else "plan: ANN+exclude"


# -- report -------------------------------------------------------------------------------------

def markdown(cells: list[Cell], baseline: tuple[float, float], n: int) -> str:
    single0, batched0 = baseline
    head = ("| filter | matching | path | recall@10 | single QPS | vs unfiltered | p50 ms "
            "| batched QPS | vs unfiltered | queries | wrong | target |")
    lines = [head, "|" + "---|" * 12]
    for c in cells:
        s_ratio = c.single_qps / single0
        b_ratio = c.batched_qps / batched0
        ok = c.recall >= TARGET_RECALL and min(s_ratio, b_ratio) >= TARGET_QPS_SHARE and c.wrong == 0
        label = json.dumps(c.filters, separators=(",", ":")) if c.filters else "(none)"
        lines.append(f"| `{label}` | {c.matching:,} ({100 * c.matching / n:.1f}%) | {c.path} "
                     f"| {c.recall:.3f} | {c.single_qps:,.0f} | {s_ratio:.2f}x | {c.single_p50_ms:.2f} "
                     f"| {c.batched_qps:,.0f} | {b_ratio:.2f}x | {c.queries_measured} | {c.wrong} "
                     f"| {'PASS' if ok else 'FAIL'} |")
    notes = [f"- `{c.name}`: {note}" for c in cells for note in c.notes]
    return "\n".join(lines + ([""] + notes if notes else []))


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} cores"


# -- main ---------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=("synthetic", "minilm"), default="synthetic")
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=128, help="synthetic only (MiniLM is 384)")
    p.add_argument("--metric", default=None, help="default: euclidean (synthetic), cosine (minilm)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--batch", type=int, default=2000, help="items per upsert call")
    p.add_argument("--repeats", type=int, default=3, help="batched calls per cell (median)")
    p.add_argument("--budget", type=float, default=60.0,
                   help="seconds per single / batched pass before a cell stops early")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-probes", type=int, default=None, help="passed to every query (default: auto)")
    p.add_argument("--no-range", action="store_true", help="skip the fallback (range) table")
    p.add_argument("--profile", metavar="FIELD",
                   help="cProfile single queries of one cell (p0001..p09, or r:p0001.. for a range)")
    p.add_argument("--folder", type=Path,
                   help="index folder, kept and reused by a later run (default: a temp dir, removed)")
    p.add_argument("--json", type=Path, help="write every figure here")
    return p.parse_args(argv)


def profile_cell(index: Any, flt: dict[str, Any], queries: np.ndarray, n_probes: int | None) -> str:
    """cProfile of single-query calls, sorted by cumulative time (top 25)."""
    prof = cProfile.Profile()
    prof.enable()
    for q in queries:
        index.query(q, top_k=TOP_K, filters=flt, n_probes=n_probes)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
    return out.getvalue()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from lsmvec import Client

    say = lambda text: print(text, flush=True)  # noqa: E731  (CLI output)
    data, queries, metric, described = load_vectors(args, say)
    n = data.shape[0]
    flags, r = make_metadata(n, args.seed)
    say(f"{described}, metric {metric}, {len(queries)} queries; {load_text()}")
    folder = args.folder or Path(tempfile.mkdtemp(prefix="lsmvec-bench-filters-"))
    client = Client(folder)
    report: dict[str, Any] = {"dataset": described, "n": n, "dim": int(data.shape[1]), "metric": metric,
                              "n_probes": args.n_probes,
                              "queries": len(queries), "top_k": TOP_K, "load_start": os.getloadavg()}
    try:
        if INDEX_NAME in client.list_indexes():  # --folder of an earlier run with the same args
            index = client.load_index(INDEX_NAME, BENCH_KEY)
            if index.get_num_vectors() != n or index.dimension != data.shape[1]:
                raise SystemExit(f"{folder} holds another data set: remove it or pick another --folder")
            say(f"reusing the index in {folder} (same --n/--seed assumed: metadata is regenerated)")
        else:
            index = client.create_index(INDEX_NAME, BENCH_KEY, dimension=data.shape[1], metric=metric)
            report["upsert_seconds"] = ingest(index, data, flags, r, args.batch)
            t0 = time.perf_counter()
            index.train()
            report["train_seconds"] = time.perf_counter() - t0
        segs = index.stats()["segments"]
        report["segments"] = [(s["kind"], s["rows"], s["n_lists"]) for s in segs]
        say(f"upsert {report.get('upsert_seconds', 0):.1f}s, train {report.get('train_seconds', 0):.1f}s, "
            f"segments {report['segments']}")
        with tqdm(total=len(SELECTIVITIES) * 2 + 1, desc="exact truth", file=sys.stderr, leave=False) as bar:
            truth_all = filtered_truth(data, queries, None, metric)
            bar.update()
            truth_eq, masks_eq, truth_rg, masks_rg = {}, {}, {}, {}
            for name, share in SELECTIVITIES.items():
                masks_eq[name] = flags[name]
                truth_eq[name] = filtered_truth(data, queries, flags[name], metric)
                bar.update()
                masks_rg[name] = r < round(share * R_RANGE)
                truth_rg[name] = filtered_truth(data, queries, masks_rg[name], metric)
                bar.update()
        if args.profile:
            kind, _, name = args.profile.rpartition(":")
            flt = {"r": {"$lt": round(SELECTIVITIES[name] * R_RANGE)}} if kind == "r" else {name: True}
            index.query(queries[0], top_k=TOP_K, filters=flt)
            say(profile_cell(index, flt, queries[:50], args.n_probes))
            return report

        def cell(name: str, flt: dict | None, mask: np.ndarray | None, path: str,
                 truth: list[np.ndarray], budget: float) -> Cell:
            c = Cell(name, flt, n if mask is None else int(mask.sum()), path)
            measure(index, c, queries, truth, mask, args.repeats, budget, args.n_probes)
            return c

        base_a = cell("unfiltered", None, None, "ANN", truth_all, float("inf"))
        eq_cells = [cell(name, {name: True}, masks_eq[name], planned_path(int(masks_eq[name].sum()), n),
                         truth_eq[name], float("inf")) for name in SELECTIVITIES]
        report["load_after_plan"] = os.getloadavg()
        rg_cells = [] if args.no_range else [
            cell(f"r<{round(share * R_RANGE)}", {"r": {"$lt": round(share * R_RANGE)}}, masks_rg[name],
                 "post-filter", truth_rg[name], args.budget) for name, share in SELECTIVITIES.items()]
        base_b = cell("unfiltered", None, None, "ANN", truth_all, float("inf"))
        baseline = ((base_a.single_qps + base_b.single_qps) / 2,
                    (base_a.batched_qps + base_b.batched_qps) / 2)
        report.update(load_end=os.getloadavg(), baseline_before=asdict(base_a),
                      baseline_after=asdict(base_b),
                      baseline_mean={"single_qps": baseline[0], "batched_qps": baseline[1]},
                      equality=[asdict(c) for c in eq_cells], range=[asdict(c) for c in rg_cells])
        say(f"\nUnfiltered baseline: single {base_a.single_qps:,.0f} / {base_b.single_qps:,.0f} QPS "
            f"(before / after; p50 {base_a.single_p50_ms:.2f} / {base_b.single_p50_ms:.2f} ms), "
            f"batched {base_a.batched_qps:,.0f} / {base_b.batched_qps:,.0f} QPS, "
            f"recall@10 {base_a.recall:.3f}. Target: recall@10 >= {TARGET_RECALL}, QPS >= "
            f"{TARGET_QPS_SHARE:.2f}x unfiltered (mean of before/after), 0 wrong ids.")
        say(f"\n### Equality filters (term-index plan) — {load_text()}\n")
        say(markdown(eq_cells, baseline, n))
        if rg_cells:
            say(f"\n### Range filters (no plan: post-filter fallback) — {load_text()}\n")
            say(markdown(rg_cells, baseline, n))
        return report
    finally:
        client.close()
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with NativeLogFilter():
        report = run(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
