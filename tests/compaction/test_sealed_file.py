"""Byte-surgery tests of the sealed-file format: one test per way a file can be damaged."""
from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from lsmvec.compaction.sealed_file import (CHUNK_SIZE, HEADER_SIZE, MAGIC, TAG_SIZE, 
                                    read_sealed, sealed_size, write_sealed)
from lsmvec.wal.errors import CorruptionError, InvalidKeyError, StorageError

KEY = bytes(range(32))
CONTEXT = b"index-uuid|seg-000001|vectors.bin"


def _payload(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def _flip(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1,
                                  CHUNK_SIZE * 7 // 2])
def test_round_trip(tmp_path: Path, size: int) -> None:
    data = _payload(size, seed=size)
    path = tmp_path / "f.bin"
    info = write_sealed(path, data, KEY, CONTEXT)
    raw = path.read_bytes()
    assert info.size == len(raw) == sealed_size(size)
    assert info.sha256 == "" and bytes.fromhex(info.salt) == raw[16:32]  # pinned by its salt
    assert raw.startswith(MAGIC)
    got = read_sealed(path, KEY, CONTEXT, expected_size=info.size,
                      expected_salt=bytes.fromhex(info.salt))
    assert bytes(got) == data
    # a manifest of an older build pins the file by the SHA-256 of its sealed bytes
    got = read_sealed(path, KEY, CONTEXT, expected_sha256=hashlib.sha256(raw).hexdigest())
    assert bytes(got) == data


def test_numpy_array_is_sealed_in_place_and_read_back_without_reshaping(tmp_path: Path) -> None:
    rows = np.random.default_rng(1).normal(size=(1000, 24)).astype(np.float32)
    path = tmp_path / "rows.bin"
    write_sealed(path, rows, KEY, CONTEXT, chunk_size=4096)
    back = np.frombuffer(read_sealed(path, KEY, CONTEXT), dtype=np.float32).reshape(rows.shape)
    np.testing.assert_array_equal(back, rows)


def test_plaintext_never_reaches_the_disk_and_every_write_uses_a_fresh_salt(
        tmp_path: Path) -> None:
    data = b"secret vector bytes " * 1000
    write_sealed(tmp_path / "a", data, KEY, CONTEXT)
    write_sealed(tmp_path / "b", data, KEY, CONTEXT)
    a, b = (tmp_path / "a").read_bytes(), (tmp_path / "b").read_bytes()
    assert b"secret vector" not in a
    assert a[HEADER_SIZE:HEADER_SIZE + 64] != b[HEADER_SIZE:HEADER_SIZE + 64]


def _three_chunk_file(tmp_path: Path, chunk: int = 64) -> tuple[Path, bytes, int]:
    data = _payload(chunk * 3 - 10, seed=3)
    path = tmp_path / "three.bin"
    write_sealed(path, data, KEY, CONTEXT, chunk_size=chunk)
    return path, data, chunk


@pytest.mark.parametrize("where", ["magic", "version", "chunk_size", "salt", "length",
                                   "first_chunk", "first_tag", "middle_chunk", "last_chunk",
                                   "last_tag"])
def test_a_flipped_bit_anywhere_is_reported_with_the_path(tmp_path: Path, where: str) -> None:
    path, _data, chunk = _three_chunk_file(tmp_path)
    sealed_chunk = chunk + TAG_SIZE
    size = path.stat().st_size
    offsets = {
        "magic": 3, "version": 9, "chunk_size": 15, "salt": 20, "length": HEADER_SIZE - 1,
        "first_chunk": HEADER_SIZE + 5, "first_tag": HEADER_SIZE + chunk + 3,
        "middle_chunk": HEADER_SIZE + sealed_chunk + 7,
        "last_chunk": HEADER_SIZE + 2 * sealed_chunk + 1, "last_tag": size - 1,
    }
    _flip(path, offsets[where], bit=2)
    with pytest.raises(CorruptionError) as caught:
        read_sealed(path, KEY, CONTEXT)
    assert caught.value.path == str(path)
    assert str(path) in str(caught.value)
    if where in ("first_chunk", "first_tag"):
        assert caught.value.offset == HEADER_SIZE
    if where == "last_chunk":
        assert caught.value.offset == HEADER_SIZE + 2 * sealed_chunk


def test_the_header_of_an_empty_file_is_authenticated(tmp_path: Path) -> None:
    path = tmp_path / "empty.bin"
    write_sealed(path, b"", KEY, CONTEXT)
    assert bytes(read_sealed(path, KEY, CONTEXT)) == b""
    _flip(path, 25)  # inside the salt
    with pytest.raises(CorruptionError):
        read_sealed(path, KEY, CONTEXT)


def test_truncation_at_a_chunk_boundary_is_detected(tmp_path: Path) -> None:
    path, _data, chunk = _three_chunk_file(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:HEADER_SIZE + 2 * (chunk + TAG_SIZE)])
    with pytest.raises(CorruptionError) as caught:
        read_sealed(path, KEY, CONTEXT)
    assert caught.value.path == str(path)


def test_truncation_with_a_rewritten_length_still_fails(tmp_path: Path) -> None:
    """An attacker cuts the last chunk and fixes the header's length to match: every chunk's
    associated data covers the header and the last-chunk flag, so this still fails."""
    path, _data, chunk = _three_chunk_file(tmp_path)
    raw = bytearray(path.read_bytes())
    truncated = raw[:HEADER_SIZE + 2 * (chunk + TAG_SIZE)]
    truncated[HEADER_SIZE - 8:HEADER_SIZE] = struct.pack(">Q", 2 * chunk)
    path.write_bytes(bytes(truncated))
    with pytest.raises(CorruptionError) as caught:
        read_sealed(path, KEY, CONTEXT)
    assert caught.value.offset == HEADER_SIZE


def test_appended_bytes_are_detected(tmp_path: Path) -> None:
    path, _data, _chunk = _three_chunk_file(tmp_path)
    with open(path, "ab") as f:
        f.write(b"\0" * 80)
    with pytest.raises(CorruptionError):
        read_sealed(path, KEY, CONTEXT)


def test_reordered_chunks_are_detected(tmp_path: Path) -> None:
    chunk = 64
    data = _payload(chunk * 3, seed=4)  # three full chunks: swappable byte ranges
    path = tmp_path / "swap.bin"
    write_sealed(path, data, KEY, CONTEXT, chunk_size=chunk)
    raw = bytearray(path.read_bytes())
    first = slice(HEADER_SIZE, HEADER_SIZE + chunk + TAG_SIZE)
    second = slice(first.stop, first.stop + chunk + TAG_SIZE)
    raw[first], raw[second] = raw[second], raw[first]
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptionError):
        read_sealed(path, KEY, CONTEXT)


