"""One small adapter per vector store that `tools.bench_compare` measures lsmvec against.

Every adapter offers the same interface, so the benchmark treats them alike:
  name, dist                 display name and the PyPI distribution it needs
  available() -> bool        the package imports here (else `why_unavailable` says why)
  build(vectors, metric, folder)   durable ingest, in batches where the store has them, then
                             whatever makes it queryable at full quality (training); the
                             caller times the whole call, `ingest_seconds` / `ready_seconds`
                             split it
  knob, knob_values(), set_knob(v)   the recall/speed setting a sweep walks (None: no knob)
  query(q_1d, k) -> ids      row numbers (int64) of the k nearest, nearest first
  query_batch(Q, k) -> list of ids
  close()

"Durable" means the rows are on disk and fsynced when build's ingest phase ends: stores with a
log or a table format write as they go; in-memory libraries (hnswlib, faiss, raw ScaNN) build
their index, then save it to `folder` and fsync it, so their ingest includes the index build.
None of these packages is a dependency of lsmvec: they come with the `bench-peers` extra.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import math
import os
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Peer", "LsmvecPeer", "RawScannPeer", "HnswlibPeer", "FaissPeer", "ChromaPeer",
           "LanceDBPeer", "CyborgDBPeer", "PEERS", "probe_sweep", "fsync_tree"]

BATCH_ROWS = 10_000
"""Rows per ingest call for every store that takes batches."""

PROBE_FRACTIONS = (0.01, 0.03, 0.1, 0.3)
"""Share of an IVF / tree index's lists searched by each sweep step: lsmvec's default is 20%
(design.md: ~0.95 recall@10 on real MiniLM data), so the last step reaches past it, and the
first ones show where easy (clustered) data already reaches the target."""

EF_SWEEP = (16, 32, 64, 128)
"""HNSW ef_search values swept (ef below k is raised to k by the libraries)."""

HNSW_M, HNSW_EF_CONSTRUCTION = 16, 200
"""hnswlib build settings: the library's documented example values."""


def probe_sweep(num_lists: int) -> list[int]:
    """Lists to search for each PROBE_FRACTIONS step of an index with `num_lists` lists:
    distinct, ascending, within 1 .. num_lists."""
    values = {min(num_lists, max(1, math.ceil(f * num_lists))) for f in PROBE_FRACTIONS}
    return sorted(values)


