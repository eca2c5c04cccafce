"""Issue 17 (time to an ANN-fast index): how a trained segment is built and loaded.

Build: the budget's thread count reaches ScaNN; vectors.bin is sealed by a helper thread while
ScaNN trains; the calibration runs while the forked child serializes; a caller that waits gets
no huge-page collapse before the fork. Load: vectors.bin is decrypted straight into the memory
file ScaNN reads as ``dataset.npy``, wholly checked (AES-GCM, SHA-256) before ScaNN loads.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lsmvec.compaction.scann_assets as scann_assets
import lsmvec.compaction.scann_serialize as scann_serialize
import lsmvec.compaction.segment_build as segment_build
from lsmvec.compaction.compactor import BACKGROUND, BuildBudget
from lsmvec.compaction.filenames import SCANN_DATASET_FILE, VECTORS_FILE
from lsmvec.compaction.scann_params import KIND_BRUTE, KIND_TREE_AH, MIN_TREE_ROWS
from lsmvec.compaction.sealed_file import CHUNK_SIZE, HEADER_SIZE, TAG_SIZE, write_sealed
from lsmvec.compaction.segment import Segment, build_and_open_segment, build_segment
from lsmvec.wal.errors import CorruptionError, InvalidTypeError

pytestmark = pytest.mark.skipif(not scann_serialize.fork_usable(), reason="needs os.fork")

KEY = bytes(range(32))
CONTEXT = b"index-uuid-9|seg-000042"


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((16, dim)).astype(np.float32) * 4
    return (centres[rng.integers(0, 16, n)]
            + rng.standard_normal((n, dim)).astype(np.float32)).astype(np.float32)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, np.ndarray]:
    """A trained segment whose vectors.bin spans several 1 MiB chunks (and blocks)."""
    rows = clustered(24_000, 48, seed=3)  # 4.6 MB of rows
    folder = tmp_path_factory.mktemp("built") / "seg"
    files = build_segment(folder, rows, metric="euclidean", key=KEY, context=CONTEXT,
                          kind="tree_ah")
    assert files.kind == KIND_TREE_AH
    return folder, files, rows


# ----------------------------------------------------------------------------- build

def test_the_budget_reaches_scann_and_decides_the_collapse(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    collapses: list[int] = []
    real_train = segment_build.train_searcher
    real_collapse = scann_serialize._collapse_to_huge_pages
    monkeypatch.setattr(segment_build, "train_searcher",
                        lambda rows, params, n: threads.append(n) or real_train(rows, params, n))
    monkeypatch.setattr(scann_serialize, "_collapse_to_huge_pages",
                        lambda: collapses.append(1) or real_collapse())
    rows = clustered(2 * MIN_TREE_ROWS, 8, seed=1)
    build_segment(tmp_path / "a", rows, metric="euclidean", key=KEY, context=CONTEXT,
                  kind="tree_ah")  # the background budget by default
    assert threads == [1] and collapses == [1]
    build_segment(tmp_path / "b", rows, metric="euclidean", key=KEY, context=CONTEXT,
                  kind="tree_ah", budget=BuildBudget(training_threads=2, caller_waits=True))
    assert threads == [1, 2] and collapses == [1]  # a waiting caller: no collapse
    with pytest.raises(InvalidTypeError):
        build_segment(tmp_path / "c", rows, metric="euclidean", key=KEY, context=CONTEXT,
                      budget=2)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            BuildBudget(training_threads=bad)
    assert BACKGROUND == BuildBudget(1, False)


def test_vectors_are_sealed_by_a_helper_thread_while_scann_trains(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The helper writes vectors.bin while train_searcher runs: train_searcher waits (on a
    condition, bounded) until vectors.bin exists complete, which only a concurrent writer can
    make happen."""
    real_train = segment_build.train_searcher
    writers: list[str] = []
    real_write = segment_build.write_sealed

    def write(path: Path, *args: Any, **kwargs: Any) -> Any:
        writers.append(f"{Path(path).name}:{threading.current_thread().name}")
        return real_write(path, *args, **kwargs)

    seen: list[bool] = []

    def train(rows: np.ndarray, params: Any, n: int) -> Any:
        done = threading.Event()
        for _ in range(2000):  # up to ~20 s
            if (tmp_path / "seg" / VECTORS_FILE).exists() and any(
                    w.startswith(VECTORS_FILE) for w in writers):
                done.set()
                break
            done.wait(0.01)
        seen.append(done.is_set())
        return real_train(rows, params, n)

    monkeypatch.setattr(segment_build, "write_sealed", write)
    monkeypatch.setattr(segment_build, "train_searcher", train)
    rows = clustered(2 * MIN_TREE_ROWS, 8, seed=2)
    files, segment = build_and_open_segment(tmp_path / "seg", rows, metric="euclidean",
                                            key=KEY, context=CONTEXT, kind="tree_ah")
    assert seen == [True]
    assert f"{VECTORS_FILE}:lsmvec-seal-rows" in writers
    reopened = Segment.open(tmp_path / "seg", files, key=KEY, context=CONTEXT,
                            metric="euclidean")
    np.testing.assert_array_equal(segment.search(rows[:20], 5)[0], reopened.search(rows[:20], 5)[0])