def test_a_file_moved_to_another_place_or_index_fails(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    write_sealed(a, b"rows of segment one", KEY, b"uuid-1|seg-1|vectors.bin")
    write_sealed(b, b"rows of segment two", KEY, b"uuid-1|seg-2|vectors.bin")
    # Swap the two files' contents: each now sits under the other's context.
    raw_a, raw_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(raw_b)
    b.write_bytes(raw_a)
    for path, context in ((a, b"uuid-1|seg-1|vectors.bin"), (b, b"uuid-1|seg-2|vectors.bin")):
        with pytest.raises(CorruptionError) as caught:
            read_sealed(path, KEY, context)
        assert caught.value.path == str(path)
    # The same segment id in another index, and a wrong key, fail too.
    with pytest.raises(CorruptionError):
        read_sealed(b, KEY, b"uuid-2|seg-1|vectors.bin")
    with pytest.raises(CorruptionError):
        read_sealed(b, bytes(32), b"uuid-1|seg-1|vectors.bin")
    assert bytes(read_sealed(b, KEY, b"uuid-1|seg-1|vectors.bin")) == b"rows of segment one"


def test_context_boundaries_are_unambiguous(tmp_path: Path) -> None:
    """A context is length-prefixed, so moving bytes between context and header is caught."""
    path = tmp_path / "c.bin"
    write_sealed(path, b"x", KEY, b"ab")
    with pytest.raises(CorruptionError):
        read_sealed(path, KEY, b"abL")
    with pytest.raises(CorruptionError):
        read_sealed(path, KEY, b"a")


def test_expected_size_and_sha256_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "s.bin"
    info = write_sealed(path, b"payload", KEY, CONTEXT)
    with pytest.raises(CorruptionError, match="expected"):
        read_sealed(path, KEY, CONTEXT, expected_size=info.size + 1)
    with pytest.raises(CorruptionError, match="SHA-256"):
        read_sealed(path, KEY, CONTEXT, expected_sha256="0" * 64)


def test_bad_magic_garbage_and_missing_files_are_corruption(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"NOTSEALED" + bytes(100))
    with pytest.raises(CorruptionError, match="magic") as caught:
        read_sealed(garbage, KEY, CONTEXT)
    assert caught.value.offset == 0
    short = tmp_path / "short.bin"
    short.write_bytes(MAGIC)
    with pytest.raises(CorruptionError, match="truncated"):
        read_sealed(short, KEY, CONTEXT)
    with pytest.raises(CorruptionError, match="missing"):
        read_sealed(tmp_path / "absent.bin", KEY, CONTEXT)


def test_a_huge_claimed_length_is_refused_before_allocating(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    write_sealed(path, b"abc", KEY, CONTEXT)
    raw = bytearray(path.read_bytes())
    raw[HEADER_SIZE - 8:HEADER_SIZE] = struct.pack(">Q", 1 << 60)
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptionError, match="header describes"):
        read_sealed(path, KEY, CONTEXT)


def test_writer_never_overwrites_and_checks_its_arguments(tmp_path: Path) -> None:
    path = tmp_path / "once.bin"
    write_sealed(path, b"first", KEY, CONTEXT)
    before = path.read_bytes()
    with pytest.raises(StorageError):
        write_sealed(path, b"second", KEY, CONTEXT)
    assert path.read_bytes() == before
    with pytest.raises(InvalidKeyError):
        write_sealed(tmp_path / "k.bin", b"x", b"short", CONTEXT)
    with pytest.raises(InvalidKeyError):
        read_sealed(path, b"short", CONTEXT)
    with pytest.raises(ValueError):
        write_sealed(tmp_path / "c.bin", b"x", KEY, CONTEXT, chunk_size=CHUNK_SIZE + 1)
    assert not (tmp_path / "k.bin").exists() and not (tmp_path / "c.bin").exists()


def test_sealed_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "mode.bin"
    write_sealed(path, b"x", KEY, CONTEXT)
    assert os.stat(path).st_mode & 0o077 == 0


# -- reading into a caller's buffer (a memory file's mapping, an uninitialised array) ---------

from lsmvec.compaction.sealed_file import read_sealed_into, sealed_plaintext_size  # noqa: E402

SMALL_CHUNK = 512


@pytest.mark.parametrize("chunks, tail", [(1, 0), (1, 7), (17, 0), (40, 7)])
def test_read_into_a_buffer_equals_read_sealed(tmp_path: Path, chunks: int, tail: int) -> None:
    size = (chunks - 1) * SMALL_CHUNK + (tail or SMALL_CHUNK)
    data = _payload(size, seed=chunks + tail)
    path = tmp_path / "f.bin"
    info = write_sealed(path, data, KEY, CONTEXT, chunk_size=SMALL_CHUNK)
    assert sealed_plaintext_size(path, info.size) == size
    out = np.empty(size, np.uint8)
    read_sealed_into(path, KEY, CONTEXT, out, expected_size=info.size,
                     expected_sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    assert out.tobytes() == data == bytes(read_sealed(path, KEY, CONTEXT))


def test_reading_into_a_buffer_checks_everything_read_sealed_checks(tmp_path: Path) -> None:
    chunks = 40
    data = _payload(chunks * SMALL_CHUNK, seed=5)
    path = tmp_path / "f.bin"
    info = write_sealed(path, data, KEY, CONTEXT, chunk_size=SMALL_CHUNK)
    with pytest.raises(CorruptionError, match="expected"):  # a buffer of another size
        read_sealed_into(path, KEY, CONTEXT, np.empty(len(data) + 1, np.uint8))
    with pytest.raises(CorruptionError, match="SHA-256"):
        read_sealed_into(path, KEY, CONTEXT, np.empty(len(data), np.uint8),
                         expected_sha256="0" * 64)
    bad = 33
    offset = HEADER_SIZE + bad * (SMALL_CHUNK + TAG_SIZE)
    _flip(path, offset + 10)
    out = np.zeros(len(data), np.uint8)
    with pytest.raises(CorruptionError, match=f"chunk {bad} failed") as caught:
        read_sealed_into(path, KEY, CONTEXT, out, expected_size=info.size)
    assert caught.value.offset == offset
    assert not out[bad * SMALL_CHUNK:].any()  # nothing of the damaged chunk (or later) lands
    with pytest.raises(CorruptionError, match="expected"):
        sealed_plaintext_size(path, info.size + 1)
    with pytest.raises(CorruptionError, match="missing"):
        sealed_plaintext_size(tmp_path / "absent.bin")