def ivf_lists(n: int) -> int:
    """sqrt(n) lists, as lsmvec's own trainer chooses, so IVF peers partition alike."""
    return max(1, round(math.sqrt(n)))


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder` (after a library wrote them without)."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a copy): cosine as inner product, for libraries without cosine."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.where(norms == 0, 1, norms)).astype(np.float32)


def _int_ids(rows: list[dict[str, Any]]) -> np.ndarray:
    return np.fromiter((int(r["id"]) for r in rows), np.int64, len(rows))


class Peer:
    """The shared interface; subclasses implement `_ingest`, `_make_ready` and the queries."""

    name = "?"
    dist = ""
    modules: tuple[str, ...] = ()
    knob: str | None = None

    def __init__(self) -> None:
        self.ingest_seconds = float("nan")
        self.ready_seconds = float("nan")
        self.notes: list[str] = []
        self.why_unavailable = ""
        self.metric = "euclidean"

    def available(self) -> bool:
        """Whether every module this peer needs imports; the failure is kept in `why_unavailable`."""
        for module in self.modules:
            try:
                importlib.import_module(module)
            except Exception as exc:  # an ImportError, or a broken native library underneath
                self.why_unavailable = f"import {module}: {exc.__class__.__name__}: {exc}"
                return False
        return True

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.dist)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    def build(self, vectors: np.ndarray, metric: str, folder: Path) -> None:
        """Durable ingest of `vectors` (row i gets id i) into `folder`, then make it queryable."""
        self.metric = metric
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        self._ingest(np.ascontiguousarray(vectors, np.float32), folder)
        t1 = time.perf_counter()
        self._make_ready()
        self.ingest_seconds, self.ready_seconds = t1 - t0, time.perf_counter() - t1

    def _ingest(self, vectors: np.ndarray, folder: Path) -> None:
        raise NotImplementedError

    def _make_ready(self) -> None:
        """Training after ingest; nothing for stores that are queryable as they ingest."""

    def knob_values(self) -> list[int]:
        return []

    def set_knob(self, value: int) -> None:
        raise NotImplementedError(f"{self.name} has no recall knob")

    def query(self, q: np.ndarray, k: int) -> np.ndarray:
        raise NotImplementedError

    def query_batch(self, queries: np.ndarray, k: int) -> list[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the store; the caller deletes the folder."""


class LsmvecPeer(Peer):
    """lsmvec itself: fsync'd upserts of 10k rows, then train() into one ScaNN segment."""

    name, dist, modules, knob = "lsmvec", "lsmvec", ("lsmvec",), "n_probes"

    def _ingest(self, vectors: np.ndarray, folder: Path) -> None:
        from lsmvec import Client, generate_key
        self.client = Client(folder)
        self.index = self.client.create_index("bench", generate_key(), dimension=vectors.shape[1],
                                              metric=self.metric)
        for start in range(0, len(vectors), BATCH_ROWS):
            stop = min(len(vectors), start + BATCH_ROWS)
            self.index.upsert(ids=np.arange(start, stop), vectors=vectors[start:stop])
        self.probes: int | None = None

    def _make_ready(self) -> None:
        self.index.train()

    def knob_values(self) -> list[int]:
        return probe_sweep(self.index.n_lists or 1)

    def set_knob(self, value: int) -> None:
        self.probes = value

    def query(self, q: np.ndarray, k: int) -> np.ndarray:
        return _int_ids(self.index.query(q, top_k=k, n_probes=self.probes, include=[]))

    def query_batch(self, queries: np.ndarray, k: int) -> list[np.ndarray]:
        return [_int_ids(r) for r in self.index.query(queries, top_k=k, n_probes=self.probes, include=[])]

    def close(self) -> None:
        self.client.close()


class RawScannPeer(Peer):
    """ScaNN with exactly the parameters lsmvec picks for one segment of this size; the
    searcher is serialized (plaintext) into the folder and fsynced."""

    name, dist, modules, knob = "scann (raw)", "scann", ("scann",), "leaves_to_search"

    def _ingest(self, vectors: np.ndarray, folder: Path) -> None:
        from lsmvec.compaction.compactor import usable_cores
        from lsmvec.compaction.scann_assets import train_searcher
        from lsmvec.compaction.scann_params import KIND_BRUTE, choose_params
        from scann.scann_ops.py import scann_ops_pybind
        self.params = choose_params(vectors.shape[0], vectors.shape[1], self.metric)
        data = unit_rows(vectors) if self.metric == "cosine" else vectors
        if self.params.kind == KIND_BRUTE:
            self.searcher = scann_ops_pybind.builder(data, 10, self.params.distance).score_brute_force().build()
        else:
            self.searcher = train_searcher(data, self.params, usable_cores())
        (folder / "scann").mkdir()
        self.searcher.serialize(str(folder / "scann"), relative_path=True)
        fsync_tree(folder)
        # -1: "the searcher's default" (ScaNN's pybind layer takes ints, not None)
        self.leaves: int = self.params.leaves_to_search or -1
        self.reorder = max(self.params.reorder, 10) if self.params.kind != KIND_BRUTE else -1

    def knob_values(self) -> list[int]:
        return probe_sweep(self.params.num_leaves) if self.params.num_leaves else []

    def set_knob(self, value: int) -> None:
        self.leaves = value

    def _prepare(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, np.float32)
        return unit_rows(q) if self.metric == "cosine" else q

    def query(self, q: np.ndarray, k: int) -> np.ndarray:
        found, _ = self.searcher.search(self._prepare(q), final_num_neighbors=k,
                                        pre_reorder_num_neighbors=self.reorder,
                                        leaves_to_search=self.leaves)
        return found.astype(np.int64)

    def query_batch(self, queries: np.ndarray, k: int) -> list[np.ndarray]:
        found, _ = self.searcher.search_batched(self._prepare(queries), final_num_neighbors=k,
                                                pre_reorder_num_neighbors=self.reorder,
                                                leaves_to_search=self.leaves)
        return list(found.astype(np.int64))


class HnswlibPeer(Peer):
    """hnswlib (M=16, ef_construction=200), saved to one file and fsynced."""

    name, dist, modules, knob = "hnswlib", "hnswlib", ("hnswlib",), "ef"

    def _ingest(self, vectors: np.ndarray, folder: Path) -> None:
        import hnswlib
        self.index = hnswlib.Index(space="cosine" if self.metric == "cosine" else "l2", dim=vectors.shape[1])
        self.index.init_index(max_elements=len(vectors), ef_construction=HNSW_EF_CONSTRUCTION, M=HNSW_M)
        for start in range(0, len(vectors), BATCH_ROWS):
            stop = min(len(vectors), start + BATCH_ROWS)
            self.index.add_items(vectors[start:stop], np.arange(start, stop))
        self.index.save_index(str(folder / "hnsw.bin"))
        fsync_tree(folder)

    def knob_values(self) -> list[int]:
        return list(EF_SWEEP)

    def set_knob(self, value: int) -> None:
        self.index.set_ef(value)

    def query(self, q: np.ndarray, k: int) -> np.ndarray:
        labels, _ = self.index.knn_query(q, k=k)
        return labels[0].astype(np.int64)

    def query_batch(self, queries: np.ndarray, k: int) -> list[np.ndarray]:
        labels, _ = self.index.knn_query(queries, k=k)
        return list(labels.astype(np.int64))


class FaissPeer(Peer):
    """faiss IndexIVFFlat with sqrt(n) lists (k-means first: it must be trained before rows
    are added), written to one file and fsynced. Cosine = inner product on unit rows."""

    name, dist, modules, knob = "faiss IVFFlat", "faiss-cpu", ("faiss",), "nprobe"

    def _ingest(self, vectors: np.ndarray, folder: Path) -> None:
        import faiss
        data = unit_rows(vectors) if self.metric == "cosine" else vectors
        dim, lists = data.shape[1], ivf_lists(len(data))
        if self.metric == "cosine":
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        else:
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, lists)
        self.index.train(data[: min(len(data), 256 * lists)])  # faiss's own cap on k-means samples
        for start in range(0, len(data), BATCH_ROWS):
            self.index.add(data[start:start + BATCH_ROWS])
        faiss.write_index(self.index, str(folder / "ivfflat.faiss"))
        fsync_tree(folder)
        self.notes.append(f"{faiss.omp_get_max_threads()} OpenMP threads")

    def knob_values(self) -> list[int]:
        return probe_sweep(self.index.nlist)

    def set_knob(self, value: int) -> None:
        self.index.nprobe = value

    def _prepare(self, q: np.ndarray) -> np.ndarray:
        q = np.atleast_2d(np.asarray(q, np.float32))
        return unit_rows(q) if self.metric == "cosine" else q

    def query(self, q: np.ndarray, k: int) -> np.ndarray:
        return self.index.search(self._prepare(q), k)[1][0].astype(np.int64)

    def query_batch(self, queries: np.ndarray, k: int) -> list[np.ndarray]:
        return list(self.index.search(self._prepare(queries), k)[1].astype(np.int64))


class ChromaPeer(Peer):
    """chromadb PersistentClient with its default HNSW settings; add() in its largest batch."""

    name, dist, modules, knob = "chromadb", "chromadb", ("chromadb",), "ef_search"

    def _ingest(self, vectors: np.ndarray, folder: Path) -> None:
        import chromadb
        from chromadb.config import Settings
        self.client = chromadb.PersistentClient(path=str(folder), settings=Settings(anonymized_telemetry=False))
        space = "cosine" if self.metric == "cosine" else "l2"
        self.collection = self.client.create_collection("bench", embedding_function=None,
                                                        configuration={"hnsw": {"space": space}})
        batch = min(BATCH_ROWS, self.client.get_max_batch_size())
        for start in range(0, len(vectors), batch):
            stop = min(len(vectors), start + batch)
            self.collection.add(ids=[str(i) for i in range(start, stop)], embeddings=vectors[start:stop])

    def knob_values(self) -> list[int]:
        return list(EF_SWEEP)

    def set_knob(self, value: int) -> None:
        """Chroma reads ef_search only when it loads the collection: modify, then reopen."""
        import chromadb
        self.collection.modify(configuration={"hnsw": {"ef_search": value}})
        path, settings = self.client.get_settings().persist_directory, self.client.get_settings()
        self.client.clear_system_cache()
        self.client = chromadb.PersistentClient(path=path, settings=settings)
        self.collection = self.client.get_collection("bench")

    def query(self, q: np.ndarray, k: int) -> np.ndarray:
        ids = self.collection.query(query_embeddings=q[None, :], n_results=k, include=[])["ids"][0]
        return np.array(ids, np.int64)

    def query_batch(self, queries: np.ndarray, k: int) -> list[np.ndarray]:
        ids = self.collection.query(query_embeddings=queries, n_results=k, include=[])["ids"]
        return [np.array(row, np.int64) for row in ids]


class LanceDBPeer(Peer):
    """LanceDB: one table version per 10k-row add, then an IVF_FLAT index with sqrt(n)
    partitions (IVF_PQ, its default, trades recall the others do not give up)."""

    name, dist, modules, knob = "lancedb IVF_FLAT", "lancedb", ("lancedb", "pyarrow"), "nprobes"

    def _batch(self, vectors: np.ndarray, start: int, stop: int) -> Any:
        import pyarrow as pa
        flat = pa.array(vectors[start:stop].reshape(-1))
        return pa.table({"id": pa.array(np.arange(start, stop), pa.int64()),
                         "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})

    def _ingest(self, vectors: np.ndarray, folder: Path) -> None:
        import lancedb
        self.db = lancedb.connect(str(folder))
        self.table = self.db.create_table("bench", data=self._batch(vectors, 0, min(len(vectors), BATCH_ROWS)))
        for start in range(BATCH_ROWS, len(vectors), BATCH_ROWS):
            self.table.add(self._batch(vectors, start, min(len(vectors), start + BATCH_ROWS)))
        fsync_tree(folder)  # LanceDB itself issues no fsync (strace: 0 during ingest)
        self.notes.append("LanceDB issues no fsync: the adapter fsyncs the folder once after ingest")
        self.lists = ivf_lists(len(vectors))
        self.nprobes: int | None = None

    def _make_ready(self) -> None:
        from lancedb.index import IvfFlat
        self.table.create_index("vector", config=IvfFlat(distance_type=self._distance(), num_partitions=self.lists))

    def _distance(self) -> str:
        return "cosine" if self.metric == "cosine" else "l2"

    def knob_values(self) -> list[int]:
        return probe_sweep(self.lists)

    def set_knob(self, value: int) -> None:
        self.nprobes = value

    def _search(self, q: np.ndarray, k: int) -> Any:
        search = self.table.search(q).distance_type(self._distance()).limit(k)
        if self.nprobes is not None:
            search = search.nprobes(self.nprobes)
        return search.select(["id", "_distance"]).to_arrow()

    def query(self, q: np.ndarray, k: int) -> np.ndarray:
        return self._search(q, k)["id"].to_numpy().astype(np.int64)

    def query_batch(self, queries: np.ndarray, k: int) -> list[np.ndarray]:
        table = self._search(list(queries), k)
        which = table["query_index"].to_numpy()
        ids = table["id"].to_numpy().astype(np.int64)
        return [ids[which == i] for i in range(len(queries))]  # rows come grouped, nearest first


class CyborgDBPeer(Peer):
    """The reference product's embedded library (offline, on-disk storage): upserts of 10k,
    then train() with its defaults; the index key goes with every call where it is asked for."""

    name, dist, modules, knob = "cyborgdb-core", "cyborgdb-core", ("cyborgdb_core",), "n_probes"

    def _ingest(self, vectors: np.ndarray, folder: Path) -> None:
        import inspect

        from cyborgdb_core import Client, EncryptedIndex, StorageConfig
        key = secrets.token_bytes(32)
        self.client = Client(storage_config=StorageConfig.disk(str(folder)))
        self.index = self.client.create_index("bench", key, dimension=vectors.shape[1], metric=self.metric)
        takes_key = "index_key" in inspect.signature(EncryptedIndex.upsert).parameters
        self.kw: dict[str, Any] = {"index_key": key} if takes_key else {}
        for start in range(0, len(vectors), BATCH_ROWS):
            stop = min(len(vectors), start + BATCH_ROWS)
            self.index.upsert([str(i) for i in range(start, stop)], vectors[start:stop], **self.kw)
        self.probes: int | None = None

    def _make_ready(self) -> None:
        self.index.train(**self.kw)
        self.notes.append(f"{self.index.index_config().get('index_type')}, {self.index.n_lists} lists")

    def knob_values(self) -> list[int]:
        return probe_sweep(int(self.index.n_lists or 1))

    def set_knob(self, value: int) -> None:
        self.probes = value

    def query(self, q: np.ndarray, k: int) -> np.ndarray:
        return _int_ids(self.index.query(q, top_k=k, n_probes=self.probes, **self.kw))

    def query_batch(self, queries: np.ndarray, k: int) -> list[np.ndarray]:
        return [_int_ids(r) for r in self.index.query(queries, top_k=k, n_probes=self.probes, **self.kw)]

    def close(self) -> None:
        self.index = self.client = None  # the library has no close(); dropping the handles frees it


PEERS: dict[str, type[Peer]] = {
    "lsmvec": LsmvecPeer, "scann": RawScannPeer, "hnswlib": HnswlibPeer, "faiss": FaissPeer,
    "chromadb": ChromaPeer, "lancedb": LanceDBPeer, "cyborgdb": CyborgDBPeer,
}
"""Command-line name -> adapter, in the order the benchmark runs them."""
