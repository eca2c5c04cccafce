"""Segments against a numpy brute-force oracle, and every way a segment folder can be damaged.

Trained (ScaNN) segments are built once per module (30k x 32, clustered) to keep this fast.
"""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scann.scann_ops.py import scann_ops_pybind

import lsmvec.compaction.scann_assets as scann_assets
import lsmvec.compaction.scann_serialize as scann_serialize
from lsmvec.compaction.filenames import SCANN_DOCIDS_FILE, SEGMENT_META_FILE, VECTORS_FILE
from lsmvec.compaction.scann_params import KIND_BRUTE, KIND_TREE_AH, MIN_TREE_ROWS
from lsmvec.compaction.segment import (FileEntry, Segment, SegmentFiles, build_and_open_segment,
                                build_segment)
from lsmvec.wal.errors import (ClosedError, CorruptionError, DimensionMismatchError,
                        InvalidArgumentError, InvalidVectorError)

KEY = bytes(range(32))
CONTEXT = b"index-uuid-1|seg-000007"
METRICS = ("euclidean", "squared_euclidean", "cosine")


# ----------------------------------------------------------------------------- helpers
def clustered(n: int, q: int, dim: int, clusters: int, seed: int,
              unit: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32) * 3
    rows = (centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, dim))).astype(np.float32)
    queries = (centres[rng.integers(0, clusters, q)] + rng.normal(size=(q, dim))).astype(
        np.float32)
    if unit:
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return rows, queries


