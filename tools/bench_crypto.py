"""`python -m tools.bench_crypto`: what encryption costs lsmvec (ingest, close, reopen, query, get).

lsmvec has no switch to turn encryption off, so the comparison is built here. Every run is a
fresh subprocess (`python -m tools.bench_crypto --child CONFIG --phase ingest|load --json`):
  sealed     the engine as shipped (AES-256-GCM everywhere, HMAC-SHA256 id hashes)
  null-aead  AESGCM replaced, in every module of ours that imported it, by a stand-in that keeps
             formats and sizes (ciphertext = plaintext + 16 zero bytes, *_into variants too) and
             does no cryptography; ids still hashed with HMAC-SHA256
  null       null-aead plus IndexCipher.id_hash replaced by unkeyed blake2b(digest_size=16)
Integrity that is not encryption stays in every configuration: WAL CRCs, the SHA-256 of every
sealed file, HKDF per file, os.urandom nonces. A null child proves the bypass: the real AESGCM
class is swapped in cryptography's own module for a counting guard, and the report says how
many encrypt/decrypt calls the stand-in served and how many the real class served (must be 0).

Per repetition and configuration (configurations alternate, order reversed every other round):
  ingest child  create; N x DIM (datasets.clustered, seed 0) upserted in batches, one thread,
                durability="fsync"; then close (flushes the rest); then a second index of
                META_N items with small metadata dicts (ingest + close); then reopen + train()
                of the first index (merges everything into one trained segment, re-sealing
                every store value) + close
  load child    a new process opens both: reopen time (segment files are decrypted at load);
                single-query and batched QPS with include=["distance"] (no decryption on that
                path); single-query QPS with include=["metadata"] on the metadata index (one
                store value decrypted per hit); get() of 1000 ids (vector, contents, metadata)
`--profile` runs the sealed ingest + close in this process under cProfile (background flush and
merge threads included) and prints the cumulative time spent in AES-GCM, HMAC and sealing.
"""
from __future__ import annotations

import argparse
import cProfile
import hashlib
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
# A fixed key: the load child opens what the ingest child wrote; the data is synthetic.
BENCH_KEY = hashlib.sha256(b"lsmvec crypto benchmark key").digest()
CONFIGS = ("sealed", "null-aead", "null")
TAG_BYTES = 16
_ZERO_TAG = bytes(TAG_BYTES)


# -- the stand-ins ------------------------------------------------------------------------------

