"""`python -m lsmvec.tools.bench_crypto`: what encryption costs lsmvec (ingest, close, reopen, query, get).

lsmvec cannot turn encryption off, so the comparison is built here. Every phase runs in a fresh
subprocess (`--child CONFIG --phase ingest|build|load`), configurations alternating:
  sealed        the engine as shipped: AES-256-GCM everywhere, HMAC-SHA256 id hashes
  null-aead     AESGCM replaced, wherever a module of ours imported it, by a stand-in keeping
                formats and sizes (ciphertext = plaintext + 16 zero bytes; *_into too), no crypto
  null          null-aead, and IndexCipher.id_hash = unkeyed blake2b(digest_size=16)
  sealed-timed  sealed, with the thread CPU time inside every crypto call summed (robust to
                other jobs on the machine, unlike wall-clock differences); not in the comparison
Integrity that is not secrecy stays everywhere (WAL CRCs, SHA-256 of sealed files, nonces). A
null child fails unless the real AESGCM, guarded in cryptography's own module, saw 0 calls.
ingest: create, N x DIM (datasets.clustered) in batches, one thread, fsync, close (the final
flush). build: ingest, a META_N-item index with metadata (ingest, train, close), reopen + train
+ close of the first. load (fresh process on build's folders): reopen (segment files decrypted),
QPS with include=["distance"] (nothing decrypted) single and batched, single QPS with
include=["metadata"] (a store value decrypted per hit), get() of 1000 ids.
`--profile`: the sealed ingest + close under cProfile, every thread, crypto rows summed.
"""
from __future__ import annotations

import argparse
import cProfile
import hashlib
import importlib
import io
import json
import os
import platform
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._report import NativeLogFilter, seconds, table
from .datasets import brute_force_topk, clustered, clustered_queries

INDEX_NAME = "bench"
META_INDEX_NAME = "meta"
# A fixed key: the load child opens what the build child wrote; the data is synthetic.
BENCH_KEY = hashlib.sha256(b"lsmvec crypto benchmark key").digest()
CONFIGS = ("sealed", "null-aead", "null")
TIMED = "sealed-timed"  # the real crypto with per-call CPU accounting: not in the comparison
TAG_BYTES = 16
_ZERO_TAG = bytes(TAG_BYTES)


# -- the stand-ins ------------------------------------------------------------------------------

_CALLS: dict[str, list[None]] = {}
"""Calls the stand-ins served ("null.*") and calls that reached the real AESGCM ("real.*"): one
list.append per call (atomic, no lock: the stand-ins must stay cheaper than what they replace)."""
COUNTS: dict[str, int] = {}
"""sealed-timed: calls ("n.*") and thread CPU ns ("ns.*") per crypto function (under the lock)."""
_COUNTS_LOCK = threading.Lock()


def _count(what: str) -> None:
    calls = _CALLS.get(what)
    if calls is None:
        calls = _CALLS.setdefault(what, [])
    calls.append(None)


def counts() -> dict[str, int]:
    """Everything counted so far in this process."""
    return {**{k: len(v) for k, v in list(_CALLS.items())}, **COUNTS}


class NullAESGCM:
    """AESGCM's interface and sizes without cryptography: the tag is 16 zero bytes, unchecked.
    The copy a real call makes (into a new bytes object, or into `buf`) is kept."""

    def __init__(self, key: bytes | bytearray | memoryview) -> None:
        _count("null.init")

    def encrypt(self, nonce: Any, data: Any, associated_data: Any) -> bytes:
        _count("null.encrypt")
        return bytes(data) + _ZERO_TAG

    def decrypt(self, nonce: Any, data: Any, associated_data: Any) -> bytes:
        _count("null.decrypt")
        return bytes(memoryview(data).cast("B")[:-TAG_BYTES])

    def encrypt_into(self, nonce: Any, data: Any, associated_data: Any, buf: Any) -> int:
        _count("null.encrypt_into")
        src, out = memoryview(data).cast("B"), memoryview(buf).cast("B")
        out[:len(src)] = src
        out[len(src):len(src) + TAG_BYTES] = _ZERO_TAG
        return len(src) + TAG_BYTES

    def decrypt_into(self, nonce: Any, data: Any, associated_data: Any, buf: Any) -> int:
        _count("null.decrypt_into")
        src, out = memoryview(data).cast("B"), memoryview(buf).cast("B")
        out[:len(src) - TAG_BYTES] = src[:-TAG_BYTES]
        return len(src) - TAG_BYTES


