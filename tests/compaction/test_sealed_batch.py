"""Several sealed files read at once on several threads (sealed_batch): the same bytes and the
same errors as ``read_sealed_into`` one file after the other, every chunk and every checksum
checked exactly once, nothing left open, and a segment load hands every file to it at once."""
from __future__ import annotations

import hashlib

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lsmvec.compaction import scann_assets
from lsmvec.compaction.filenames import SCANN_DATASET_FILE, VECTORS_FILE
from lsmvec.compaction.sealed_batch import MemoryFileRange, SealedRead, read_sealed_files
from lsmvec.compaction.sealed_file import (CHUNK_SIZE, HEADER_SIZE, TAG_SIZE, SealedReader,
                                           read_sealed, read_sealed_into, write_sealed)
from lsmvec.compaction.segment import Segment, build_segment
from lsmvec.wal.errors import CorruptionError

KEY = bytes(range(32))
SIZES = [0, 1, CHUNK_SIZE, 3 * CHUNK_SIZE + 7, 40 * CHUNK_SIZE + 5]  # 40 chunks: 3 ranges



def _sha256(path) -> str:
    """How a manifest of an older build pins a sealed file: the SHA-256 of its bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()

def _payload(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def _files(tmp_path: Path) -> list[tuple[Path, bytes, bytes, Any]]:
    out = []
    for number, size in enumerate(SIZES):
        path, context = tmp_path / f"f{number}", f"ctx-{number}".encode()
        plain = _payload(size, number)
        info = write_sealed(path, plain, KEY, context)
        out.append((path, context, plain, info._replace(sha256=_sha256(path))))
    return out


def _requests(files: list) -> list[SealedRead]:
    return [SealedRead(path, KEY, context, bytearray(len(plain)), info.size, info.sha256)
            for path, context, plain, info in files]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_every_file_reads_back_with_each_chunk_and_checksum_checked_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    files = _files(tmp_path)
    decrypted: list[tuple[str, int, int]] = []
    hashed: list[str] = []
    real_decrypt, real_hash = SealedReader.decrypt, SealedReader.hash_all
    monkeypatch.setattr(SealedReader, "decrypt", lambda self, first, last, digest=None: (
        decrypted.append((Path(self.path).name, first, last)),
        real_decrypt(self, first, last, digest)))
    monkeypatch.setattr(SealedReader, "hash_all", lambda self: (
        hashed.append(Path(self.path).name), real_hash(self)))
    before = _open_fds()
    requests = _requests(files)
    read_sealed_files(requests, threads)
    assert _open_fds() == before
    for request, (_path, _context, plain, _info) in zip(requests, files):
        assert bytes(request.out) == plain
    # one thread: one pass per file (read, hash, decrypt), as read_sealed_into
    assert sorted(hashed) == ([] if threads == 1 else [f"f{n}" for n in range(len(SIZES))])
    for number, size in enumerate(SIZES):
        chunks = sorted((first, last) for name, first, last in decrypted if name == f"f{number}")
        covered = [c for first, last in chunks for c in range(first, last)]
        assert covered == list(range(max(1, -(-size // CHUNK_SIZE))))  # each chunk once


@pytest.mark.parametrize("threads", [1, 3])
def test_a_numpy_array_and_a_range_of_a_memory_file_are_filled(tmp_path: Path,
                                                               threads: int) -> None:
    rows = np.random.default_rng(1).standard_normal((9000, 64), dtype=np.float32)  # 2.3 MB
    info = write_sealed(tmp_path / "rows", rows, KEY, b"rows")
    out = np.empty_like(rows)
    read_sealed_into(tmp_path / "rows", KEY, b"rows", out, expected_size=info.size,
                     expected_sha256=_sha256(tmp_path / "rows"), threads=threads)
    np.testing.assert_array_equal(out, rows)
    fd = os.memfd_create("test-rows")
    try:
        os.ftruncate(fd, 10 + rows.nbytes + 3)
        os.pwrite(fd, b"head", 0)
        read_sealed_files([SealedRead(tmp_path / "rows", KEY, b"rows",
                                      MemoryFileRange(fd, 10, rows.nbytes), info.size,
                                      _sha256(tmp_path / "rows"))], threads)
        assert os.pread(fd, 4, 0) == b"head"
        assert os.pread(fd, rows.nbytes + 10, 10) == rows.tobytes() + bytes(3)
        with pytest.raises(CorruptionError, match="holds"):
            read_sealed_files([SealedRead(tmp_path / "rows", KEY, b"rows",
                                          MemoryFileRange(fd, 0, rows.nbytes + 1))], threads)
    finally:
        os.close(fd)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_the_first_damaged_chunk_of_the_first_bad_file_is_reported(tmp_path: Path,
                                                                    threads: int) -> None:
    files = _files(tmp_path)
    big, other = files[4][0], files[3][0]
    for path, chunk in ((big, 35), (big, 20), (other, 2)):  # two ranges of f4, and f3
        offset = HEADER_SIZE + chunk * (CHUNK_SIZE + TAG_SIZE) + 9
        with open(path, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)[0]
            f.seek(offset)
            f.write(bytes([byte ^ 4]))
    before = _open_fds()
    with pytest.raises(CorruptionError, match="chunk 2 failed") as caught:
        read_sealed_files(_requests(files), threads)
    assert caught.value.path == str(other)
    assert caught.value.offset == HEADER_SIZE + 2 * (CHUNK_SIZE + TAG_SIZE)
    with pytest.raises(CorruptionError, match="chunk 20 failed") as caught:
        read_sealed_files(_requests(files[4:]), threads)
    assert caught.value.offset == HEADER_SIZE + 20 * (CHUNK_SIZE + TAG_SIZE)
    assert _open_fds() == before


@pytest.mark.parametrize("threads", [1, 3])
def test_checksum_size_and_length_mismatches_are_corruption(tmp_path: Path,
                                                            threads: int) -> None:
    files = _files(tmp_path)
    before = _open_fds()
    requests = _requests(files)
    requests[4] = requests[4]._replace(expected_sha256="0" * 64)
    with pytest.raises(CorruptionError, match="recorded SHA-256") as caught:
        read_sealed_files(requests, threads)
    assert caught.value.path == str(files[4][0])
    requests = _requests(files)
    requests[2] = requests[2]._replace(expected_size=requests[2].expected_size + 1)
    with pytest.raises(CorruptionError, match="expected"):
        read_sealed_files(requests, threads)
    requests = _requests(files)
    requests[3] = requests[3]._replace(out=bytearray(len(requests[3].out) - 1))
    with pytest.raises(CorruptionError, match="holds"):
        read_sealed_files(requests, threads)
    requests = _requests(files)
    requests[1] = requests[1]._replace(context=b"elsewhere")
    with pytest.raises(CorruptionError, match="chunk 0 failed"):
        read_sealed_files(requests, threads)
    os.remove(files[0][0])
    with pytest.raises(CorruptionError, match="missing"):
        read_sealed_files(_requests(files), threads)
    assert _open_fds() == before


def test_a_chunk_failure_outranks_a_checksum_mismatch(tmp_path: Path) -> None:
    files = _files(tmp_path)[4:]
    path = files[0][0]
    with open(path, "r+b") as f:  # a damaged byte changes the SHA-256 too
        f.seek(HEADER_SIZE + 39 * (CHUNK_SIZE + TAG_SIZE) + 1)
        f.write(b"\xff\x00")
    with pytest.raises(CorruptionError, match="chunk 39 failed"):
        read_sealed_files(_requests(files), 2)


def test_a_segment_load_checks_every_file_at_once_before_scann_loads(tmp_path: Path,
                                                                     monkeypatch) -> None:
    """One call with every sealed file ScaNN will read, all of it before ScaNN's loader runs:
    on two threads when the machine has two cores and every file is pinned by its salt (no
    checksum pass), else one."""
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((20, 16), dtype=np.float32) * 4
    rows = (centres[rng.integers(0, 20, 4000)]
            + rng.standard_normal((4000, 16), dtype=np.float32)).astype(np.float32)
    files = build_segment(tmp_path / "seg", rows, metric="euclidean", key=KEY, context=b"c",
                          kind="tree_ah")
    events: list[Any] = []
    real_files = scann_assets.read_sealed_files
    real_load = scann_assets.scann_ops_pybind.load_searcher
    monkeypatch.setattr(scann_assets, "read_sealed_files", lambda requests, threads: (
        events.append((sorted(Path(r.path).name for r in requests), threads)),
        real_files(requests, threads))[1])
    monkeypatch.setattr(scann_assets.scann_ops_pybind, "load_searcher",
                        lambda folder: (events.append("load"), real_load(folder))[1])
    segment = Segment.open(tmp_path / "seg", files, key=KEY, context=b"c", metric="euclidean")
    names, threads = events[0]
    assert threads == min(2, len(os.sched_getaffinity(0))) and events[1:] == ["load"]
    expected = {e.name for e in files.files} - {"segment.json", "scann_assets.pbtxt",
                                                 SCANN_DATASET_FILE}
    assert set(names) == expected and VECTORS_FILE in names
    np.testing.assert_array_equal(segment.vectors, rows)
    assert segment.search(rows[:5], 1)[0][:, 0].tolist() == [0, 1, 2, 3, 4]
    assert read_sealed(tmp_path / "seg" / VECTORS_FILE, KEY,
                       scann_assets.file_context(b"c", VECTORS_FILE)) == rows.tobytes()


def _trained(tmp_path: Path) -> tuple[np.ndarray, Any]:
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((20, 16), dtype=np.float32) * 4
    rows = (centres[rng.integers(0, 20, 3000)]
            + rng.standard_normal((3000, 16), dtype=np.float32)).astype(np.float32)
    return rows, build_segment(tmp_path / "seg", rows, metric="euclidean", key=KEY,
                               context=b"c", kind="tree_ah")


def test_a_damaged_rows_chunk_stops_the_open_before_the_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows, files = _trained(tmp_path)
    loads: list[str] = []
    monkeypatch.setattr(scann_assets.scann_ops_pybind, "load_searcher",
                        lambda folder: loads.append(folder))
    with open(tmp_path / "seg" / VECTORS_FILE, "r+b") as f:
        f.seek(HEADER_SIZE + 7)
        f.write(b"\xff")
    before = _open_fds()
    with pytest.raises(CorruptionError, match="chunk 0 failed"):
        Segment.open(tmp_path / "seg", files, key=KEY, context=b"c", metric="euclidean")
    assert loads == [] and _open_fds() == before


@pytest.mark.parametrize("manifest", ["with salts", "before salts"])
def test_an_authentic_stale_rows_file_is_refused_before_the_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manifest: str) -> None:
    """vectors.bin re-sealed under its own key and context (what a crashed build of a reused
    segment id leaves: every chunk authenticates): only the manifest's record of the file tells
    it apart -- its salt, or for a manifest from before salts its SHA-256 -- and it is checked
    before ScaNN reads a byte."""
    import dataclasses
    rows, files = _trained(tmp_path)
    if manifest == "before salts":
        files = dataclasses.replace(files, files=tuple(
            dataclasses.replace(e, salt="") for e in files.files))
    target = tmp_path / "seg" / VECTORS_FILE
    target.unlink()
    write_sealed(target, rows, KEY, scann_assets.file_context(b"c", VECTORS_FILE))
    loads: list[str] = []
    monkeypatch.setattr(scann_assets.scann_ops_pybind, "load_searcher",
                        lambda folder: loads.append(folder))
    with pytest.raises(CorruptionError, match="recorded SHA-256" if manifest == "before salts"
                       else "salt differs"):
        Segment.open(tmp_path / "seg", files, key=KEY, context=b"c", metric="euclidean")
    assert loads == []
