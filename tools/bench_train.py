"""`python -m lsmvec.tools.bench_train`: time to an ANN-fast index, lsmvec ``train()`` against
raw ScaNN's build of the same rows with the same parameters and threads, interleaved.

    python -m lsmvec.tools.bench_train --dataset minilm --n 60000          # 384-d, cosine
    python -m lsmvec.tools.bench_train --dataset gaussian --n 100000 --dim 128
    python -m lsmvec.tools.bench_train --dataset clustered --n 1000000 --dim 128 --rounds 2

Each round, in this one process, in alternating order (lsmvec first on even rounds, raw first
on odd ones, so a load from elsewhere hits both alike):
  lsmvec  a fresh index (durability "os", no background compaction) gets every row (untimed);
          ``flush()`` writes the memtables as exact segments (timed apart: it is ingest work);
          then ``train()`` is timed: merge into one trained segment, calibrate, seal, install.
  raw     ``scann_ops_pybind.builder(...).tree(...).score_ah(...).reorder(...)
          .set_n_training_threads(T).build()`` with ``choose_params``' parameters, run in a
          thread of the same CPU priority as lsmvec's maintenance (``run_in_background_thread``:
          nice +10 unless LSMVEC_BACKGROUND_NICE=0), so both compete alike with other jobs.
Reported: the median over rounds of train / raw (and of (flush + train) / raw), and lsmvec's
stages (``--breakdown`` wraps the build functions with timers; their overhead is nil).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

_STAGES = (  # (module, function): wrapped with a timer under --breakdown
    ("lsmvec.db.jobs", "concat_rows"),
    ("lsmvec.db.jobs", "build_segment_folder"),
    ("lsmvec.db.jobs", "install"),
    ("lsmvec.compaction.segment_build", "train_searcher"),
    ("lsmvec.compaction.segment_build", "calibrate"),
    ("lsmvec.compaction.segment_build", "seal_searcher"),
    ("lsmvec.compaction.segment_build", "write_sealed"),
    ("lsmvec.compaction.scann_assets", "serialize_searcher"),
    ("lsmvec.compaction.scann_assets", "write_sealed"),
    ("lsmvec.compaction.scann_serialize", "_collapse_to_huge_pages"),
    ("lsmvec.compaction.scann_serialize", "_DatasetWatch.finish"),
    # before the split of segment.py (a baseline tree):
    ("lsmvec.compaction.segment", "train_searcher"),
    ("lsmvec.compaction.segment", "calibrate"),
    ("lsmvec.compaction.segment", "seal_searcher"),
    ("lsmvec.compaction.segment", "write_sealed"),
)


def _timed_stages(timings: dict[str, float]) -> None:
    import importlib
    for module_name, name in _STAGES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        owner = module
        if "." in name:  # a method: Class.method
            owner = getattr(module, name.split(".")[0], None)
        function = getattr(owner, name.rsplit(".", 1)[-1], None)
        if function is None:
            continue
        label = f"{module_name.rsplit('.', 1)[1]}.{name}"

        def timed(*args: Any, _f: Callable = function, _label: str = label, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                timings[_label] = timings.get(_label, 0.0) + time.perf_counter() - started

        setattr(owner, name.rsplit(".", 1)[-1], timed)


def cpu_seconds() -> float:
    """CPU time of this process's threads and of its reaped children (the serialize child)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def load(args: argparse.Namespace) -> tuple[np.ndarray, str]:
    if args.dataset == "minilm":
        from .minilm_data import load_or_embed
        got = load_or_embed(args.n, seed=0, n_queries=1000,
                            say=lambda line: print(line, file=sys.stderr))
        return got.corpus, "cosine"
    if args.dataset == "clustered":
        from .datasets import clustered
        return clustered(args.n, args.dim, seed=0), "euclidean"
    rng = np.random.default_rng(0)
    return rng.standard_normal((args.n, args.dim), dtype=np.float32), "euclidean"


