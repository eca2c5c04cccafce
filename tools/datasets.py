"""Deterministic synthetic vectors for the demo, the benchmark and tests.

Real embeddings are clustered (topics), not uniform noise: an ANN index behaves very differently
on the two, so the generator draws points around random cluster centres. Everything derives
from `seed` through separate streams, so `clustered` and `clustered_queries` with the same
(dim, clusters, seed) share their centres while drawing independent points.
"""
from __future__ import annotations

import numpy as np

__all__ = ["clustered", "clustered_queries", "brute_force_topk", "brute_force_topk_chunked"]

DEFAULT_CLUSTERS = 100
DEFAULT_SPREAD = 0.6  # noise sigma relative to the unit-variance centres: clusters overlap a bit
_CHUNK_ROWS = 16_384  # generate in chunks: bounded float64 temporaries for large n

_STREAM_CENTRES, _STREAM_POINTS, _STREAM_QUERIES = 0, 1, 2


def _check(n: int, dim: int, clusters: int) -> None:
    for name, value in (("n", n), ("dim", dim), ("clusters", clusters)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if name == "n" else 1):
            raise ValueError(f"{name} must be a {'non-negative' if name == 'n' else 'positive'} int, got {value!r}")


def _centres(dim: int, clusters: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, _STREAM_CENTRES]).standard_normal((clusters, dim), np.float32)


def _draw(n: int, dim: int, clusters: int, spread: float, seed: int, stream: int) -> np.ndarray:
    centres = _centres(dim, clusters, seed)
    rng = np.random.default_rng([seed, stream])
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, _CHUNK_ROWS):
        stop = min(n, start + _CHUNK_ROWS)
        which = rng.integers(0, clusters, stop - start)
        noise = rng.standard_normal((stop - start, dim), np.float32)
        out[start:stop] = centres[which] + np.float32(spread) * noise
    return out


def clustered(n: int, dim: int, *, clusters: int = DEFAULT_CLUSTERS, spread: float = DEFAULT_SPREAD,
              seed: int = 0) -> np.ndarray:
    """`n` x `dim` float32 points around `clusters` Gaussian centres; same arguments, same array.

    Raises ValueError for a negative n or a non-positive dim / clusters."""
    _check(n, dim, clusters)
    return _draw(n, dim, clusters, spread, seed, _STREAM_POINTS)


def clustered_queries(n: int, dim: int, *, clusters: int = DEFAULT_CLUSTERS,
                      spread: float = DEFAULT_SPREAD, seed: int = 0) -> np.ndarray:
    """Query points from the same distribution as `clustered(..., seed=seed)` but not in it."""
    _check(n, dim, clusters)
    return _draw(n, dim, clusters, spread, seed, _STREAM_QUERIES)


def brute_force_topk(data: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Exact top-k row numbers (q, k) by numpy: the oracle recall is measured against.

    metric: "euclidean" / "squared_euclidean" (same order) or "cosine"."""
    data = np.asarray(data, np.float32)
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    if metric == "cosine":
        data = data / np.linalg.norm(data, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        dist = -(queries @ data.T)
    elif metric in ("euclidean", "squared_euclidean"):
        dist = (np.einsum("nd,nd->n", data, data)[None, :] - 2.0 * (queries @ data.T))
    else:
        raise ValueError(f"unknown metric {metric!r}")
    k = min(k, data.shape[0])
    part = np.argpartition(dist, k - 1, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(dist, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def brute_force_topk_chunked(data: np.ndarray, queries: np.ndarray, k: int, metric: str, *,
                             chunk: int = 128) -> np.ndarray:
    """`brute_force_topk` for large data: same answer, but queries go `chunk` at a time so the
    (chunk, n) distance block stays bounded (1000 queries x 1M rows would be 4 GB at once), and
    the data's norms / unit rows are computed once, not per chunk."""
    data = np.asarray(data, np.float32)
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    if metric == "cosine":
        data = data / np.linalg.norm(data, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        sqnorms = None
    elif metric in ("euclidean", "squared_euclidean"):
        sqnorms = np.einsum("nd,nd->n", data, data)
    else:
        raise ValueError(f"unknown metric {metric!r}")
    k = min(k, data.shape[0])
    out = np.empty((queries.shape[0], k), np.int64)
    for start in range(0, queries.shape[0], chunk):
        block = queries[start:start + chunk]
        dist = -(block @ data.T) if sqnorms is None else sqnorms[None, :] - 2.0 * (block @ data.T)
        part = np.argpartition(dist, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(dist, part, axis=1), axis=1, kind="stable")
        out[start:start + chunk] = np.take_along_axis(part, order, axis=1)
    return out


def read_fvecs(path: str) -> np.ndarray:
    """A .fvecs file (each row: int32 dimension, then that many float32) as an (n, d) array."""
    raw = np.fromfile(path, dtype=np.int32)
    if raw.size == 0:
        return np.zeros((0, 0), np.float32)
    dim = int(raw[0])
    if dim <= 0 or raw.size % (dim + 1):
        raise ValueError(f"{path}: not an .fvecs file (dimension {dim}, {raw.size} words)")
    rows = raw.reshape(-1, dim + 1)
    if not (rows[:, 0] == dim).all():
        raise ValueError(f"{path}: rows of different dimensions")
    return rows[:, 1:].view(np.float32).copy()


def load_file(path: str, n_queries: int) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(data, queries, metric or None) from a .npy, .fvecs or ann-benchmarks .hdf5 file.

    .npy / .fvecs: the last `n_queries` rows are held out as queries. .hdf5: its "train" and
    "test" sets, and its "distance" attribute ("angular" -> cosine). Never unpickles."""
    lower = path.lower()
    if lower.endswith(".npy"):
        data = np.load(path, allow_pickle=False).astype(np.float32)
    elif lower.endswith(".fvecs"):
        data = read_fvecs(path)
    elif lower.endswith((".hdf5", ".h5")):
        try:
            import h5py
        except ImportError:
            raise SystemExit("reading HDF5 needs h5py: pip install h5py") from None
        with h5py.File(path, "r") as f:
            train = np.asarray(f["train"], np.float32)
            test = np.asarray(f["test"], np.float32)[:n_queries]
            distance = f.attrs.get("distance", "")
        metric = {"angular": "cosine", "euclidean": "euclidean"}.get(str(distance))
        return train, test, metric
    else:
        raise SystemExit(f"{path}: expected .npy, .fvecs or .hdf5")
    if data.ndim != 2 or len(data) <= n_queries:
        raise SystemExit(f"{path}: need a 2-D array with more than {n_queries} rows")
    return data[:-n_queries], data[-n_queries:], None