def _null_id_hash(self: Any, item_id: str) -> bytes:
    _count("null.id_hash")
    return hashlib.blake2b(item_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def install_null(config: str) -> list[str]:
    """Swap AESGCM for NullAESGCM wherever a loaded module of ours holds it (a scan, so a new
    importer is not missed) and guard the real class in cryptography. Returns what was patched."""
    aead_module = importlib.import_module("cryptography.hazmat.primitives.ciphers.aead")
    for name in ("lsmvec", "lsmvec.disk.crypto", "lsmvec.disk.store", "lsmvec.compaction.sealed_file",
                 "lsmvec.compaction.segment", "lsmvec.compaction.scann_assets"):
        importlib.import_module(name)  # every importer loaded before the scan
    real = aead_module.AESGCM
    patched = []
    for name, module in list(sys.modules.items()):
        if module is not None and name.split(".")[0] in ("lsmvec", "wal", "lsmvec.compaction", "lsmvec.tools"):
            for attr, value in list(vars(module).items()):
                if value is real:
                    setattr(module, attr, NullAESGCM)
                    patched.append(f"{name}.{attr}")
    class GuardAESGCM:  # the real class, every construction and method use counted
        def __init__(self, key: Any) -> None:
            _count("real.init")
            self._real = real(key)

        def __getattr__(self, name: str) -> Callable[..., Any]:
            _count(f"real.{name}")
            return getattr(self._real, name)

    aead_module.AESGCM = GuardAESGCM
    if config == "null":
        sys.modules["lsmvec.disk.crypto"].IndexCipher.id_hash = _null_id_hash
        patched.append("lsmvec.disk.crypto.IndexCipher.id_hash")
    return sorted(patched)


def install_timers() -> list[str]:
    """sealed-timed: the real crypto, each call's thread CPU time summed into COUNTS["ns.*"].
    Aead.seal/open include the nonce and the copies; segment files count their AES-GCM calls
    and their HKDF (per file); SHA-256 of files is integrity, not encryption: not counted."""
    crypto = importlib.import_module("lsmvec.disk.crypto")
    sealed_file = importlib.import_module("lsmvec.compaction.sealed_file")

    overhead = [0]

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*a: Any) -> Any:
            t0 = time.thread_time_ns()
            try:
                return fn(*a)
            finally:
                spent = max(0, time.thread_time_ns() - t0 - overhead[0])
                with _COUNTS_LOCK:
                    COUNTS[f"n.{name}"] = COUNTS.get(f"n.{name}", 0) + 1
                    COUNTS[f"ns.{name}"] = COUNTS.get(f"ns.{name}", 0) + spent
        return call

    probe = timed("calibration", lambda: None)  # what the clock reads themselves add per call
    for _ in range(20_000):
        probe()
    overhead[0] = COUNTS.pop("ns.calibration") // COUNTS.pop("n.calibration")
    COUNTS["clock_overhead_ns"] = overhead[0]  # subtracted from every timed call
    real = sealed_file.AESGCM

    class TimedAESGCM:
        def __init__(self, key: Any) -> None:
            gcm = real(key)
            self.encrypt_into = timed("file encrypt_into", gcm.encrypt_into)
            self.decrypt_into = timed("file decrypt_into", gcm.decrypt_into)
            self.encrypt = timed("file encrypt", gcm.encrypt)
            self.decrypt = timed("file decrypt", gcm.decrypt)

    sealed_file._file_aead = timed("file HKDF + key setup", sealed_file._file_aead)
    sealed_file.AESGCM = TimedAESGCM
    crypto.Aead.seal = timed("Aead.seal (WAL, store)", crypto.Aead.seal)
    crypto.Aead.open = timed("Aead.open (WAL, store)", crypto.Aead.open)
    crypto.IndexCipher.id_hash = timed("id_hash (HMAC-SHA256)", crypto.IndexCipher.id_hash)
    return ["timers"]


