"""`python -m lsmvec.tools.bench_metadata`: query_metadata against a full scan of the items.

    python -m lsmvec.tools.bench_metadata --n 1000000 --dir /tmp/bench-metadata
    python -m lsmvec.tools.bench_metadata --n 1000000 --dir /tmp/bench-metadata --reuse

Steps, all in this process:
  a. build (or, with --reuse, reopen) an index of --n items, dim 8 random vectors, metadata
     {"cat": i % 100, "half": i even, "n": i, "title": "<word> <word> i", "tags": [...]},
     metadata_schema={"title": {"pattern": True}}: all but --memtable items upserted and
     train()ed into segments, the last --memtable items left in the memtable
  b. per filter, the ids query_metadata answers against "a full scan of the items" -- what a
     user without query_metadata does: list_ids(), get(chunk, include=["metadata"]) in chunks
     of --chunk, each metadata tested with compile_filter(spec).matches (the top-10 case: the
     matches' 10 largest "n"). Both answers must be the same id set (the same list when
     ordered); the tool stops otherwise
  c. --rounds rounds; each round times one query_metadata pass per case and one scan pass,
     the order swapped every round. The scan reads the items ONCE per pass and tests every
     case's predicate on each chunk (the read does not depend on the filter): a case's scan
     time is the pass's read time plus its own predicate time. The figure is the median over
     rounds of scan time / query_metadata time
  d. the trigram index's share: $contains / $regex on the pattern field timed again with the
     segments' n-grams hidden (each string value of the field tested instead of the
     candidates of the grams), in the same rounds
  e. build time, folder bytes, resident memory (now and peak)
The machine has 2 cores shared with other jobs: absolute times drift; the ratios much less.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import contextlib
import hashlib
import heapq
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from ._report import NativeLogFilter, folder_bytes, mbytes, seconds, table
from .bench_lsm import resident_split, rss_bytes

INDEX_NAME = "meta"
DIM = 8
SCHEMA = {"title": {"pattern": True}}
# A fixed benchmark key (no secret: the data is synthetic), so --reuse can reopen the folder.
BENCH_KEY = hashlib.sha256(b"lsmvec bench_metadata").digest()
MARKER = "bench_metadata.json"

# Title words: the first word from FIRST, the second from SECOND. Their consonants differ, so no
# word of one list is inside a word of the other, and a FIRST word is in ~1 title in 100.
_VOWELS = "aeiou"
FIRST = [a + v + b + w for a in "bdgkmp" for v in _VOWELS for b in "bdgkmp" for w in _VOWELS][:100]
SECOND = [a + v + b + w for a in "flnrst" for v in _VOWELS for b in "flnrst" for w in _VOWELS][:100]
_TOPICS = ("science", "sport", "music", "travel", "food", "finance", "health")


def words_of(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, len(FIRST), n), rng.integers(0, len(SECOND), n)


def item_metadata(i: int, first: int, second: int) -> dict[str, Any]:
    return {"cat": i % 100, "half": i % 2 == 0, "n": i,
            "title": f"{FIRST[first]} {SECOND[second]} {i}",
            "tags": [_TOPICS[i % len(_TOPICS)], f"t{i % 13}"]}


def cases() -> list[dict[str, Any]]:
    """name, filter, order_by, top_k, and whether the n-gram-less variant is timed too."""
    word = FIRST[5]
    return [
        {"name": "eq 1%", "filters": {"cat": 7}},
        {"name": "eq 50%", "filters": {"half": True}},
        {"name": "$nor/$ne 1%", "filters": {"$nor": [{"cat": {"$ne": 7}}]}},
        {"name": "$ne 50%", "filters": {"half": {"$ne": True}}},
        {"name": "$contains 1%", "filters": {"title": {"$contains": word}}, "grams": True},
        {"name": "$regex 1%", "filters": {"title": {"$regex": f"^{FIRST[9]} [a-z]+ [0-9]+$"}},
         "grams": True},
        {"name": "$ne 50% top 10 by n desc", "filters": {"half": {"$ne": True}},
         "order_by": {"n": -1}, "top_k": 10},
    ]


# -- build --------------------------------------------------------------------------------------

def write_items(index: Any, args: argparse.Namespace, lo: int, hi: int,
                bar: tqdm | None = None) -> None:
    """Upsert items lo .. hi - 1 (the same vectors and metadata on every call)."""
    first, second = words_of(args.n, args.seed)
    vectors = np.random.default_rng(args.seed + 1).standard_normal((args.n, DIM), dtype=np.float32)
    for start in range(lo, hi, args.batch):
        end = min(hi, start + args.batch)
        index.upsert([{"id": str(i), "vector": vectors[i],
                       "metadata": item_metadata(i, int(first[i]), int(second[i]))}
                      for i in range(start, end)])
        if bar is not None:
            bar.update(end - start)


def build(args: argparse.Namespace, folder: Path, say) -> tuple[Any, Any, dict[str, Any]]:
    """A new index in `folder` (removed first), or the one there with --reuse."""
    from lsmvec import Client
    marker = folder / MARKER
    wanted = {"n": args.n, "memtable": args.memtable, "seed": args.seed}
    if args.reuse and marker.exists():
        built = json.loads(marker.read_text())
        if {k: built.get(k) for k in wanted} == wanted:
            client = Client(folder / "index")
            index = client.load_index(INDEX_NAME, BENCH_KEY)
            say(f"reusing {folder} (built in {built['build_seconds']:.0f}s)")
            # close() flushed the memtable: the same last items written again are in it anew
            # (their segment rows shadowed), so the answers and the layout are the build's.
            write_items(index, args, args.n - args.memtable, args.n)
            return client, index, {**built, "reused": True}
        say(f"{folder} holds another build ({built}): building again")
    if (folder / "index").exists():
        shutil.rmtree(folder / "index")
    marker.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    client = Client(folder / "index")
    index = client.create_index(INDEX_NAME, BENCH_KEY, dimension=DIM, metadata_schema=SCHEMA)
    in_segments = max(0, args.n - args.memtable)
    t0 = time.perf_counter()
    with tqdm(total=args.n, unit="items", unit_scale=True, desc="build", file=sys.stderr) as bar:
        write_items(index, args, 0, in_segments, bar)
        ingest = time.perf_counter() - t0
        t1 = time.perf_counter()
        index.train()
        trained = time.perf_counter() - t1
        write_items(index, args, in_segments, args.n, bar)
    built = {**wanted, "build_seconds": time.perf_counter() - t0, "ingest_seconds": ingest,
             "train_seconds": trained}
    if index.get_num_vectors() != args.n:
        raise RuntimeError(f"index holds {index.get_num_vectors()} items, expected {args.n}")
    marker.write_text(json.dumps(built))
    say(f"built {args.n:,} items in {built['build_seconds']:.1f}s (train {trained:.1f}s)")
    return client, index, {**built, "reused": False}


# -- the two ways to answer ---------------------------------------------------------------------

@contextlib.contextmanager
def grams_hidden(index: Any) -> Iterator[None]:
    """The segments' n-gram postings set aside (a benchmark may look inside): $contains /
    $regex on a pattern field then test every string value of the field, as on any other."""
    terms = [source.terms for source in index._core.segments]
    saved = [t.grams for t in terms]
    for t in terms:
        t.grams = {}
    try:
        yield
    finally:
        for t, grams in zip(terms, saved):
            t.grams = grams


def by_query_metadata(index: Any, case: dict[str, Any]) -> list[str]:
    got = index.query_metadata(case["filters"], top_k=case.get("top_k"),
                               order_by=case.get("order_by"))
    return [hit["id"] for hit in got]


def scan_pass(index: Any, compiled: list[Any], ordered: list[dict[str, Any] | None],
              chunk: int) -> tuple[float, list[float], list[list[str]]]:
    """One full scan: (read seconds, each predicate's seconds, each case's ids). A case with
    an order keeps the top_k largest/smallest values of its field (heaps, as a user would)."""
    clock = time.perf_counter
    t0 = clock()
    ids = index.list_ids()
    spent = [0.0] * len(compiled)
    found: list[list[str]] = [[] for _ in compiled]
    heaps: list[list] = [[] for _ in compiled]
    for lo in range(0, len(ids), chunk):
        items = index.get(ids[lo:lo + chunk], include=["metadata"])
        for k, (flt, order) in enumerate(zip(compiled, ordered)):
            t1 = clock()
            matches = flt.matches
            if order is None:
                found[k].extend(item["id"] for item in items if matches(item["metadata"]))
            else:
                sign = -1 if order["descending"] else 1
                heap = heaps[k]
                field, top = order["field"], order["top_k"]
                for item in items:
                    if matches(item["metadata"]):
                        entry = (-sign * item["metadata"][field], item["id"])
                        if len(heap) < top:
                            heapq.heappush(heap, entry)
                        elif entry > heap[0]:
                            heapq.heapreplace(heap, entry)
            spent[k] += clock() - t1
    for k, order in enumerate(ordered):
        if order is not None:
            found[k] = [item_id for _key, item_id in sorted(heaps[k], reverse=True)]
    total = clock() - t0
    return total - sum(spent), spent, found


def _scan_order(case: dict[str, Any]) -> dict[str, Any] | None:
    if case.get("order_by") is None:
        return None
    ((field, direction),) = case["order_by"].items()
    return {"field": field, "descending": direction == -1, "top_k": case["top_k"]}


def _same(case: dict[str, Any], ours: list[str], theirs: list[str]) -> None:
    if case.get("order_by") is not None:
        if ours != theirs:
            raise AssertionError(f"{case['name']}: query_metadata {ours} != scan {theirs}")
    elif len(ours) != len(theirs) or set(ours) != set(theirs):
        raise AssertionError(f"{case['name']}: query_metadata found {len(ours)} ids, the scan "
                             f"{len(theirs)}; {len(set(ours) ^ set(theirs))} differ")


# -- the run ------------------------------------------------------------------------------------

def measure(index: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    from lsmvec.request.filters import compile_filter
    todo = cases()
    compiled = [compile_filter(case["filters"]) for case in todo]
    ordered = [_scan_order(case) for case in todo]
    variants = [(k, False) for k in range(len(todo))] + \
               [(k, True) for k, case in enumerate(todo) if case.get("grams")]
    qm: dict[tuple[int, bool], list[float]] = {v: [] for v in variants}
    qm_cpu: dict[tuple[int, bool], list[float]] = {v: [] for v in variants}
    reads: list[float] = []
    preds: list[list[float]] = []
    counts: dict[int, int] = {}
    for rnd in tqdm(range(args.rounds), desc="rounds", unit="round", file=sys.stderr):
        def qm_passes() -> None:
            for k, hidden in variants:
                with grams_hidden(index) if hidden else contextlib.nullcontext():
                    cpu, t0 = time.thread_time(), time.perf_counter()
                    got = by_query_metadata(index, todo[k])
                    qm[(k, hidden)].append(time.perf_counter() - t0)
                    qm_cpu[(k, hidden)].append(time.thread_time() - cpu)
                answers[(k, hidden)] = got

        answers: dict[tuple[int, bool], list[str]] = {}
        scanned: list[list[str]] = []
        for step in (("qm", "scan") if rnd % 2 == 0 else ("scan", "qm")):
            if step == "qm":
                qm_passes()
            else:
                read, spent, scanned = scan_pass(index, compiled, ordered, args.chunk)
                reads.append(read)
                preds.append(spent)
        for (k, _hidden), got in answers.items():  # every round: both answers are the same
            _same(todo[k], got, scanned[k])
            counts[k] = len(scanned[k])
    rows = []
    for k, hidden in variants:
        case = todo[k]
        scan_times = [read + spent[k] for read, spent in zip(reads, preds)]
        ratios = [s / q for s, q in zip(scan_times, qm[(k, hidden)])]
        rows.append({"case": case["name"] + (" (no trigram index)" if hidden else ""),
                     "filters": case["filters"], "order_by": case.get("order_by"),
                     "top_k": case.get("top_k"),
                     "trigrams": case.get("grams", False) and not hidden,
                     "exact_plan": compiled[k].plan is not None, "matches": counts[k],
                     "selectivity": (counts[k] if case.get("top_k") is None else
                                     len(by_query_metadata(index, {**case, "top_k": None})))
                     / args.n,
                     "qm_seconds": statistics.median(qm[(k, hidden)]),
                     "qm_cpu_seconds": statistics.median(qm_cpu[(k, hidden)]),
                     "scan_seconds": statistics.median(scan_times),
                     "scan_predicate_seconds": statistics.median(p[k] for p in preds),
                     "speedup": statistics.median(ratios), "speedups": ratios})
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    result: dict[str, Any] = {"args": vars(args), "loadavg_start": os.getloadavg()}
    folder = Path(args.dir)
    client, index, result["build"] = build(args, folder, say)
    try:
        stats = index.stats()
        result["segments"] = [(s["kind"], s["rows"]) for s in stats["segments"]]
        result["memtable_rows"] = stats["memtable_rows"]
        result["rss_before"] = rss_bytes()
        result["cases"] = measure(index, args)
        result["rss_after"] = rss_bytes()
        result["rss_split_after"] = resident_split()
        result["rss_peak"] = rss_bytes("VmHWM")
        result["item_cache"] = {"bytes": index._core.item_cache.nbytes,
                                "max_bytes": index._core.item_cache.max_bytes}
    finally:
        index.close()
        client.close()
    result["folder_bytes"] = folder_bytes(folder / "index")
    result["loadavg_end"] = os.getloadavg()
    return result


def report(result: dict[str, Any]) -> str:
    b = result["build"]
    split = ", ".join(f"{kind} {mbytes(size)}" for kind, size in result["rss_split_after"].items())
    head = (f"lsmvec bench_metadata: {result['args']['n']:,} items, {result['memtable_rows']:,} in "
            f"the memtable, segments {result['segments']}; build {seconds(b['build_seconds'])}"
            f"{' (reused)' if b['reused'] else ''} (train {seconds(b['train_seconds'])}); folder "
            f"{mbytes(result['folder_bytes'])}; RSS {mbytes(result['rss_after'])} (peak "
            f"{mbytes(result['rss_peak'])}; now {split}); {result['args']['rounds']} rounds; load "
            f"{result['loadavg_start'][0]:.1f} -> {result['loadavg_end'][0]:.1f}")
    rows = [(r["case"], f"{r['selectivity'] * 100:.2f}%", "yes" if r["exact_plan"] else "no",
             seconds(r["qm_seconds"]), seconds(r["scan_seconds"]), f"{r['speedup']:,.1f}x")
            for r in result["cases"]]
    return head + "\n\n" + table(("case", "selectivity", "exact plan", "query_metadata",
                                  "full scan", "scan / qm (median)"), rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--memtable", type=int, default=5_000,
                        help="items upserted after train(), left in the memtable")
    parser.add_argument("--dir", default="/tmp/lsmvec-bench-metadata",
                        help="folder of the index (its 'index' sub-folder is replaced)")
    parser.add_argument("--reuse", action="store_true",
                        help="reopen the index --dir holds when it was built with these arguments")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=10_000, help="items per upsert call")
    parser.add_argument("--chunk", type=int, default=10_000, help="ids per get() of the scan")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true",
                        help="stdout: one JSON line per case, then one summary line")
    parser.add_argument("--out", default=None, help="also write the whole result here (JSON)")
    parser.add_argument("--show-native-logs", action="store_true")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.n < 1 or not 0 <= args.memtable <= args.n:
        parser.error("--rounds and --n must be >= 1, --memtable between 0 and --n")
    with NativeLogFilter(enabled=not args.show_native_logs):
        result = run(args)
    if args.json:
        for row in result["cases"]:
            print(json.dumps(row))
        print(json.dumps({"summary": True, **{k: v for k, v in result.items() if k != "cases"}}))
    else:
        print(report(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**result, "markdown": report(result)}, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
