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

    python -m lsmvec.tools.bench_train --dataset clustered --n 1000000 --dim 128 \
        --reopen /tmp/bench-reopen-1m --children 3

``--reopen FOLDER``: time to a queryable index after a restart. The first run builds the index
in FOLDER (ingest, train; raw ScaNN's searcher of the same rows is serialized beside it) and
keeps it; every run then starts ``--children`` fresh interpreters per side, alternating, each
timing ``Client(folder).load_index(...)`` + its first query (lsmvec) against ScaNN's
``load_searcher`` + its first search (raw). Libraries are imported before the clock starts.
``--breakdown`` times the open's stages in the lsmvec children.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
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

_OPEN_STAGES = (  # timed in a reopen child under --breakdown
    ("lsmvec.compaction.segment", "Segment.open"),
    ("lsmvec.compaction.segment", "load_sealed_searcher"),
    ("lsmvec.compaction.segment", "_read_rows"),
    ("lsmvec.compaction.scann_assets", "read_sealed"),
    ("lsmvec.compaction.scann_assets", "read_sealed_files"),
    ("lsmvec.compaction.scann_assets", "make_scratch_dir"),
    ("lsmvec.compaction.scann_assets", "remove_scratch_dir"),
    ("scann.scann_ops.py.scann_ops_pybind", "load_searcher"),
    ("lsmvec.db.segments", "read_row_ids"),
    ("lsmvec.db.segments", "read_terms"),
    ("lsmvec.db.segments", "SegmentSource"),
)


def _timed_stages(timings: dict[str, float], stages: tuple = _STAGES) -> None:
    import importlib
    for module_name, name in stages:
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

        if isinstance(owner, type) and isinstance(owner.__dict__.get(name.rsplit(".", 1)[-1]),
                                                  classmethod):
            timed = classmethod(lambda cls, *a, _t=timed, **k: _t(*a, **k))  # type: ignore
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


def raw_rows(data: np.ndarray, metric: str) -> np.ndarray:
    """The rows as the engine stores them (unit rows under cosine): raw ScaNN gets the same
    bytes (no copy of float32 rows under other metrics)."""
    if metric != "cosine":
        return np.ascontiguousarray(data, np.float32)
    from lsmvec.request.items import finish_vectors
    return np.ascontiguousarray(finish_vectors(data, metric), np.float32)


def raw_build(rows: np.ndarray, metric: str, threads: int) -> Any:
    """Raw ScaNN's searcher of ``rows`` with ``choose_params``' parameters (what lsmvec's
    trained segment uses), trained on ``threads`` threads."""
    from scann.scann_ops.py import scann_ops_pybind

    from lsmvec.compaction.scann_params import choose_params
    p = choose_params(*rows.shape, metric)
    return (scann_ops_pybind.builder(rows, 10, p.distance)
            .tree(num_leaves=p.num_leaves, num_leaves_to_search=p.leaves_to_search,
                  training_sample_size=p.training_sample_size,
                  training_iterations=p.training_iterations)
            .score_ah(p.dims_per_block, anisotropic_quantization_threshold=p.anisotropic_threshold,
                      training_sample_size=p.training_sample_size)
            .reorder(p.reorder).set_n_training_threads(threads).build())


def raw_round(data: np.ndarray, metric: str, threads: int) -> tuple[float, float]:
    from lsmvec.compaction.compactor import run_in_background_thread

    def build() -> tuple[float, float]:
        started, cpu = time.perf_counter(), cpu_seconds()
        searcher = raw_build(data, metric, threads)
        elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        del searcher
        return elapsed, cpu

    return run_in_background_thread(build)


# -- --reopen: a fresh process's time to its first answer --------------------------------------

def build_reopen_folder(folder: Path, data: np.ndarray, metric: str, threads: int) -> None:
    """The kept index (FOLDER/lsm, its key in FOLDER/key.hex: a benchmark's throwaway key) and
    raw ScaNN's serialized searcher of the same rows (FOLDER/raw); skipped when present."""
    from lsmvec import Client, generate_key
    if not (folder / "key.hex").exists():
        shutil.rmtree(folder / "lsm", ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        key = generate_key()
        with Client(folder / "lsm", durability="os") as client:
            index = client.create_index("bench", key, dimension=data.shape[1], metric=metric,
                                        background_compaction=False)
            ids = np.arange(len(data), dtype=np.int64)
            for lo in range(0, len(data), 10_000):
                index.upsert(ids=ids[lo:lo + 10_000], vectors=data[lo:lo + 10_000])
            started = time.perf_counter()
            index.train()
            print(f"built the lsmvec index ({time.perf_counter() - started:.1f}s train)",
                  file=sys.stderr, flush=True)
            index.close()
        (folder / "key.hex").write_text(key.hex())
    if not (folder / "raw" / "scann_assets.pbtxt").exists():
        searcher = raw_build(raw_rows(data, metric), metric, threads)
        shutil.rmtree(folder / "raw", ignore_errors=True)
        (folder / "raw").mkdir()
        searcher.serialize(str(folder / "raw"))


def reopen_child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh interpreter: the time from nothing open to the first answer."""
    from scann.scann_ops.py import scann_ops_pybind

    import lsmvec.compaction.segment  # noqa: F401  (imported before the clock, like ScaNN)
    from lsmvec import Client
    query = np.asarray(spec["query"], np.float32)
    stages: dict[str, float] = {}
    if spec.get("breakdown"):
        _timed_stages(stages, _OPEN_STAGES)
    if spec.get("unseal_threads"):  # an A/B of the unseal's threads (load default: one)
        from lsmvec.compaction import scann_assets
        real = scann_assets.read_sealed_files
        scann_assets.read_sealed_files = lambda requests, _threads: real(requests,
                                                                          spec["unseal_threads"])
    cpu_started = cpu_seconds()
    started = time.perf_counter()
    if spec["what"] != "raw":
        client = Client(spec["folder"])
        index = client.load_index("bench", bytes.fromhex(spec["key"]))
        opened = time.perf_counter()
        index.query(query, top_k=10)
    else:
        searcher = scann_ops_pybind.load_searcher(spec["folder"])
        opened = time.perf_counter()
        searcher.search(query, 10)
    done = time.perf_counter()
    return {"open_s": opened - started, "first_query_s": done - opened,
            "total_s": done - started, "cpu_s": cpu_seconds() - cpu_started, "stages": stages}


def run_reopen_child(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` goes through stdin (it holds the key); the child answers one JSON line."""
    proc = subprocess.run([sys.executable, "-m", "lsmvec.tools.bench_train", "--reopen-child"],
                          input=json.dumps(spec), capture_output=True, text=True, check=False,
                          timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def reopen(args: argparse.Namespace, data: np.ndarray, metric: str) -> int:
    folder = Path(args.reopen)
    build_reopen_folder(folder, data, metric, args.threads)
    from .datasets import clustered_queries
    query = (clustered_queries(1, data.shape[1], seed=0)[0] if args.dataset == "clustered"
             else data[0]).tolist()
    key = (folder / "key.hex").read_text().strip()
    extra = f"lsmvec-{args.unseal_threads}t"
    sides = ["lsmvec", "raw"] + ([extra] if args.unseal_threads else [])
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for number in range(args.children):
        for side in (sides if number % 2 == 0 else sides[::-1]):
            got = run_reopen_child({"what": side, "key": key, "query": query,
                                    "folder": str(folder / ("raw" if side == "raw" else "lsm")),
                                    "unseal_threads": (args.unseal_threads if side == extra
                                                       else None),
                                    "breakdown": args.breakdown and side != "raw"})
            runs[side].append(got)
            print(f"child {number} {side}: open {got['open_s']:.3f}s + first query "
                  f"{got['first_query_s'] * 1000:.1f} ms = {got['total_s']:.3f}s "
                  f"(cpu {got['cpu_s']:.2f}s)"
                  + (" " + json.dumps({k: round(v, 3) for k, v in got["stages"].items()})
                     if got["stages"] else ""), file=sys.stderr, flush=True)
    ratios = [a["total_s"] / b["total_s"] for a, b in zip(runs["lsmvec"], runs["raw"])]
    lsm = statistics.median(r["total_s"] for r in runs["lsmvec"])
    raw = statistics.median(r["total_s"] for r in runs["raw"])
    print(f"reopen + first query, {data.shape[0]:,} x {data.shape[1]}: lsmvec {lsm:.2f}s, raw "
          f"ScaNN load_searcher {raw:.2f}s (medians of {args.children}); median ratio "
          f"{statistics.median(ratios):.2f}; load {os.getloadavg()[0]:.1f}")
    if args.unseal_threads:
        other = [a["total_s"] / b["total_s"] for a, b in zip(runs[extra], runs["raw"])]
        print(f"  unsealing on {args.unseal_threads} thread(s): "
              f"{statistics.median(r['total_s'] for r in runs[extra]):.2f}s, median ratio "
              f"{statistics.median(other):.2f}")
    return 0


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
    parser.add_argument("--reopen", metavar="FOLDER", default=None,
                        help="time reopen + first query in fresh processes (the index is built "
                             "into FOLDER once and kept)")
    parser.add_argument("--children", type=int, default=3, help="--reopen: children per side")
    parser.add_argument("--unseal-threads", type=int, default=0,
                        help="--reopen: also children that unseal on this many threads")
    parser.add_argument("--reopen-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reopen_child:
        print(json.dumps(reopen_child(json.loads(sys.stdin.read()))))
        return 0
    data, metric = load(args)
    if args.reopen:
        return reopen(args, data, metric)
    raw_data = raw_rows(data, metric)
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