# -- the children -------------------------------------------------------------------------------

def _batches(n: int, batch: int) -> list[tuple[int, int]]:
    return [(start, min(n, start + batch)) for start in range(0, n, batch)]


def run_ingest(args: argparse.Namespace, client: Any) -> dict[str, Any]:
    """Create the main index, upsert N x DIM in batches (one thread, fsync), close."""
    data = clustered(args.n, args.dim, seed=0)
    ids = np.arange(args.n, dtype=np.int64)
    index = client.create_index(INDEX_NAME, BENCH_KEY, dimension=args.dim, metric=args.metric)
    c0, t0 = time.process_time(), time.perf_counter()
    for start, stop in _batches(args.n, args.batch):
        index.upsert(ids=ids[start:stop], vectors=data[start:stop])
    out = {"ingest_s": time.perf_counter() - t0}
    t1 = time.perf_counter()
    index.close()
    out["close_s"] = time.perf_counter() - t1
    out["ingest_close_s"] = out["ingest_s"] + out["close_s"]
    out["ingest_close_cpu_s"] = time.process_time() - c0  # all threads; less hurt by other jobs
    return out


def run_build(args: argparse.Namespace, client: Any) -> dict[str, Any]:
    """run_ingest, then the metadata index (ingest + train + close), then train the main one."""
    stages = {"start": {"cpu_ns": time.process_time_ns()}}
    out: dict[str, Any] = {"build_" + k: v for k, v in run_ingest(args, client).items()}
    stages["ingest + close"] = {**counts(), "cpu_ns": time.process_time_ns()}
    vectors = clustered(args.meta_n, args.dim, seed=1)
    t0 = time.perf_counter()
    meta = client.create_index(META_INDEX_NAME, BENCH_KEY, dimension=args.dim, metric=args.metric)
    for start, stop in _batches(args.meta_n, args.batch):
        meta.upsert([{"id": f"m{i}", "vector": vectors[i], "metadata": {"n": i, "tag": f"t{i % 10}"}}
                     for i in range(start, stop)])
    meta.train()
    meta.close()
    out["meta_build_s"] = time.perf_counter() - t0
    stages["metadata index"] = {**counts(), "cpu_ns": time.process_time_ns()}
    t0 = time.perf_counter()
    index = client.load_index(INDEX_NAME, BENCH_KEY)
    index.train()
    if not index.is_trained():
        raise SystemExit("train() left the index untrained")
    index.close()
    out["train_s"] = time.perf_counter() - t0
    stages["reopen + train + close"] = {**counts(), "cpu_ns": time.process_time_ns()}
    out["stages"] = stages
    return out


def _qps(fn: Callable[[int], Any], count: int) -> float:
    t0 = time.perf_counter()
    for i in range(count):
        fn(i)
    return count / (time.perf_counter() - t0)