def oracle(metric: str, rows: np.ndarray, query: np.ndarray, k: int,
           exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Straightforward per-query numpy: the reference every segment is held to."""
    if metric == "euclidean":
        distances = np.linalg.norm(rows - query, axis=1)
    elif metric == "squared_euclidean":
        distances = ((rows - query) ** 2).sum(axis=1)
    else:
        distances = 1.0 - rows @ query
    ids = np.arange(len(rows))
    if exclude is not None:
        ids, distances = ids[~exclude], distances[~exclude]
    order = np.argsort(distances, kind="stable")[:k]
    return ids[order], distances[order]


def recall(rows: np.ndarray, truth: list[np.ndarray]) -> float:
    return float(np.mean([len(set(r[r >= 0]) & set(t)) / len(t) for r, t in zip(rows, truth)]))


def assert_matches_oracle(segment: Segment, metric: str, rows: np.ndarray,
                          queries: np.ndarray, k: int, exclude: np.ndarray | None) -> None:
    got_rows, got_distances = segment.search(queries, k, exclude=exclude)
    assert got_rows.shape == got_distances.shape == (len(queries), k)
    assert got_rows.dtype == np.int64 and got_distances.dtype == np.float32
    for i, query in enumerate(queries):
        ids, distances = oracle(metric, rows, query, k, exclude)
        np.testing.assert_array_equal(got_rows[i, :len(ids)], ids)
        np.testing.assert_allclose(got_distances[i, :len(ids)], distances, rtol=1e-5, atol=1e-6)
        assert (got_rows[i, len(ids):] == -1).all() and np.isinf(got_distances[i, len(ids):]).all()
        single_rows, single_distances = segment.search(query, k, exclude=exclude)
        np.testing.assert_array_equal(single_rows[0], got_rows[i])
        # float32: the single-query and batched kernels may round the last bit differently
        np.testing.assert_allclose(single_distances[0], got_distances[i], rtol=1e-5, atol=1e-6)


@pytest.fixture
def scratch_log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, int]]:
    """Records every scratch folder the segment code creates (and its mode)."""
    created: list[tuple[Path, int]] = []
    original = scann_assets.make_scratch_dir

    def recording(fallback_parent: Path) -> Path:
        path = original(fallback_parent)
        created.append((path, path.stat().st_mode & 0o777))
        return path

    monkeypatch.setattr(scann_assets, "make_scratch_dir", recording)
    return created


def assert_scratch_gone(created: list[tuple[Path, int]]) -> None:
    assert created, "expected the ScaNN path to use a scratch folder"
    for path, mode in created:
        assert mode == 0o700
        assert not path.exists(), f"scratch folder {path} was left behind"
        if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK):
            assert path.parent == Path("/dev/shm")


# ------------------------------------------------------------------ trained segments
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One trained segment per metric: (folder, files, rows, queries, built segment)."""
    base = tmp_path_factory.mktemp("trained")
    built: dict[str, Any] = {}
    for metric in METRICS:
        rows, queries = clustered(30_000, 100, 32, 100, seed=11, unit=metric == "cosine")
        folder = base / metric
        files, segment = build_and_open_segment(folder, rows, metric=metric, key=KEY,
                                                context=CONTEXT, n_lists=170)
        built[metric] = (folder, files, rows, queries, segment)
    return built


def _copy_segment(trained: dict[str, Any], metric: str, tmp_path: Path) -> tuple[Path, SegmentFiles]:
    folder, files, *_ = trained[metric]
    copy = tmp_path / "seg-copy"
    shutil.copytree(folder, copy)
    return copy, files


@pytest.mark.parametrize("metric", METRICS)
def test_trained_segment_recall_and_exact_distances(trained: dict[str, Any], metric: str) -> None:
    _folder, files, rows, queries, segment = trained[metric]
    assert files.kind == segment.kind == KIND_TREE_AH and files.n_lists == 170
    truth = [oracle(metric, rows, q, 10)[0] for q in queries]
    got_rows, got_distances = segment.search(queries, 10)
    assert recall(got_rows, truth) >= 0.95
    for i, query in enumerate(queries):  # distances are the direct formula, ascending
        _ids, _ = oracle(metric, rows, query, 10)
        expected = oracle(metric, rows[got_rows[i]], query, 10)[1]
        np.testing.assert_allclose(got_distances[i], expected, rtol=1e-5, atol=1e-6)
    by_probes = [recall(segment.search(queries, 10, n_probes=p)[0], truth) for p in (1, 4, 170)]
    assert by_probes[0] < by_probes[1] <= by_probes[2] + 0.01
    assert by_probes[2] >= 0.97
    # A single query gives what the batch gives.
    for i in range(5):
        single_rows, single_distances = segment.search(queries[i], 10)
        np.testing.assert_array_equal(single_rows[0], got_rows[i])
        # float32: the single-query and batched kernels may round the last bit differently
        np.testing.assert_allclose(single_distances[0], got_distances[i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_reopened_trained_segment_returns_identical_results(
        trained: dict[str, Any], metric: str, scratch_log: list[tuple[Path, int]],
        tmp_path: Path) -> None:
    folder, files, rows, queries, built = trained[metric]
    moved = tmp_path / "renamed-elsewhere"  # the folder was serialized elsewhere: paths move
    shutil.copytree(folder, moved)
    reopened = Segment.open(moved, files, key=KEY, context=CONTEXT, metric=metric)
    assert_scratch_gone(scratch_log)
    assert (reopened.n, reopened.dim, reopened.kind, reopened.n_lists) == (
        len(rows), rows.shape[1], KIND_TREE_AH, 170)
    np.testing.assert_array_equal(reopened.vectors, rows)
    assert not reopened.vectors.flags.writeable
    for probes in (None, 3):
        a = built.search(queries, 10, n_probes=probes)
        b = reopened.search(queries, 10, n_probes=probes)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(built.search(queries[0], 10)[0],
                                  reopened.search(queries[0], 10)[0])
    empty_rows, empty_distances = reopened.search(np.zeros((0, rows.shape[1]), np.float32), 4)
    assert empty_rows.shape == empty_distances.shape == (0, 4)
    reopened.close()
    with pytest.raises(ClosedError):
        reopened.search(queries, 10)


def test_trained_segment_returns_k_live_rows_around_dead_ones(trained: dict[str, Any]) -> None:
    _folder, _files, rows, queries, segment = trained["euclidean"]
    rng = np.random.default_rng(5)
    # Kill every query's true top-10 plus 30% of all rows at random.
    exclude = rng.random(len(rows)) < 0.3
    for query in queries:
        exclude[oracle("euclidean", rows, query, 10)[0]] = True
    got_rows, got_distances = segment.search(queries, 10, exclude=exclude)
    assert (got_rows >= 0).all() and not exclude[got_rows].any()
    truth = [oracle("euclidean", rows, q, 10, exclude)[0] for q in queries]
    assert recall(got_rows, truth) >= 0.9
    assert (np.diff(got_distances, axis=1) >= 0).all()
    single_rows, _ = segment.search(queries[0], 10, exclude=exclude)
    assert (single_rows >= 0).all() and not exclude[single_rows].any()


def test_trained_segment_widens_when_almost_everything_is_dead(
        trained: dict[str, Any]) -> None:
    _folder, _files, rows, queries, segment = trained["squared_euclidean"]
    alive = np.random.default_rng(6).choice(len(rows), 25, replace=False)
    exclude = np.ones(len(rows), dtype=bool)
    exclude[alive] = False
    got_rows, _ = segment.search(queries[:3], 10, n_probes=1, exclude=exclude)
    assert (got_rows >= 0).all() and set(got_rows.ravel()) <= set(alive)
    few = np.ones(len(rows), dtype=bool)
    few[alive[:4]] = False  # fewer live rows than k: all of them, then padding
    got_rows, got_distances = segment.search(queries[:2], 10, exclude=few)
    for row, distances in zip(got_rows, got_distances):
        assert set(row[:4]) == set(alive[:4]) and (row[4:] == -1).all()
        assert np.isinf(distances[4:]).all()
    assert (segment.search(queries[:2], 5, exclude=np.ones(len(rows), bool))[0] == -1).all()


def test_large_batches_use_scann_threads_and_agree(trained: dict[str, Any]) -> None:
    _folder, _files, _rows, queries, segment = trained["euclidean"]
    small = segment.search(queries, 10)
    big = segment.search(np.concatenate([queries] * 3), 10)  # >= 256: parallel search
    for part in range(3):
        np.testing.assert_array_equal(big[0][part * 100:(part + 1) * 100], small[0])
        np.testing.assert_array_equal(big[1][part * 100:(part + 1) * 100], small[1])


def test_a_dataset_that_differs_from_the_rows_is_stored_and_reloaded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ScaNN's dataset.npy is normally rebuilt from vectors.bin; if it ever differs it is
    sealed and loaded as is."""
    monkeypatch.setattr(scann_serialize, "_dataset_matches", lambda path, vectors: False)
    # ...and the child's stream of it (compared as it is written) differs too
    monkeypatch.setattr(scann_serialize._DatasetWatch, "finish", lambda self: False)
    rows, queries = clustered(2 * MIN_TREE_ROWS, 20, 8, 8, seed=12, unit=False)
    files, built = build_and_open_segment(tmp_path / "seg", rows, metric="euclidean", key=KEY,
                                          context=CONTEXT, kind="tree_ah")
    assert "dataset.npy" in {e.name for e in files.files}
    reopened = Segment.open(tmp_path / "seg", files, key=KEY, context=CONTEXT,
                            metric="euclidean")
    np.testing.assert_array_equal(built.search(queries, 5)[0], reopened.search(queries, 5)[0])
    # The manifest cannot drop it: segment.json says it is stored.
    without = [e for e in files.files if e.name != "dataset.npy"]
    (tmp_path / "seg" / "dataset.npy").unlink()
    with pytest.raises(CorruptionError, match="do not fit"):
        Segment.open(tmp_path / "seg", without, key=KEY, context=CONTEXT, metric="euclidean")


def test_concurrent_searches_match_sequential_ones(trained: dict[str, Any]) -> None:
    _folder, _files, _rows, queries, segment = trained["cosine"]
    expected = [segment.search(q, 10) for q in queries[:40]]
    failures: list[str] = []

    def worker() -> None:
        for _ in range(3):
            for i, query in enumerate(queries[:40]):
                got = segment.search(query, 10)
                if not np.array_equal(got[0], expected[i][0]):
                    failures.append(f"query {i}")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# -------------------------------------------------------------- corruption and tampering
def test_planted_docids_pickle_is_refused_before_scann_loads(
        trained: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy, files = _copy_segment(trained, "euclidean", tmp_path)
    calls: list[str] = []
    monkeypatch.setattr(scann_ops_pybind, "load_searcher", lambda path: calls.append(path))
    (copy / SCANN_DOCIDS_FILE).write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CorruptionError, match="unexpected file") as caught:
        Segment.open(copy, files, key=KEY, context=CONTEXT, metric="euclidean")
    assert caught.value.path == str(copy / SCANN_DOCIDS_FILE)
    # Naming the pickle in the manifest does not help either.
    forged = list(files.files) + [FileEntry(SCANN_DOCIDS_FILE, 20, "0" * 64)]
    with pytest.raises(CorruptionError, match="invalid"):
        Segment.open(copy, forged, key=KEY, context=CONTEXT, metric="euclidean")
    assert calls == []


@pytest.mark.parametrize("intruder", ["extra_file", "subfolder", "symlink"])
def test_unexpected_entries_are_refused(trained: dict[str, Any], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, intruder: str) -> None:
    copy, files = _copy_segment(trained, "euclidean", tmp_path)
    calls: list[str] = []
    monkeypatch.setattr(scann_ops_pybind, "load_searcher", lambda path: calls.append(path))
    if intruder == "extra_file":
        (copy / "notes.txt").write_text("hello")
    elif intruder == "subfolder":
        (copy / "nested").mkdir()
    else:
        target = copy / "serialized_partitioner.pb"
        moved = tmp_path / "elsewhere.pb"
        target.rename(moved)
        target.symlink_to(moved)
    with pytest.raises(CorruptionError):
        Segment.open(copy, files, key=KEY, context=CONTEXT, metric="euclidean")
    assert calls == []


def test_modified_sealed_asset_is_corruption_and_scratch_is_removed(
        trained: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        scratch_log: list[tuple[Path, int]]) -> None:
    copy, files = _copy_segment(trained, "euclidean", tmp_path)
    calls: list[str] = []
    monkeypatch.setattr(scann_ops_pybind, "load_searcher", lambda path: calls.append(path))
    asset = copy / "hashed_dataset.npy"
    data = bytearray(asset.read_bytes())
    data[len(data) // 2] ^= 0x10
    asset.write_bytes(bytes(data))
    with pytest.raises(CorruptionError) as caught:
        Segment.open(copy, files, key=KEY, context=CONTEXT, metric="euclidean")
    assert caught.value.path == str(asset)
    assert calls == []
    assert_scratch_gone(scratch_log)


def test_manifest_checksum_size_and_missing_files(trained: dict[str, Any],
                                                  tmp_path: Path) -> None:
    copy, files = _copy_segment(trained, "euclidean", tmp_path)
    wrong_sha = [FileEntry(e.name, e.size, "f" * 64) if e.name == "ah_codebook.pb" else e
                 for e in files.files]
    with pytest.raises(CorruptionError, match="SHA-256"):
        Segment.open(copy, wrong_sha, key=KEY, context=CONTEXT, metric="euclidean")
    wrong_size = [FileEntry(e.name, e.size + 1, e.sha256) if e.name == VECTORS_FILE else e
                  for e in files.files]
    with pytest.raises(CorruptionError, match="bytes"):
        Segment.open(copy, wrong_size, key=KEY, context=CONTEXT, metric="euclidean")
    (copy / "datapoint_to_token.npy").unlink()
    with pytest.raises(CorruptionError, match="missing") as caught:
        Segment.open(copy, files, key=KEY, context=CONTEXT, metric="euclidean")
    assert caught.value.path == str(copy / "datapoint_to_token.npy")
    with pytest.raises(CorruptionError, match="missing"):
        Segment.open(tmp_path / "no-such-segment", files, key=KEY, context=CONTEXT,
                     metric="euclidean")


def test_swapped_segments_wrong_key_and_wrong_metric_fail(tmp_path: Path) -> None:
    rows_a, _ = clustered(300, 1, 8, 4, seed=1, unit=False)
    rows_b, _ = clustered(300, 1, 8, 4, seed=2, unit=False)
    files_a = build_segment(tmp_path / "a", rows_a, metric="euclidean", key=KEY,
                            context=b"uuid|seg-1")
    files_b = build_segment(tmp_path / "b", rows_b, metric="euclidean", key=KEY,
                            context=b"uuid|seg-2")
    # Whole folders swapped: a's folder opened as segment 2.
    with pytest.raises(CorruptionError):
        Segment.open(tmp_path / "a", files_a, key=KEY, context=b"uuid|seg-2", metric="euclidean")
    # One file swapped between segments (same size), manifest updated to match the bytes.
    os.replace(tmp_path / "a" / VECTORS_FILE, tmp_path / "b" / VECTORS_FILE)
    mixed = [next(e for e in files_a.files if e.name == VECTORS_FILE) if e.name == VECTORS_FILE
             else e for e in files_b.files]
    with pytest.raises(CorruptionError) as caught:
        Segment.open(tmp_path / "b", mixed, key=KEY, context=b"uuid|seg-2", metric="euclidean")
    assert caught.value.path == str(tmp_path / "b" / VECTORS_FILE)
    # The same segment id in another index, a wrong key, and a wrong metric.
    files_c = build_segment(tmp_path / "c", rows_a, metric="euclidean", key=KEY,
                            context=b"uuid|seg-3")
    for key, context, metric in ((KEY, b"other-uuid|seg-3", "euclidean"),
                                 (bytes(32), b"uuid|seg-3", "euclidean"),
                                 (KEY, b"uuid|seg-3", "cosine")):
        with pytest.raises(CorruptionError):
            Segment.open(tmp_path / "c", files_c, key=key, context=context, metric=metric)
    Segment.open(tmp_path / "c", files_c, key=KEY, context=b"uuid|seg-3", metric="euclidean")


# -------------------------------------------------------------------- brute segments
@pytest.mark.parametrize("metric", METRICS)
def test_brute_segment_equals_the_oracle(tmp_path: Path, metric: str) -> None:
    rows, queries = clustered(700, 12, 16, 5, seed=3, unit=metric == "cosine")
    files, built = build_and_open_segment(tmp_path / "seg", rows, metric=metric, key=KEY,
                                          context=CONTEXT)
    assert files.kind == built.kind == KIND_BRUTE and files.n_lists == 0
    assert {e.name for e in files.files} == {SEGMENT_META_FILE, VECTORS_FILE}
    reopened = Segment.open(tmp_path / "seg", SegmentFiles.from_dict(files.as_dict()), key=KEY,
                            context=CONTEXT, metric=metric)
    exclude = np.random.default_rng(4).random(len(rows)) < 0.4
    for query in queries[:4]:  # dead rows include each query's best ones
        exclude[oracle(metric, rows, query, 3)[0]] = True
    for segment in (built, reopened):
        for k in (1, 10, 50):
            assert_matches_oracle(segment, metric, rows, queries, k, None)
            assert_matches_oracle(segment, metric, rows, queries, k, exclude)


def test_brute_segment_pads_when_fewer_rows_than_k(tmp_path: Path) -> None:
    rows, queries = clustered(6, 2, 4, 2, seed=8, unit=False)
    _files, segment = build_and_open_segment(tmp_path / "tiny", rows, metric="euclidean",
                                             key=KEY, context=CONTEXT)
    assert_matches_oracle(segment, "euclidean", rows, queries, 10, None)
    exclude = np.array([True, False, True, True, False, True])
    assert_matches_oracle(segment, "euclidean", rows, queries, 10, exclude)
    got_rows, got_distances = segment.search(queries, 3, exclude=np.ones(6, dtype=bool))
    assert (got_rows == -1).all() and np.isinf(got_distances).all()


def test_segment_files_hold_no_plaintext_and_build_leaves_no_scratch(
        tmp_path: Path, scratch_log: list[tuple[Path, int]]) -> None:
    rows, _ = clustered(MIN_TREE_ROWS * 2, 1, 8, 8, seed=9, unit=False)
    files = build_segment(tmp_path / "seg", rows, metric="squared_euclidean", key=KEY,
                          context=CONTEXT, kind="tree_ah")
    assert files.kind == KIND_TREE_AH
    assert_scratch_gone(scratch_log)
    listed = sorted(p.name for p in (tmp_path / "seg").iterdir())
    assert listed == sorted(e.name for e in files.files)
    assert SCANN_DOCIDS_FILE not in listed
    needle = rows[1234].tobytes()
    for path in (tmp_path / "seg").iterdir():
        assert needle not in path.read_bytes(), path.name
        assert path.stat().st_size == next(e.size for e in files.files if e.name == path.name)


def test_without_dev_shm_the_scratch_goes_beside_the_segment_and_is_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scann_assets, "SHM_DIR", tmp_path / "no-shm-here")
    rows, queries = clustered(2 * MIN_TREE_ROWS, 5, 8, 8, seed=13, unit=True)
    parent = tmp_path / "segments"
    parent.mkdir()
    files = build_segment(parent / "seg", rows, metric="cosine", key=KEY, context=CONTEXT,
                          kind="tree_ah")
    segment = Segment.open(parent / "seg", files, key=KEY, context=CONTEXT, metric="cosine")
    assert segment.kind == KIND_TREE_AH
    assert sorted(p.name for p in parent.iterdir()) == ["seg"]
    truth = [oracle("cosine", rows, q, 5)[0] for q in queries]
    assert recall(segment.search(queries, 5, n_probes=segment.n_lists)[0], truth) >= 0.9


def test_build_refuses_bad_input(tmp_path: Path) -> None:
    rows, _ = clustered(50, 1, 4, 2, seed=1, unit=False)
    bad = rows.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InvalidVectorError):
        build_segment(tmp_path / "nan", bad, metric="euclidean", key=KEY, context=CONTEXT)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "leftover").write_text("x")
    with pytest.raises(InvalidArgumentError):
        build_segment(busy, rows, metric="euclidean", key=KEY, context=CONTEXT)
    with pytest.raises(InvalidArgumentError):
        build_segment(tmp_path / "t", rows, metric="euclidean", key=KEY, context=CONTEXT,
                      bogus_option=1)
    with pytest.raises(InvalidArgumentError):
        build_segment(tmp_path / "m", rows, metric="manhattan", key=KEY, context=CONTEXT)
    _files, segment = build_and_open_segment(tmp_path / "ok", rows, metric="euclidean",
                                             key=KEY, context=CONTEXT)
    rows[0] = 99.0  # the segment owns a copy
    assert not np.array_equal(segment.vectors[0], rows[0])
    with pytest.raises(DimensionMismatchError):
        segment.search(np.zeros((1, 5), np.float32), 3)
    with pytest.raises(InvalidArgumentError):
        segment.search(np.zeros((1, 4), np.float32), 0)
    with pytest.raises(InvalidArgumentError):
        segment.search(np.zeros((1, 4), np.float32), 3, exclude=np.zeros(3, bool))


def test_trained_segment_gathers_rows_from_only_the_chunks_holding_them(tmp_path: Path) -> None:
    """dim 24: a row is 96 bytes, so row 10922 straddles the first 1 MiB chunk boundary."""
    rows, _queries = clustered(15_000, 1, 24, 20, seed=3, unit=False)
    files, segment = build_and_open_segment(tmp_path / "seg", rows, metric="euclidean",
                                            key=KEY, context=CONTEXT, n_lists=40,
                                            kind=KIND_TREE_AH, leaves_to_search=10)
    assert segment.kind == KIND_TREE_AH and not segment.rows_resident
    rng = np.random.default_rng(4)
    for wanted in (np.array([10922]), np.array([0, 10921, 10922, 10923, 14999]),
                   np.sort(rng.choice(15_000, 700, replace=False)), np.arange(15_000),
                   np.array([], np.int64)):
        got = segment.gather(wanted)
        assert got.shape == (len(wanted), 24) and got.flags.c_contiguous
        np.testing.assert_array_equal(got, rows[wanted])
    assert segment.chunks_holding(np.array([10922])) == 2  # the straddling row needs both
    assert segment.chunks_holding(np.array([0, 5])) == 1
    assert segment.chunks_holding(np.arange(15_000)) == 2
    reads = []
    real = Segment.gather.__globals__["read_sealed_range"]
    Segment.gather.__globals__["read_sealed_range"] = lambda *a: reads.append(a[3:5]) or real(*a)
    try:
        np.testing.assert_array_equal(segment.gather(np.array([3, 7])), rows[[3, 7]])
    finally:
        Segment.gather.__globals__["read_sealed_range"] = real
    assert reads == [(0, 1 << 20)]  # one chunk read, not the whole file
    untrained = build_and_open_segment(tmp_path / "small", rows[:50], metric="euclidean",
                                       key=KEY, context=CONTEXT)[1]
    assert untrained.rows_resident and untrained.chunks_holding(np.arange(50)) == 0
    np.testing.assert_array_equal(untrained.gather(np.array([4, 2])), rows[[4, 2]])
    segment.close()
    with pytest.raises(ClosedError):
        segment.gather(np.array([1]))