def test_a_failing_training_waits_for_the_helper_before_raising(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def train(*_args: Any) -> Any:
        raise RuntimeError("training failed")

    monkeypatch.setattr(segment_build, "train_searcher", train)
    rows = clustered(2 * MIN_TREE_ROWS, 8, seed=4)
    with pytest.raises(RuntimeError, match="training failed"):
        build_segment(tmp_path / "seg", rows, metric="euclidean", key=KEY, context=CONTEXT,
                      kind="tree_ah")
    assert not [t for t in threading.enumerate() if t.name == "lsmvec-seal-rows"]
    assert sorted(os.listdir(tmp_path / "seg")) == [VECTORS_FILE]  # complete: the caller removes


def test_the_calibration_runs_while_the_child_serializes_and_can_cancel_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A calibration that cannot reach the target stores the segment exact: the child's assets
    are never sealed (the child is killed), and only rows + meta are in the folder."""
    from lsmvec.compaction.calibrate import Calibration
    pids: list[int] = []
    real_child = scann_serialize.fork_child

    def fork_child(work: Any) -> int:
        pid = real_child(work)
        pids.append(pid)
        return pid

    def calibrate(scann: Any, vectors: np.ndarray, params: Any, target: float) -> Calibration:
        assert pids, "the serialize child runs first"
        return Calibration(params, False, 0.0)

    monkeypatch.setattr(scann_serialize, "fork_child", fork_child)
    monkeypatch.setattr(segment_build, "calibrate", calibrate)
    rows = clustered(2 * MIN_TREE_ROWS, 8, seed=5)
    files = build_segment(tmp_path / "seg", rows, metric="euclidean", key=KEY, context=CONTEXT,
                          kind="tree_ah")
    assert files.kind == KIND_BRUTE
    assert sorted(e.name for e in files.files) == ["segment.json", VECTORS_FILE]
    assert sorted(os.listdir(tmp_path / "seg")) == ["segment.json", VECTORS_FILE]
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)  # killed and reaped


# ----------------------------------------------------------------------------- load

def _spy_loads(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """What ScaNN's loader finds in the scratch folder, for every load."""
    seen: list[dict[str, str]] = []
    real_load = scann_assets.scann_ops_pybind.load_searcher

    def load(scratch: str) -> Any:
        seen.append({e.name: os.readlink(e.path) if e.is_symlink() else "plain file"
                     for e in os.scandir(scratch)})
        return real_load(scratch)

    monkeypatch.setattr(scann_assets.scann_ops_pybind, "load_searcher", load)
    return seen


def test_the_rows_are_decrypted_straight_into_scanns_dataset_and_results_match(
        built: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """The open unseals vectors.bin into the memory file ScaNN reads as dataset.npy (an
    uninitialised mapping, no plaintext buffer of its own), and keeps no rows itself."""
    folder, files, rows = built
    reads: list[str] = []
    real_files = scann_assets.read_sealed_files
    monkeypatch.setattr(scann_assets, "read_sealed_files",
                        lambda requests, threads: reads.extend(Path(r.path).name
                                                               for r in requests) or
                        real_files(requests, threads))
    seen = _spy_loads(monkeypatch)
    segment = Segment.open(folder, files, key=KEY, context=CONTEXT, metric="euclidean")
    assert VECTORS_FILE in reads  # decrypted by the load, into ScaNN's dataset file
    assert seen[0][SCANN_DATASET_FILE].startswith(f"/proc/{os.getpid()}/fd/")
    assert "plain file" not in seen[0].values()
    assert segment._vectors is None  # ScaNN holds the rows; the segment reads them lazily
    np.testing.assert_array_equal(segment.vectors, rows)
    queries = rows[::997] + 0.01
    exact = ((queries[:, None, :] - rows[None]) ** 2).sum(-1).argsort(1)[:, :1]
    np.testing.assert_array_equal(segment.search(queries, 1)[0], exact)


@pytest.mark.parametrize("where", ["first", "last"])
def test_a_damaged_chunk_of_the_rows_is_corruption_before_scann_loads(
        built: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    import shutil
    folder, files, rows = built
    copy = tmp_path / "seg"
    shutil.copytree(folder, copy)
    path = copy / VECTORS_FILE
    chunks = -(-rows.nbytes // CHUNK_SIZE)
    bad = 0 if where == "first" else chunks - 1
    offset = HEADER_SIZE + bad * (CHUNK_SIZE + TAG_SIZE)
    data = bytearray(path.read_bytes())
    data[offset + 100] ^= 1
    path.write_bytes(bytes(data))
    seen = _spy_loads(monkeypatch)
    with pytest.raises(CorruptionError, match=f"chunk {bad} failed") as caught:
        Segment.open(copy, files, key=KEY, context=CONTEXT, metric="euclidean")
    assert caught.value.path == str(path) and caught.value.offset == offset
    assert seen == []  # ScaNN never loaded


@pytest.mark.parametrize("manifest", ["with salts", "before salts"])
def test_rows_of_another_build_are_refused_before_scann_loads(
        built: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manifest: str) -> None:
    """An authentic vectors.bin of the same segment (same size, another build) passes every
    chunk's authentication: the salt the manifest records refuses it (another build drew
    another salt), or, for a manifest written before salts were recorded, its SHA-256 --
    before ScaNN sees it."""
    import dataclasses
    import shutil
    folder, files, rows = built
    assert all(len(bytes.fromhex(e.salt)) == 16 for e in files.files)
    if manifest == "before salts":
        files = dataclasses.replace(files, files=tuple(
            dataclasses.replace(e, salt="") for e in files.files))
    copy = tmp_path / "seg"
    shutil.copytree(folder, copy)
    (copy / VECTORS_FILE).unlink()
    other = rows.copy()
    other[0] += 1.0
    write_sealed(copy / VECTORS_FILE, other, KEY,
                 scann_assets.file_context(CONTEXT, VECTORS_FILE))
    seen = _spy_loads(monkeypatch)
    with pytest.raises(CorruptionError, match="SHA-256" if manifest == "before salts"
                       else "salt differs"):
        Segment.open(copy, files, key=KEY, context=CONTEXT, metric="euclidean")
    assert seen == []