def run_load(args: argparse.Namespace, client: Any) -> dict[str, Any]:
    """Reopen both indexes in this fresh process and time the read paths."""
    queries = clustered_queries(max(args.queries, 1000), args.dim, seed=0)
    k, cpu0 = args.top_k, time.process_time()
    t0 = time.perf_counter()
    index = client.load_index(INDEX_NAME, BENCH_KEY)
    out: dict[str, Any] = {"reopen_s": time.perf_counter() - t0}
    if index.get_num_vectors() != args.n:
        raise SystemExit(f"reopened index holds {index.get_num_vectors()} vectors, expected {args.n}")
    for q in queries[:20]:  # warm-up: first-call costs (ScaNN, numpy) are not encryption
        index.query(q, top_k=k)
    out["query_qps"] = _qps(lambda i: index.query(queries[i], top_k=k, include=["distance"]), args.queries)
    t0 = time.perf_counter()
    found = []
    for start in range(0, 1000, 100):
        found += index.query(queries[start:start + 100], top_k=k, include=["distance"])
    out["batch_qps"] = 1000 / (time.perf_counter() - t0)
    truth = brute_force_topk(clustered(args.n, args.dim, seed=0), queries[:100], k, args.metric)
    out["recall"] = float(np.mean([len({int(h["id"]) for h in found[i]} & set(truth[i].tolist())) / k
                                   for i in range(100)]))
    get_ids = [str(i) for i in np.random.default_rng(7).choice(args.n, 1000, replace=False)]
    index.get(get_ids[:10])
    t0 = time.perf_counter()
    got = index.get(get_ids)
    out["get_1000_s"] = time.perf_counter() - t0
    if len(got) != 1000:
        raise SystemExit(f"get() returned {len(got)} of 1000 items")
    index.close()
    t0 = time.perf_counter()
    meta = client.load_index(META_INDEX_NAME, BENCH_KEY)
    out["meta_reopen_s"] = time.perf_counter() - t0
    for q in queries[:20]:
        meta.query(q, top_k=k, include=["metadata"])
    for field in ("distance", "metadata"):
        out[f"meta_query_{field}_qps"] = _qps(
            lambda i, fields=[field]: meta.query(queries[i], top_k=k, include=fields), args.queries)
    hit = meta.query(queries[0], top_k=1, include=["metadata"])[0]
    if set(hit["metadata"]) != {"n", "tag"}:
        raise SystemExit(f"metadata did not round-trip: {hit}")
    meta.close()
    out["load_cpu_s"] = time.process_time() - cpu0
    return out


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    patched = (install_timers() if args.child == TIMED else
               install_null(args.child) if args.child != "sealed" else [])
    from lsmvec import Client

    folder = Path(args.data)
    if args.phase != "load":
        shutil.rmtree(folder, ignore_errors=True)
    client = Client(folder)
    result = {"ingest": run_ingest, "build": run_build, "load": run_load}[args.phase](args, client)
    client.close()
    result.update(config=args.child, phase=args.phase, patched=patched, counts=counts(),
                  source=_source_digest())
    if args.child not in ("sealed", TIMED):
        done = counts()
        real_calls = {k: v for k, v in done.items() if k.startswith("real.")}
        null_calls = sum(v for k, v in done.items() if k.startswith("null.") and "crypt" in k)
        if real_calls or not null_calls:
            raise SystemExit(f"{args.child}: crypto not bypassed: real calls {real_calls}, "
                             f"stand-in calls {null_calls}")
    return result


# -- the profile --------------------------------------------------------------------------------

_PROFILE_ROWS = (  # label, regex on pstats' function label
    ("AESGCM.encrypt", r"method 'encrypt' of"),
    ("AESGCM.encrypt_into", r"method 'encrypt_into' of"),
    ("IndexCipher.id_hash (HMAC)", r"crypto\.py:\d+\(id_hash\)"),
    ("  of which hmac.py new/copy/update/digest", r"hmac\.py:\d+\((new|copy|update|digest)\)"),
    ("Aead.seal (urandom + encrypt + concat)", r"crypto\.py:\d+\(seal\)"),
    ("os.urandom", r"built-in method posix\.urandom"),
    ("sealed_file.write_sealed (incl. fsync)", r"sealed_file\.py:\d+\(write_sealed\)"),
    ("Store._seal_item (msgpack + seal)", r"store\.py:\d+\(_seal_item\)"),
    ("hashlib update (HMAC inside + file SHA-256)", r"method 'update' of '_hashlib"),
)


def run_profile(args: argparse.Namespace) -> None:
    """Sealed ingest + close under cProfile, every thread (flush and merge run in background)."""
    base = Path(tempfile.mkdtemp(prefix="lsmvec-crypto-prof-", dir=args.dir))
    profilers: list[cProfile.Profile] = []

    def start_thread_profiler(*_: Any) -> None:
        profiler = cProfile.Profile()
        profilers.append(profiler)
        profiler.enable()  # replaces this hook for the thread

    from lsmvec import Client
    main = cProfile.Profile()
    threading.setprofile(start_thread_profiler)
    try:
        client = Client(base)
        main.enable()
        wall = run_ingest(args, client)["ingest_close_s"]
        main.disable()
        client.close()
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
        shutil.rmtree(base, ignore_errors=True)
    stats = pstats.Stats(main)
    for profiler in profilers:
        profiler.create_stats()
        stats.add(profiler)
    buf = io.StringIO()
    stats.stream = buf  # type: ignore[attr-defined]
    rows = []
    for label, pattern in _PROFILE_ROWS:
        hits = [(nc, ct) for func, (_cc, nc, _tt, ct, _callers) in stats.stats.items()  # type: ignore[attr-defined]
                if re.search(pattern, pstats.func_std_string(func))]
        calls, cum = sum(h[0] for h in hits), sum(h[1] for h in hits)
        rows.append([label, f"{calls:,}", seconds(cum) if calls else "-", f"{cum / wall:.1%}"])
    print(f"sealed ingest {args.n:,} x {args.dim} + close under cProfile ({len(profilers)} extra threads "
          f"profiled): {wall:.2f} s wall (profiling inflates per-call Python costs)")
    print(table(["function (all threads)", "calls", "cumulative", "of wall"], rows))
    stats.sort_stats("cumulative").print_stats(r"crypto|sealed_file|hmac|store\.py", 12)
    print(buf.getvalue())