class CryptoCounts:
    """Calls and bytes the stand-ins served, and calls that reached the real AESGCM."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.nbytes: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, what: str, nbytes: int) -> None:
        with self._lock:
            self.calls[what] = self.calls.get(what, 0) + 1
            self.nbytes[what] = self.nbytes.get(what, 0) + nbytes

    def as_dict(self) -> dict[str, Any]:
        return {"calls": dict(self.calls), "bytes": dict(self.nbytes)}


COUNTS = CryptoCounts()


class NullAESGCM:
    """AESGCM's interface and sizes without the cryptography: the tag is 16 zero bytes and is
    not checked. The copies a real call makes (into a new bytes, or into `buf`) are kept."""

    def __init__(self, key: bytes | bytearray | memoryview) -> None:
        if len(memoryview(key).cast("B")) not in (16, 24, 32):
            raise ValueError("AESGCM key must be 128, 192, or 256 bits.")
        COUNTS.add("null.init", 0)

    @staticmethod
    def generate_key(bit_length: int) -> bytes:
        return os.urandom(bit_length // 8)

    def encrypt(self, nonce: Any, data: Any, associated_data: Any) -> bytes:
        out = bytes(data) + _ZERO_TAG
        COUNTS.add("null.encrypt", len(out))
        return out

    def decrypt(self, nonce: Any, data: Any, associated_data: Any) -> bytes:
        view = memoryview(data).cast("B")
        if len(view) < TAG_BYTES:
            from cryptography.exceptions import InvalidTag
            raise InvalidTag()
        COUNTS.add("null.decrypt", len(view))
        return bytes(view[:-TAG_BYTES])

    def encrypt_into(self, nonce: Any, data: Any, associated_data: Any, buf: Any) -> int:
        src, out = memoryview(data).cast("B"), memoryview(buf).cast("B")
        size = len(src)
        if len(out) < size + TAG_BYTES:
            raise ValueError("buffer must be at least data length + 16 bytes")
        out[:size] = src
        out[size:size + TAG_BYTES] = _ZERO_TAG
        COUNTS.add("null.encrypt_into", size + TAG_BYTES)
        return size + TAG_BYTES

    def decrypt_into(self, nonce: Any, data: Any, associated_data: Any, buf: Any) -> int:
        src, out = memoryview(data).cast("B"), memoryview(buf).cast("B")
        size = len(src) - TAG_BYTES
        if size < 0 or len(out) < size:
            raise ValueError("buffer must be at least data length - 16 bytes")
        out[:size] = src[:size]
        COUNTS.add("null.decrypt_into", len(src))
        return size


def _counting_guard(real: type) -> type:
    """A subclass-free wrapper of the real AESGCM that counts every call reaching it."""

    class GuardAESGCM:
        def __init__(self, key: Any) -> None:
            COUNTS.add("real.init", 0)
            self._real = real(key)

        def __getattr__(self, name: str) -> Callable[..., Any]:
            method = getattr(self._real, name)

            def counted(*args: Any) -> Any:
                COUNTS.add(f"real.{name}", 0)
                return method(*args)
            return counted

    GuardAESGCM.generate_key = staticmethod(real.generate_key)  # type: ignore[attr-defined]
    return GuardAESGCM


def _null_id_hash(self: Any, item_id: str) -> bytes:
    COUNTS.add("null.id_hash", 0)
    return hashlib.blake2b(item_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def install_null(config: str) -> list[str]:
    """Swap AESGCM for NullAESGCM wherever our modules imported it (found by scanning loaded
    modules: nothing is missed by a stale list); guard the real class in cryptography's module
    so a later import is counted. Returns the patched names."""
    import cryptography.hazmat.primitives.ciphers.aead as aead_module

    import compaction.sealed_file  # noqa: F401  (every importer must be loaded before the scan)
    import compaction.segment  # noqa: F401
    import engine
    import engine.crypto
    import engine.store  # noqa: F401
    real = aead_module.AESGCM
    patched = []
    for name, module in list(sys.modules.items()):
        if module is None or name.split(".")[0] not in ("engine", "wal", "compaction", "tools"):
            continue
        for attr, value in list(vars(module).items()):
            if value is real:
                setattr(module, attr, NullAESGCM)
                patched.append(f"{name}.{attr}")
    aead_module.AESGCM = _counting_guard(real)
    if config == "null":
        engine.crypto.IndexCipher.id_hash = _null_id_hash
        patched.append("engine.crypto.IndexCipher.id_hash")
    del engine
    return sorted(patched)


# -- the children -------------------------------------------------------------------------------

def _batches(n: int, batch: int) -> list[tuple[int, int]]:
    return [(start, min(n, start + batch)) for start in range(0, n, batch)]


def _meta_items(start: int, stop: int, vectors: np.ndarray) -> list[dict[str, Any]]:
    return [{"id": f"m{i}", "vector": vectors[i],
             "metadata": {"n": i, "tag": f"t{i % 10}", "even": i % 2 == 0}} for i in range(start, stop)]


def run_ingest(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Ingest + close of the main index, the metadata index, then train the main index."""
    from engine import Client

    data = clustered(args.n, args.dim, seed=0)
    ids = np.arange(args.n, dtype=np.int64)
    out: dict[str, Any] = {}
    client = Client(folder)
    index = client.create_index(INDEX_NAME, BENCH_KEY, dimension=args.dim, metric=args.metric)
    c0, t0 = time.process_time(), time.perf_counter()
    for start, stop in _batches(args.n, args.batch):
        index.upsert(ids=ids[start:stop], vectors=data[start:stop])
    out["ingest_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    index.close()
    out["close_s"] = time.perf_counter() - t1
    out["ingest_close_s"] = out["ingest_s"] + out["close_s"]
    out["ingest_close_cpu_s"] = time.process_time() - c0  # every thread: less sensitive to other jobs

    meta_vectors = clustered(args.meta_n, args.dim, seed=1)
    t0 = time.perf_counter()
    meta = client.create_index(META_INDEX_NAME, BENCH_KEY, dimension=args.dim, metric=args.metric)
    for start, stop in _batches(args.meta_n, args.batch):
        meta.upsert(_meta_items(start, stop, meta_vectors))
    meta.train()
    meta.close()
    out["meta_ingest_train_close_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    index = client.load_index(INDEX_NAME, BENCH_KEY)
    index.train()
    out["trained"] = index.is_trained()
    index.close()
    out["train_s"] = time.perf_counter() - t0
    client.close()
    return out


def _qps(fn: Callable[[int], Any], count: int) -> float:
    t0 = time.perf_counter()
    for i in range(count):
        fn(i)
    return count / (time.perf_counter() - t0)


def run_load(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Reopen both indexes in this fresh process and time the read paths."""
    from engine import Client

    out: dict[str, Any] = {}
    queries = clustered_queries(max(args.queries, 1000), args.dim, seed=0)
    client = Client(folder)
    t0 = time.perf_counter()
    index = client.load_index(INDEX_NAME, BENCH_KEY)
    out["reopen_s"] = time.perf_counter() - t0
    if index.get_num_vectors() != args.n:
        raise SystemExit(f"reopened index holds {index.get_num_vectors()} vectors, expected {args.n}")
    k = args.top_k
    for q in queries[:20]:  # warm-up: first-call costs (ScaNN, numpy) are not encryption
        index.query(q, top_k=k)
    out["query_qps"] = _qps(lambda i: index.query(queries[i], top_k=k, include=["distance"]), args.queries)
    batch = 100
    t0 = time.perf_counter()
    found = []
    for start in range(0, 1000, batch):
        found += index.query(queries[start:start + batch], top_k=k, include=["distance"])
    out["batch_qps"] = 1000 / (time.perf_counter() - t0)
    truth = brute_force_topk(clustered(args.n, args.dim, seed=0), queries[:100], k, args.metric)
    out["recall"] = float(np.mean([len({int(h["id"]) for h in found[i]} & set(truth[i].tolist())) / k
                                   for i in range(100)]))
    rng = np.random.default_rng(7)
    get_ids = [str(i) for i in rng.choice(args.n, 1000, replace=False)]
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
    out["meta_query_dist_qps"] = _qps(lambda i: meta.query(queries[i], top_k=k, include=["distance"]),
                                      args.queries)
    out["meta_query_meta_qps"] = _qps(lambda i: meta.query(queries[i], top_k=k, include=["metadata"]),
                                      args.queries)
    hit = meta.query(queries[0], top_k=1, include=["metadata"])[0]
    if set(hit["metadata"]) != {"n", "tag", "even"}:
        raise SystemExit(f"metadata did not round-trip: {hit}")
    meta.close()
    client.close()
    return out


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    patched = install_null(args.child) if args.child != "sealed" else []
    folder = Path(args.data)
    if args.phase == "ingest":
        shutil.rmtree(folder, ignore_errors=True)
        result = run_ingest(args, folder)
    else:
        result = run_load(args, folder)
    result.update(config=args.child, phase=args.phase, patched=patched, counts=COUNTS.as_dict())
    if args.child != "sealed":
        real_calls = {k: v for k, v in COUNTS.calls.items() if k.startswith("real.")}
        null_calls = sum(v for k, v in COUNTS.calls.items() if k.startswith("null.") and "crypt" in k)
        if real_calls or not null_calls:
            raise SystemExit(f"{args.child}: crypto not bypassed: real calls {real_calls}, "
                             f"stand-in calls {null_calls}")
    return result


# -- the profile --------------------------------------------------------------------------------

_PROFILE_ROWS = (  # label, regex on pstats' function label
    ("AESGCM.encrypt", r"method 'encrypt' of"),
    ("AESGCM.decrypt", r"method 'decrypt' of"),
    ("AESGCM.encrypt_into", r"method 'encrypt_into' of"),
    ("AESGCM.decrypt_into", r"method 'decrypt_into' of"),
    ("IndexCipher.id_hash (HMAC)", r"crypto\.py:\d+\(id_hash\)"),
    ("hmac.new + HMAC.digest", r"hmac\.py:\d+\((new|digest)\)"),
    ("Aead.seal (urandom + encrypt + concat)", r"crypto\.py:\d+\(seal\)"),
    ("Aead.open", r"crypto\.py:\d+\(open\)"),
    ("os.urandom", r"built-in method posix\.urandom"),
    ("sealed_file.write_sealed (incl. fsync)", r"sealed_file\.py:\d+\(write_sealed\)"),
    ("Store._seal_item (msgpack + seal)", r"store\.py:\d+\(_seal_item\)"),
    ("sha256 update (integrity, not crypto)", r"method 'update' of '_hashlib"),
)


def run_profile(args: argparse.Namespace) -> None:
    """Sealed ingest + close under cProfile, every thread (flush and merge run in background)."""
    base = Path(tempfile.mkdtemp(prefix="lsmvec-crypto-prof-", dir=args.dir))
    profilers: list[cProfile.Profile] = []

    def start_thread_profiler(*_: Any) -> None:
        profiler = cProfile.Profile()
        profilers.append(profiler)
        profiler.enable()  # replaces this hook for the thread

    from engine import Client
    data = clustered(args.n, args.dim, seed=0)
    ids = np.arange(args.n, dtype=np.int64)
    main = cProfile.Profile()
    threading.setprofile(start_thread_profiler)
    try:
        client = Client(base)
        index = client.create_index(INDEX_NAME, BENCH_KEY, dimension=args.dim, metric=args.metric)
        t0 = time.perf_counter()
        main.enable()
        for start, stop in _batches(args.n, args.batch):
            index.upsert(ids=ids[start:stop], vectors=data[start:stop])
        index.close()
        main.disable()
        wall = time.perf_counter() - t0
        client.close()
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
        shutil.rmtree(base, ignore_errors=True)
    stats = pstats.Stats(main)
    for profiler in profilers:
        profiler.create_stats()
        if profiler.stats:  # type: ignore[attr-defined]
            stats.add(profiler)
    buf = io.StringIO()
    stats.stream = buf  # type: ignore[attr-defined]
    rows = []
    for label, pattern in _PROFILE_ROWS:
        regex = re.compile(pattern)
        calls, cum = 0, 0.0
        for func, (_cc, nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            if regex.search(pstats.func_std_string(func)):
                calls += nc
                cum += ct
        rows.append([label, f"{calls:,}", seconds(cum) if calls else "-", f"{cum / wall:.1%}"])
    print(f"sealed ingest {args.n:,} x {args.dim} + close under cProfile ({len(profilers)} extra threads "
          f"profiled): {wall:.2f} s wall (profiling inflates per-call Python costs)")
    print(table(["function (all threads)", "calls", "cumulative", "of wall"], rows))
    stats.sort_stats("cumulative").print_stats(r"crypto|sealed_file|hmac|store\.py", 12)
    print(buf.getvalue())


# -- the parent ---------------------------------------------------------------------------------

_METRICS = (  # key, label, kind: "time" (lower is better) or "rate" (higher is better)
    ("ingest_s", "ingest (upserts only)", "time"),
    ("close_s", "close (final flush)", "time"),
    ("ingest_close_s", "ingest + close", "time"),
    ("ingest_close_cpu_s", "ingest + close, CPU time (all threads)", "time"),
    ("meta_ingest_train_close_s", "metadata index: ingest+train+close", "time"),
    ("train_s", "reopen + train() + close", "time"),
    ("reopen_s", "reopen (trained segment)", "time"),
    ("meta_reopen_s", "reopen metadata index", "time"),
    ("query_qps", "query, 1 at a time (distance)", "rate"),
    ("batch_qps", "query, batches of 100 (distance)", "rate"),
    ("meta_query_dist_qps", "metadata index query (distance)", "rate"),
    ("meta_query_meta_qps", "metadata index query (metadata)", "rate"),
    ("get_1000_s", "get() 1000 ids", "time"),
    ("recall", "recall@k (100 queries)", "info"),
)


def _spawn(args: argparse.Namespace, config: str, phase: str, folder: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tools.bench_crypto", "--child", config, "--phase", phase, "--json",
           "--data", str(folder), "--n", str(args.n), "--dim", str(args.dim), "--batch", str(args.batch),
           "--meta-n", str(args.meta_n), "--queries", str(args.queries), "--top-k", str(args.top_k),
           "--metric", args.metric]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{config}/{phase}: child exited with status {proc.returncode}")
    return json.loads(lines[-1])


def _fmt(kind: str, value: float) -> str:
    if kind == "time":
        return seconds(value)
    if kind == "rate":
        return f"{value:,.0f}/s"
    return f"{value:.3f}"


def summary(runs: dict[str, list[dict[str, Any]]]) -> str:
    """Median and min..max per configuration; the cost of encryption as sealed time / null time - 1."""
    configs = [c for c in CONFIGS if runs.get(c)]
    header = ["metric", *(f"{c} median (min..max)" for c in configs)]
    header += [f"sealed vs {c}" for c in configs if c != "sealed"]
    rows = []
    for key, label, kind in _METRICS:
        values = {c: [r[key] for r in runs[c] if key in r] for c in configs}
        if not all(values.values()):
            continue
        med = {c: statistics.median(v) for c, v in values.items()}
        row = [label] + [f"{_fmt(kind, med[c])} ({_fmt(kind, min(values[c]))}..{_fmt(kind, max(values[c]))})"
                         for c in configs]
        for c in configs:
            if c == "sealed":
                continue
            if kind == "info" or "sealed" not in med:
                row.append("")
            else:
                ratio = med["sealed"] / med[c] if kind == "time" else med[c] / med["sealed"]
                row.append(f"{ratio - 1:+.1%}")
        rows.append(row)
    return table(header, rows) + "\n(+x% = the sealed engine takes x% more time per operation)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_crypto", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="vectors in the main index (100000)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch", type=int, default=1000, help="rows per upsert call (1000)")
    parser.add_argument("--meta-n", type=int, default=20_000, help="items of the metadata index (20000)")
    parser.add_argument("--queries", type=int, default=500, help="single queries timed per measurement")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--metric", default="cosine", choices=("cosine", "euclidean", "squared_euclidean"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--dir", default=None, help="where to put the data (default: the temp dir)")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                        help="write all runs as JSON to PATH (bare --json: stdout)")
    parser.add_argument("--profile", action="store_true", help="cProfile the sealed ingest instead")
    parser.add_argument("--child", default=None, choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--phase", default="ingest", choices=("ingest", "load"), help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    if not configs or any(c not in CONFIGS for c in configs):
        parser.error(f"--configs takes a comma-separated subset of {CONFIGS}")
    if min(args.n, args.dim, args.batch, args.meta_n, args.queries, args.top_k, args.repeats) < 1 \
            or args.n < 1000:
        parser.error("sizes must be positive (and --n >= 1000 for get() of 1000 ids)")

    if args.child:
        with NativeLogFilter():
            result = run_child(args)
        print(json.dumps(result), flush=True)
        return 0
    if args.profile:
        with NativeLogFilter():
            run_profile(args)
        return 0

    env = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    print(f"lsmvec crypto bench: {args.n:,} x {args.dim} ({args.metric}), batches of {args.batch:,}, "
          f"metadata index {args.meta_n:,}, top_k={args.top_k}; {args.repeats} rounds of {configs}; "
          f"{env['cpus']} CPUs, Python {env['python']}; each phase in a fresh process")
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    checks: dict[str, Any] = {}
    base = Path(tempfile.mkdtemp(prefix="lsmvec-crypto-", dir=args.dir))
    try:
        for rnd in range(args.repeats):
            for config in (configs if rnd % 2 == 0 else configs[::-1]):
                folder = base / f"{config}-{rnd}"
                print(f"[round {rnd + 1}/{args.repeats}] {config}", file=sys.stderr, flush=True)
                ingest = _spawn(args, config, "ingest", folder)
                load = _spawn(args, config, "load", folder)
                shutil.rmtree(folder, ignore_errors=True)
                runs[config].append({**{k: v for k, v in ingest.items() if isinstance(v, (int, float))},
                                     **{k: v for k, v in load.items() if isinstance(v, (int, float))}})
                checks.setdefault(config, {"patched": ingest["patched"], "ingest_counts": ingest["counts"],
                                           "load_counts": load["counts"]})
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(summary(runs))
    for config, check in checks.items():
        if config != "sealed":
            print(f"\n{config}: patched {', '.join(check['patched'])}")
            for phase in ("ingest", "load"):
                counts = check[f"{phase}_counts"]
                real = sum(v for k, v in counts["calls"].items() if k.startswith("real."))
                print(f"  {phase} child: real AESGCM calls {real}; stand-in: " + ", ".join(
                    f"{k} {v:,}" + (f" ({counts['bytes'][k] / 1e6:,.0f} MB)" if counts["bytes"].get(k) else "")
                    for k, v in sorted(counts["calls"].items())))
    if args.json:
        payload = json.dumps({"env": env, "args": vars(args), "runs": runs, "checks": checks}, indent=1)
        if args.json == "-":
            print(payload)
        else:
            Path(args.json).write_text(payload + "\n")
            print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
