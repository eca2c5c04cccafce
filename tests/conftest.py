"""Shared fixtures and the NumPy brute-force oracle for the API tests.

The oracle is deliberately independent of the engine: it keeps the vectors exactly as the caller
gave them (cast to float32, as the spec says stored vectors are), computes every distance in
float64 from the definitions in api.md and sorts. Test modules import the helpers with
``from conftest import ...`` (pytest puts this folder on sys.path).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

METRICS = ("euclidean", "squared_euclidean", "cosine")
RTOL = 1e-5
ATOL = 1e-6


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture
def key() -> bytes:
    """A fresh 32-byte index key."""
    from lsmvec import generate_key
    return generate_key()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """The folder a Client is opened on (a subfolder, so tests can check what lands beside it)."""
    return tmp_path / "data"


@pytest.fixture
def client(data_dir: Path) -> Iterator[Any]:
    """A Client on a fresh folder, closed at teardown."""
    from lsmvec import Client
    c = Client(data_dir)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Runs each @pytest.mark.anyio test on anyio's asyncio backend and on trio."""
    return request.param


# ----------------------------------------------------------------------------- the oracle

def random_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Gaussian float32 rows: distance ties are practically impossible."""
    return rng.standard_normal((n, dim)).astype(np.float32)


def stored_form(vector: Any, metric: str) -> np.ndarray:
    """What `get` should return for a vector upserted as `vector`: float32, unit length under
    cosine (api.md: 'vectors are normalised internally')."""
    v = np.asarray(vector, dtype=np.float32).astype(np.float64)
    if metric == "cosine":
        v = v / np.linalg.norm(v)
    return v


def distances(query: Any, matrix: np.ndarray, metric: str) -> np.ndarray:
    """float64 distances of one query to each row of `matrix`, by api.md's definitions."""
    q = np.asarray(query, dtype=np.float32).astype(np.float64)
    m = np.asarray(matrix, dtype=np.float32).astype(np.float64)
    if metric == "euclidean":
        return np.sqrt(((m - q) ** 2).sum(axis=1))
    if metric == "squared_euclidean":
        return ((m - q) ** 2).sum(axis=1)
    if metric == "cosine":
        return 1.0 - (m @ q) / (np.linalg.norm(m, axis=1) * np.linalg.norm(q))
    raise AssertionError(f"unknown metric {metric}")


def brute_force(model: Mapping[str, Any], query: Any, metric: str, top_k: int
                ) -> tuple[list[str], np.ndarray, dict[str, float]]:
    """The exact answer: (ids, distances) of the top_k nearest live items, ascending, plus the
    distance of every live item (to check a reported distance against its own id)."""
    ids = list(model)
    if not ids:
        return [], np.zeros(0), {}
    d = distances(query, np.stack([np.asarray(model[i], dtype=np.float32) for i in ids]), metric)
    order = np.argsort(d, kind="stable")[:top_k]
    return [ids[j] for j in order], d[order], dict(zip(ids, d.tolist()))


def assert_matches_oracle(results: list[dict], model: Mapping[str, Any], query: Any,
                          metric: str, top_k: int, *, context: str = "") -> None:
    """`results` (one query's answer) equals the brute force: same length, distances within
    RTOL/ATOL of the exact ones rank by rank, each reported distance is its own id's true
    distance, no duplicates, and the id sequence is exactly the oracle's unless two oracle
    distances are within tolerance of each other (then only a swap inside that near-tie is
    allowed, which the previous checks already pin down)."""
    want_ids, want_d, all_d = brute_force(model, query, metric, top_k)
    assert isinstance(results, list), f"{context}: expected a list, got {type(results)}"
    got_ids = [r["id"] for r in results]
    assert len(got_ids) == len(want_ids), (
        f"{context}: {len(got_ids)} results, expected {len(want_ids)} (top_k={top_k}, "
        f"live={len(model)})")
    assert len(set(got_ids)) == len(got_ids), f"{context}: duplicate ids {got_ids}"
    unknown = [i for i in got_ids if i not in all_d]
    assert not unknown, f"{context}: returned ids that are not live: {unknown}"
    got_d = np.array([r["distance"] for r in results], dtype=np.float64)
    np.testing.assert_allclose(got_d, want_d, rtol=RTOL, atol=ATOL,
                               err_msg=f"{context}: distances by rank")
    np.testing.assert_allclose(got_d, [all_d[i] for i in got_ids], rtol=RTOL, atol=ATOL,
                               err_msg=f"{context}: reported distance vs the id's true distance")
    assert np.all(np.diff(got_d) >= 0), f"{context}: not sorted ascending: {got_d}"
    if got_ids != want_ids:
        # Only acceptable where the oracle itself has a near-tie at that rank.
        full_sorted = np.sort(np.fromiter(all_d.values(), dtype=np.float64))
        gaps = np.diff(full_sorted[: top_k + 1])
        tol = ATOL + RTOL * np.abs(full_sorted[1: top_k + 1])
        assert np.any(gaps <= 2 * tol), (
            f"{context}: ids differ from the oracle without any near-tie:\n got  {got_ids}\n"
            f" want {want_ids}")


def vector_list(value: Any) -> list[float]:
    """A returned vector (list or array) as a plain list of floats."""
    return np.asarray(value, dtype=np.float64).ravel().tolist()


def snapshot(index: Any) -> tuple[list[str], list[tuple], int]:
    """Everything observable about an index's items: sorted live ids, every item's full `get`
    (vector, contents, metadata), and the count. Two equal snapshots mean nothing changed."""
    ids = sorted(index.list_ids())
    items = index.get(ids)
    rows = []
    for item in items:
        vec = item.get("vector")
        rows.append((item["id"], None if vec is None else tuple(vector_list(vec)),
                     item.get("contents"), repr(item.get("metadata"))))
    return ids, rows, index.get_num_vectors()


def by_id(items: Iterable[dict]) -> dict[str, dict]:
    return {item["id"]: item for item in items}


_CHILD_INDEX = """\
import os, sys
from lsmvec import Client
folder, key = sys.argv[1], bytes.fromhex(sys.argv[2])
index = Client(folder).create_index("crash", key, dimension=4, background_compaction=False)
"""


def run_then_exit(body: str, folder: Path, key: bytes) -> None:
    """Run `body` (indented code, as in a triple-quoted string) in a child Python where `index`
    is a new index "crash" (dimension 4, background compaction off) in `folder`; the body ends
    with ``os._exit(0)``: the process dies right after its calls returned, with no close."""
    import subprocess
    import sys
    import textwrap
    subprocess.run([sys.executable, "-c", _CHILD_INDEX + textwrap.dedent(body), str(folder),
                    key.hex()], check=True, timeout=120)