# -- the parent ---------------------------------------------------------------------------------

_METRICS = (  # key, label, kind: "time" (lower is better), "rate" (higher is better), "info"
    ("ingest_s", "ingest (upserts only)", "time"),
    ("close_s", "close (final flush)", "time"),
    ("ingest_close_s", "ingest + close", "time"),
    ("ingest_close_cpu_s", "ingest + close, CPU time", "time"),
    ("meta_build_s", "metadata index build (1 run)", "time"),
    ("train_s", "reopen+train()+close (1 run)", "time"),
    ("reopen_s", "reopen, trained main index", "time"),
    ("meta_reopen_s", "reopen, metadata index", "time"),
    ("query_qps", "query 1 at a time, distance", "rate"),
    ("batch_qps", "query batches of 100, distance", "rate"),
    ("meta_query_distance_qps", "metadata index query, distance", "rate"),
    ("meta_query_metadata_qps", "metadata index query, metadata", "rate"),
    ("get_1000_s", "get() 1000 ids", "time"),
    ("recall", "recall@k (100 queries)", "info"),
)


def _source_digest() -> str:
    """SHA-256 of the engine's sources: a change mid-run (others commit) would void the A/B."""
    digest = hashlib.sha256()
    for path in sorted(p for pkg in ("lsmvec", "wal", "lsmvec.compaction")
                       for p in (Path(__file__).parent.parent / pkg).glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def _spawn(args: argparse.Namespace, config: str, phase: str, folder: Path) -> dict[str, Any]:
    print(f"  {phase} {config}", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "lsmvec.tools.bench_crypto", "--child", config, "--phase", phase,
           "--data", str(folder), "--n", str(args.n), "--dim", str(args.dim), "--batch", str(args.batch),
           "--meta-n", str(args.meta_n), "--queries", str(args.queries), "--top-k", str(args.top_k),
           "--metric", args.metric]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{config}/{phase}: child exited with status {proc.returncode}")
    return json.loads(lines[-1])


def _fmt(kind: str, value: float) -> str:
    return seconds(value) if kind == "time" else f"{value:,.0f}/s" if kind == "rate" else f"{value:.3f}"


def _paired(children: list[dict[str, Any]], key: str, other: str, kind: str) -> float | None:
    """Median over rounds of (sealed / other) time per operation within the same round: runs
    close in time share the machine's load, so this is steadier than a ratio of medians."""
    rounds: dict[Any, dict[str, float]] = {}
    for child in children:
        if key in child and "round" in child:
            rounds.setdefault((child["phase"], child["round"]), {})[child["config"]] = child[key]
    ratios = [r["sealed"] / r[other] if kind == "time" else r[other] / r["sealed"]
              for r in rounds.values() if "sealed" in r and other in r]
    return statistics.median(ratios) if ratios else None


def summary(samples: dict[str, dict[str, list[float]]], children: list[dict[str, Any]]) -> str:
    """Median (min..max) per configuration; cost = sealed time per operation / other's - 1, as a
    ratio of the medians and as the median of per-round ratios."""
    configs = [c for c in CONFIGS if c in samples]
    header = ["metric", *(f"{c} median (min..max)" for c in configs),
              *(f"sealed vs {c} (paired)" for c in configs if c != "sealed")]
    rows = []
    for key, label, kind in _METRICS:
        values = {c: samples[c].get(key, []) for c in configs}
        if not all(values.values()):
            continue
        med = {c: statistics.median(v) for c, v in values.items()}
        row = [f"{label} [{min(len(v) for v in values.values())}]"]
        row += [f"{_fmt(kind, med[c])} ({_fmt(kind, min(values[c]))}..{_fmt(kind, max(values[c]))})"
                for c in configs]
        for c in configs[1:] if configs[0] == "sealed" else []:
            ratio = med["sealed"] / med[c] if kind == "time" else med[c] / med["sealed"]
            paired = _paired(children, key, c, kind)
            row.append("" if kind == "info" else f"{ratio - 1:+.1%} ({paired - 1:+.1%})" if paired
                       else f"{ratio - 1:+.1%}")
        rows.append(row)
    return (table(header, rows) + "\n[n] = samples per configuration; +x% = the sealed engine takes "
            "x% more time per operation than the other configuration (ratio of medians, and in "
            "parentheses the median of the ratios within each round)")


def _stage_deltas(build: dict[str, Any], load: dict[str, Any]) -> dict[str, dict[str, int]]:
    """COUNTS (and "cpu_ns") spent in each stage of a build child, and in a load child."""
    out, before = {}, build["stages"]["start"]
    for stage, snap in list(build["stages"].items())[1:]:
        out[stage] = {k: v - before.get(k, 0) for k, v in snap.items() if v - before.get(k, 0)}
        before = snap
    out["load child"] = {**load["counts"], "cpu_ns": int(load["load_cpu_s"] * 1e9)}
    return out


def _counts_report(config: str, build: dict[str, Any], load: dict[str, Any]) -> str:
    lines = [f"{config}: patched {', '.join(build['patched'])}"]
    for stage, delta in _stage_deltas(build, load).items():
        lines.append(f"  {stage}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(delta.items()) if k != "cpu_ns"))
    real = sum(v for c in (build, load) for k, v in c["counts"].items() if k.startswith("real."))
    lines.append(f"  calls that reached the real AESGCM: {real}")
    return "\n".join(lines)


def _account_report(ingests: list[dict[str, Any]], build: dict[str, Any], load: dict[str, Any]) -> str:
    """Thread CPU time inside the crypto calls per stage, and its share of the stage's CPU time."""
    stages = _stage_deltas(build, load)
    stages["ingest + close"] = {k: int(statistics.median(i["counts"].get(k, 0) for i in ingests))
                                for k in ingests[0]["counts"]}
    stages["ingest + close"]["cpu_ns"] = int(statistics.median(i["ingest_close_cpu_s"] for i in ingests) * 1e9)
    names = sorted({k[3:] for d in stages.values() for k in d if k.startswith("ns.")})
    rows = []
    for name in [*names, None]:
        row = [name or "all crypto (thread CPU)"]
        for d in stages.values():
            which = [name] if name else names
            ns = sum(d.get(f"ns.{w}", 0) for w in which)
            calls = f"{d.get(f'n.{name}', 0):,} calls, " if name else ""
            row.append(f"{calls}{seconds(ns / 1e9) if ns else '0'} ({ns / d['cpu_ns']:.1%})")
        rows.append(row)
    rows.append(["stage CPU time (all threads)", *(seconds(d["cpu_ns"] / 1e9) for d in stages.values())])
    return (table(["sealed-timed: inside crypto calls", *stages], rows)
            + f"\n(per-call clock overhead measured in each child and subtracted: "
            f"{build['counts']['clock_overhead_ns']} ns in the build child)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsmvec.tools.bench_crypto", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, default, text in (("--n", 100_000, "vectors in the main index"), ("--dim", 384, "dimension"),
                                ("--batch", 1000, "rows per upsert call"),
                                ("--meta-n", 20_000, "items of the metadata index"),
                                ("--queries", 2000, "single queries timed per measurement"),
                                ("--top-k", 10, "top_k of every query"),
                                ("--ingest-rounds", 7, "ingest children per configuration"),
                                ("--load-rounds", 7, "load children per configuration"),
                                ("--account-rounds", 3, "sealed-timed ingest children (0: none)")):
        parser.add_argument(flag, type=int, default=default, help=f"{text} (default {default})")
    parser.add_argument("--metric", default="cosine", choices=("cosine", "euclidean", "squared_euclidean"))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--dir", default=None, help="where to put the data (default: the temp dir)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write every sample to PATH")
    parser.add_argument("--profile", action="store_true", help="cProfile the sealed ingest instead")
    parser.add_argument("--child", default=None, choices=(*CONFIGS, TIMED), help=argparse.SUPPRESS)
    parser.add_argument("--phase", default="ingest", choices=("ingest", "build", "load"), help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    if not configs or any(c not in CONFIGS for c in configs):
        parser.error(f"--configs takes a comma-separated subset of {CONFIGS}")
    if min(args.dim, args.batch, args.meta_n, args.queries, args.top_k) < 1 or args.n < 1000 \
            or min(args.ingest_rounds, args.load_rounds, args.account_rounds) < 0:
        parser.error("sizes must be positive, --n >= 1000 (get() of 1000 ids)")
    if args.child:
        with NativeLogFilter():
            result = run_child(args)
        print(json.dumps(result), flush=True)
        return 0
    if args.profile:
        with NativeLogFilter():
            run_profile(args)
        return 0

    env = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
           "load_average": os.getloadavg(), "source": _source_digest()}
    print(f"lsmvec crypto bench: {args.n:,} x {args.dim} ({args.metric}), batches of {args.batch:,}, "
          f"metadata index {args.meta_n:,}, top_k={args.top_k}; configurations {configs}; "
          f"{env['cpus']} CPUs, Python {env['python']}, load average {env['load_average'][0]:.1f}; "
          f"every phase in a fresh process, configurations alternating")
    samples: dict[str, dict[str, list[float]]] = {c: {} for c in configs}
    children: list[dict[str, Any]] = []

    def record(result: dict[str, Any], rnd: int | None = None) -> None:
        if rnd is not None:
            result["round"] = rnd
        children.append(result)
        for key, value in result.items():
            if isinstance(value, (int, float)) and not key.startswith("build_"):
                samples[result["config"]].setdefault(key, []).append(value)

    base = Path(tempfile.mkdtemp(prefix="lsmvec-crypto-", dir=args.dir))
    built = {c: base / f"built-{c}" for c in (*configs, TIMED)}
    loads: dict[str, dict[str, Any]] = {}
    try:
        for rnd in range(args.ingest_rounds):
            for config in configs if rnd % 2 == 0 else configs[::-1]:
                record(_spawn(args, config, "ingest", base / "ingest"), rnd)
                shutil.rmtree(base / "ingest", ignore_errors=True)
        builds = {c: _spawn(args, c, "build", built[c]) for c in configs}
        for result in builds.values():
            record(result)
        for rnd in range(args.load_rounds):
            for config in configs if rnd % 2 == 0 else configs[::-1]:
                loads[config] = _spawn(args, config, "load", built[config])
                record(loads[config], rnd)
        timed = [_spawn(args, TIMED, "ingest", base / "ingest") for _ in range(args.account_rounds)]
        if timed:
            timed_build = _spawn(args, TIMED, "build", built[TIMED])
            timed_load = _spawn(args, TIMED, "load", built[TIMED])
            children.extend([*timed, timed_build, timed_load])
    finally:
        shutil.rmtree(base, ignore_errors=True)
        env["load_average_end"], env["source_end"] = os.getloadavg(), _source_digest()
    print(summary(samples, children))
    versions = sorted({c["source"] for c in children})
    if len(versions) > 1:
        print(f"engine sources differed between children ({', '.join(versions)}): others committed "
              "mid-run; every child's `source` is in the JSON")
    print(f"load average at the end: {env['load_average_end'][0]:.1f}; engine sources {env['source']}"
          + (" unchanged" if env["source"] == env["source_end"] else f", now {env['source_end']}"))
    for config in configs:
        if config != "sealed" and config in loads:
            print(_counts_report(config, builds[config], loads[config]))
    if timed:
        print(_account_report(timed, timed_build, timed_load))
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "args": vars(args), "samples": samples,
                                               "children": children}, indent=1) + "\n")
        print(f"every sample written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
