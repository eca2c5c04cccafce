"""`lsmvec bench-ingest --vs-reference`: durable ingest of lsmvec against the reference product
(cyborgdb-core, from the `bench-peers` extra) and against the disk's ceiling, interleaved in ONE
process, so that the ratios hold on a machine whose load changes (2 shared cores here: absolute
figures swing 2x from one minute to the next, ratios of neighbouring passes far less).

Each of --rounds rounds gives every store a fresh index (or file) and the same rows, --batch
per call, from one thread. The order runs through every permutation of the stores, round after
round (a rotation of one cyclic order put lsmvec right after the ceiling's 150 MB burst in every
round but the first: 86-112k rows/s there, against 152k after the reference), and after each
pass, untimed, its folder is removed and os.sync() writes back what it left dirty, so no pass
meets another's writeback. Each store runs one untimed pass first (warm-up). A pass is timed from its first call to the return of its last:
  lsmvec     the NumPy overload `index.upsert(ids_list, vectors)` (str ids, a float32 slice),
             default settings: durability="fsync" (one fdatasync per call, counted), background
             flushes into segments as they come. Its close (which flushes) runs after the pass,
             untimed, so it cannot slow the next store's pass
  reference  cyborgdb-core's `upsert(ids_list, vectors, index_key=...)` on its disk storage
             (it fdatasyncs every upsert); left out, with a note, when not installed
  ceiling    what any store that keeps the rows sealed and durable per call must at least do:
             normalise the batch (cosine: one NumPy pass), seal it once with AES-256-GCM,
             append it to one file and fdatasync -- no ids, no framing, no checksum, nothing
             kept in memory
Reported per round and as medians: vectors/s of each, and the median of the per-round ratios
lsmvec/reference and lsmvec/ceiling.
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .bench_ingest import BENCH_KEY, INDEX_NAME, SyncCounter
from .datasets import clustered

Upsert = Callable[[list[str], np.ndarray], None]


def _timed(upsert: Upsert, ids: list[str], data: np.ndarray, batch: int) -> float:
    t0 = time.perf_counter()
    for start in range(0, len(ids), batch):
        upsert(ids[start:start + batch], data[start:start + batch])
    return time.perf_counter() - t0


def lsmvec_pass(args: argparse.Namespace, folder: Path, ids: list[str], data: np.ndarray
                ) -> dict[str, Any]:
    from lsmvec import Client
    client = Client(folder, durability="fsync")
    index = client.create_index(INDEX_NAME, BENCH_KEY, dimension=args.dim, metric=args.metric)
    with SyncCounter() as syncs:
        elapsed = _timed(index.upsert, ids, data, args.batch)
        synced = syncs.count
    if index.get_num_vectors() != len(ids):
        raise SystemExit(f"lsmvec holds {index.get_num_vectors()} vectors, expected {len(ids)}")
    index.close()
    client.close()
    return {"seconds": elapsed, "vectors_per_s": len(ids) / elapsed, "syncs": synced}


def reference_pass(args: argparse.Namespace, folder: Path, ids: list[str], data: np.ndarray
                   ) -> dict[str, Any]:
    from cyborgdb_core import Client as RefClient, StorageConfig
    client = RefClient(storage_config=StorageConfig.disk(str(folder)))
    index = client.create_index(INDEX_NAME, BENCH_KEY, dimension=args.dim, metric=args.metric)
    elapsed = _timed(lambda i, v: index.upsert(i, v, index_key=BENCH_KEY), ids, data, args.batch)
    index = client = None  # the library has no close(): dropping the handles frees it
    return {"seconds": elapsed, "vectors_per_s": len(ids) / elapsed}


def ceiling_pass(args: argparse.Namespace, folder: Path, ids: list[str], data: np.ndarray
                 ) -> dict[str, Any]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    gcm = AESGCM(BENCH_KEY)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "ceiling.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def upsert(_ids: list[str], vectors: np.ndarray) -> None:
        if args.metric == "cosine":  # one pass that writes the unit rows
            norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
            rows = np.divide(vectors, norms[:, None], out=np.empty(vectors.shape, np.float32))
        else:
            rows = np.array(vectors, np.float32)
        nonce = os.urandom(12)
        sealed = nonce + gcm.encrypt(nonce, memoryview(rows).cast("B"), b"batch")
        view = memoryview(sealed)
        while view:
            view = view[os.write(fd, view):]
        os.fdatasync(fd)

    try:
        elapsed = _timed(upsert, ids, data, args.batch)
    finally:
        os.close(fd)
    return {"seconds": elapsed, "vectors_per_s": len(ids) / elapsed}


def vs_reference(args: argparse.Namespace) -> dict[str, Any]:
    passes: dict[str, Callable[..., dict[str, Any]]] = {"lsmvec": lsmvec_pass}
    if importlib.util.find_spec("cyborgdb_core") is not None:
        passes["reference"] = reference_pass
    else:
        print("cyborgdb-core is not installed (pip install 'lsmvec[bench-peers]'): no reference pass")
    passes["ceiling"] = ceiling_pass
    names = list(passes)
    data = clustered(args.n, args.dim, seed=0)
    ids = [str(i) for i in range(args.n)]
    calls = -(-args.n // args.batch)
    rounds: list[dict[str, Any]] = []
    base = Path(tempfile.mkdtemp(prefix="lsmvec-bench-", dir=args.dir))
    print(f"{args.n:,} x {args.dim} float32 ({args.metric}) in calls of {args.batch:,}, one thread, "
          f"{args.rounds} rounds; the order through every permutation, a sync after each pass")
    try:
        # one untimed pass of each store first: a process's first ingest pays for first-time
        # work (imports at the first flush, code and allocator warm-up; lsmvec's first of eight
        # 100k passes in one process: 104k rows/s, the others 135-186k)
        for name in names:
            folder = base / f"{name}-warmup"
            passes[name](args, folder, ids, data)
            shutil.rmtree(folder, ignore_errors=True)
        orders = list(itertools.permutations(names))
        os.sync()
        for r in range(args.rounds):
            order = list(orders[r % len(orders)])
            row: dict[str, Any] = {"round": r + 1, "order": order}
            for name in order:
                folder = base / f"{name}-{r}"
                row[name] = passes[name](args, folder, ids, data)
                shutil.rmtree(folder, ignore_errors=True)
                os.sync()
            rounds.append(row)
            rates = ", ".join(f"{name} {row[name]['vectors_per_s']:,.0f}" for name in order)
            print(f"round {r + 1}: {rates} vectors/s; lsmvec {row['lsmvec']['syncs'] / calls:.2f} "
                  f"syncs/call", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    result: dict[str, Any] = {"kind": "vs-reference", "n": args.n, "dim": args.dim, "batch": args.batch,
                              "metric": args.metric, "rounds": rounds}
    for name in names:
        result[f"{name}_vectors_per_s"] = statistics.median(r[name]["vectors_per_s"] for r in rounds)
    line = ", ".join(f"{name} {result[f'{name}_vectors_per_s']:,.0f}" for name in names)
    ratios = []
    for other in names[1:]:
        ratio = statistics.median(r["lsmvec"]["vectors_per_s"] / r[other]["vectors_per_s"] for r in rounds)
        result[f"lsmvec_over_{other}"] = ratio
        ratios.append(f"lsmvec/{other} {ratio:.2f}")
    print(f"median vectors/s: {line}; median of per-round ratios: {', '.join(ratios)}")
    return result