def lsmvec_round(data: np.ndarray, metric: str, workdir: str | None,
                 timings: dict[str, float]) -> dict[str, Any]:
    from lsmvec import Client, generate_key
    root = Path(tempfile.mkdtemp(prefix="lsmvec-bench-train-", dir=workdir))
    try:
        client = Client(root, durability="os")
        index = client.create_index("bench", generate_key(), dimension=data.shape[1],
                                    metric=metric, background_compaction=False)
        ids = np.arange(len(data), dtype=np.int64)
        for lo in range(0, len(data), 10_000):
            index.upsert(ids=ids[lo:lo + 10_000], vectors=data[lo:lo + 10_000])
        started = time.perf_counter()
        index.flush()
        flushed = time.perf_counter() - started
        timings.clear()
        started, cpu = time.perf_counter(), cpu_seconds()
        index.train()
        trained, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        segments = index.stats()["segments"]
        index.close()
        client.close()
        return {"flush_s": flushed, "train_s": trained, "train_cpu_s": cpu,
                "stages": dict(timings),
                "segments": [(s["kind"], s["rows"], s["n_lists"], s.get("leaves_to_search"))
                             for s in segments]}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def raw_round(data: np.ndarray, metric: str, threads: int) -> tuple[float, float]:
    from scann.scann_ops.py import scann_ops_pybind

    from lsmvec.compaction.compactor import run_in_background_thread
    from lsmvec.compaction.scann_params import choose_params
    p = choose_params(*data.shape, metric)

    def build() -> tuple[float, float]:
        started, cpu = time.perf_counter(), cpu_seconds()
        builder = (scann_ops_pybind.builder(data, 10, p.distance)
                   .tree(num_leaves=p.num_leaves, num_leaves_to_search=p.leaves_to_search,
                         training_sample_size=p.training_sample_size,
                         training_iterations=p.training_iterations)
                   .score_ah(p.dims_per_block,
                             anisotropic_quantization_threshold=p.anisotropic_threshold,
                             training_sample_size=p.training_sample_size)
                   .reorder(p.reorder).set_n_training_threads(threads))
        searcher = builder.build()
        elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        del searcher
        return elapsed, cpu

    return run_in_background_thread(build)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("minilm", "gaussian", "clustered"), default="minilm")
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--dim", type=int, default=128, help="gaussian / clustered only")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="raw ScaNN's training threads (default: every usable core, as "
                             "train() uses)")
    parser.add_argument("--breakdown", action="store_true", help="time lsmvec's build stages")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    data, metric = load(args)
    if metric == "cosine":  # the engine stores unit rows: raw ScaNN gets the same bytes
        from lsmvec.request.items import finish_vectors
        raw_data = np.ascontiguousarray(finish_vectors(data, metric), np.float32)
    else:
        raw_data = np.ascontiguousarray(data, np.float32)
    timings: dict[str, float] = {}
    if args.breakdown:
        _timed_stages(timings)
    rounds = []
    for number in range(args.rounds):
        row: dict[str, Any] = {}
        for side in (("lsmvec", "raw") if number % 2 == 0 else ("raw", "lsmvec")):
            if side == "raw":
                row["raw_s"], row["raw_cpu_s"] = raw_round(raw_data, metric, args.threads)
            else:
                row.update(lsmvec_round(data, metric, args.workdir, timings))
        row["ratio"] = row["train_s"] / row["raw_s"]
        row["cpu_ratio"] = row["train_cpu_s"] / row["raw_cpu_s"]
        row["ratio_with_flush"] = (row["train_s"] + row["flush_s"]) / row["raw_s"]
        rounds.append(row)
        print(f"round {number}: train {row['train_s']:.2f}s (flush {row['flush_s']:.2f}s) raw "
              f"{row['raw_s']:.2f}s ratio {row['ratio']:.2f} (with flush "
              f"{row['ratio_with_flush']:.2f}; cpu {row['train_cpu_s']:.1f}s / "
              f"{row['raw_cpu_s']:.1f}s = {row['cpu_ratio']:.2f}) {row['segments']}"
              + (" " + json.dumps({k: round(v, 3) for k, v in row["stages"].items()})
                 if args.breakdown else ""), file=sys.stderr, flush=True)
    summary = {"dataset": args.dataset, "n": data.shape[0], "dim": data.shape[1],
               "metric": metric, "raw_threads": args.threads,
               "median_ratio": statistics.median(r["ratio"] for r in rounds),
               "median_ratio_with_flush": statistics.median(r["ratio_with_flush"] for r in rounds),
               "median_cpu_ratio": statistics.median(r["cpu_ratio"] for r in rounds),
               "median_train_s": statistics.median(r["train_s"] for r in rounds),
               "median_raw_s": statistics.median(r["raw_s"] for r in rounds),
               "loadavg": os.getloadavg(), "rounds": rounds}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{args.dataset} {data.shape[0]:,} x {data.shape[1]} ({metric}), raw ScaNN on "
              f"{args.threads} thread(s): train {summary['median_train_s']:.2f}s vs raw "
              f"{summary['median_raw_s']:.2f}s; median ratio {summary['median_ratio']:.2f} "
              f"(flush included: {summary['median_ratio_with_flush']:.2f}; CPU time "
              f"{summary['median_cpu_ratio']:.2f}); ratios "
              f"{[round(r['ratio'], 2) for r in rounds]}; load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
