"""Encryption at rest and tamper detection, checked from the outside: every byte of every file.

- No plaintext on disk: ids, contents, metadata (keys and values), the 16-byte head of any
  float32 vector, the key or its hex/base64 never appear in any file, whether the data sits in
  the log, a memtable's log records, brute segments, a trained (ScaNN) segment or LMDB; while
  the index is open and after close.
- Keys: a wrong key is refused with WrongKeyError, a 31/33-byte key with InvalidKeyError, a str
  with InvalidTypeError, and a refused load changes no file.
- Tampering: a flipped byte in a segment file, a damaged log record before the tail, a planted
  file in a segment folder, a segment folder copied from another index, and a segment file from
  a fork of the same index all raise CorruptionError naming the file; a damaged last record of
  an uncleanly closed log is a torn tail, dropped whole.
"""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lsmvec import Client, generate_key
from lsmvec.errors import CorruptionError, InvalidKeyError, InvalidTypeError, WrongKeyError

DIM = 8
N_TREE = 20_400
"""Enough rows (>= 20k) that train() builds a ScaNN tree + AH segment, whose assets must be
sealed too."""
ID_MARK = "secret-id-7f3a"
CONTENTS_MARK = "confidential-contents-b21c"
META_VALUE_MARK = "meta-value-9e4d"
META_KEY_MARK = "metakeysecret5a0f"

_WAL_HEADER = struct.Struct("<IIIBQ")  # magic | crc32c | length | kind | lsn (wal/format.py)


# ----------------------------------------------------------------------------- helpers

def item(i: int, vector: np.ndarray, tag: str = "") -> dict[str, Any]:
    return {"id": f"{ID_MARK}-{tag}{i}", "vector": vector,
            "contents": f"{CONTENTS_MARK}-{tag}{i}",
            "metadata": {META_KEY_MARK: f"{META_VALUE_MARK}-{tag}{i}", "n": i}}


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in all_files(root)}


def find_vector_heads(data: bytes, heads: set[bytes], first_words: np.ndarray) -> bytes | None:
    """A 16-byte vector head occurring anywhere in `data` (any alignment), or None. Candidates
    are found with numpy on the first 4 bytes, then confirmed byte for byte."""
    for shift in range(4):
        usable = (len(data) - shift) // 4 * 4
        if usable < 16:
            continue
        words = np.frombuffer(data, dtype="<u4", count=usable // 4, offset=shift)
        for pos in np.flatnonzero(np.isin(words, first_words)):
            start = shift + 4 * int(pos)
            if data[start:start + 16] in heads:
                return data[start:start + 16]
    return None


def assert_no_plaintext(root: Path, key: bytes, vectors: np.ndarray, where: str) -> None:
    heads = {np.ascontiguousarray(v, dtype="<f4")[:4].tobytes() for v in vectors}
    first_words = np.unique(np.frombuffer(b"".join(heads), dtype="<u4")[::4])
    needles = {
        "id": ID_MARK.encode(), "contents": CONTENTS_MARK.encode(),
        "metadata value": META_VALUE_MARK.encode(), "metadata key": META_KEY_MARK.encode(),
        "key": key, "key hex": key.hex().encode(), "key HEX": key.hex().upper().encode(),
        "key base64": base64.b64encode(key), "key urlsafe base64": base64.urlsafe_b64encode(key),
    }
    files = all_files(root)
    assert files, root
    for path in files:
        data = path.read_bytes()
        for what, needle in needles.items():
            assert needle not in data, f"{where}: {what} in plain text in {path}"
        head = find_vector_heads(data, heads, first_words)
        assert head is None, f"{where}: a float32 vector head {head.hex()} in {path}"


def wal_records(path: Path) -> list[tuple[int, int, int, int]]:
    """(offset, payload_offset, length, lsn) of each record of one log file."""
    data = path.read_bytes()
    out = []
    offset = 0
    while offset + _WAL_HEADER.size <= len(data):
        _magic, _crc, length, _kind, lsn = _WAL_HEADER.unpack_from(data, offset)
        out.append((offset, offset + _WAL_HEADER.size, length, lsn))
        offset += _WAL_HEADER.size + length
    assert offset == len(data), f"{path}: records do not tile the file"
    return out


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


def only_log(index_dir: Path) -> Path:
    logs = sorted((index_dir / "wal").glob("*.log"))
    assert logs, index_dir
    return logs[-1]


def segment_dirs(index_dir: Path) -> list[Path]:
    return sorted((index_dir / "segments").glob("seg-*"))


def load_refused(root: Path, name: str, key: bytes) -> CorruptionError:
    """load_index of a damaged index: the CorruptionError it must raise."""
    with Client(root) as client:
        with pytest.raises(CorruptionError) as info:
            client.load_index(name, key)
    return info.value


def small_index(root: Path, name: str, key: bytes, rows: int = 200, seed: int = 0,
                **options: Any) -> tuple[Client, Any, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((rows, DIM)).astype(np.float32)
    client = Client(root)
    index = client.create_index(name, key, dimension=DIM, background_compaction=False, **options)
    index.upsert([item(i, v) for i, v in enumerate(vectors)])
    return client, index, vectors


# ----------------------------------------------------------------------------- no plaintext

def test_nothing_readable_on_disk_open_or_closed(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    key = generate_key()
    written: list[np.ndarray] = []
    client = Client(tmp_path)
    try:
        index = client.create_index("enc", key, dimension=DIM, memtable_bytes=400_000,
                                    background_compaction=False)
        base = rng.standard_normal((N_TREE, DIM)).astype(np.float32)
        written.append(base)
        for start in range(0, N_TREE, 2000):
            index.upsert([item(i, base[i]) for i in range(start, min(start + 2000, N_TREE))])
        index.flush()
        index.compact()
        index.train()
        assert any(s["kind"] == "tree_ah" for s in index.stats()["segments"]), index.stats()
        # A brute segment beside the tree, then writes that stay in the log and the memtable.
        extra = rng.standard_normal((300, DIM)).astype(np.float32)
        written.append(extra)
        index.upsert([item(i, v, "x") for i, v in enumerate(extra[:200])])
        index.flush()
        index.upsert([item(i, v, "y") for i, v in enumerate(extra[200:])])
        index.delete([f"{ID_MARK}-{i}" for i in range(10)])
        stats = index.stats()
        assert stats["memtable_rows"] > 0 and stats["last_lsn"] > stats["checkpoint_lsn"], stats
        assert index.get([f"{ID_MARK}-y0"])[0]["contents"] == f"{CONTENTS_MARK}-y0".encode()
        assert_no_plaintext(tmp_path, key, np.concatenate(written), "index open")
    finally:
        client.close()
    assert_no_plaintext(tmp_path, key, np.concatenate(written), "after close")


def test_nothing_readable_under_cosine_either(tmp_path: Path) -> None:
    """Cosine stores unit vectors: neither the given nor the normalised form may leak."""
    key = generate_key()
    rng = np.random.default_rng(12)
    vectors = rng.standard_normal((500, DIM)).astype(np.float32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    client = Client(tmp_path)
    try:
        index = client.create_index("cos", key, dimension=DIM, metric="cosine",
                                    background_compaction=False)
        index.upsert([item(i, v) for i, v in enumerate(vectors[:400])])
        index.flush()
        index.upsert([item(i, v, "m") for i, v in enumerate(vectors[400:])])
        assert_no_plaintext(tmp_path, key, np.concatenate([vectors, unit]), "cosine, open")
    finally:
        client.close()
    assert_no_plaintext(tmp_path, key, np.concatenate([vectors, unit]), "cosine, closed")


TEXT_TERMS = ("zebrafishterm", "quokkaword")
"""Analysed terms of a full_text field (lower-cased: the stored text says "Zebrafishterm"):
the text index's vocabulary must be as unreadable on disk as the values it came from."""


def assert_no_text_terms(root: Path, where: str) -> None:
    for path in all_files(root):
        data = path.read_bytes()
        for term in TEXT_TERMS:
            for form in (term.encode(), term.encode("utf-16-le")):
                assert form not in data, f"{where}: text index term {term!r} in {path}"


def test_text_index_terms_are_not_readable_on_disk(tmp_path: Path) -> None:
    key = generate_key()
    rng = np.random.default_rng(13)
    vectors = rng.standard_normal((300, DIM)).astype(np.float32)

    def text_item(i: int, tag: str) -> dict[str, Any]:
        body = f"Zebrafishterm number {i} QUOKKAWORD" if i % 2 else f"Quokkaword {tag}"
        return {**item(i, vectors[i], tag), "metadata": {"body": body, "n": i}}

    client = Client(tmp_path)
    try:
        index = client.create_index("txt", key, dimension=DIM, text_fields=["body"],
                                    background_compaction=False)
        index.upsert([text_item(i, "a") for i in range(100)])
        index.flush()
        index.upsert([text_item(i, "b") for i in range(100, 200)])
        index.flush()
        index.compact()  # a merged text index
        index.upsert([text_item(i, "c") for i in range(200, 300)])
        index.flush()
        index.upsert([text_item(i, "d") for i in range(0, 300, 7)])  # memtable + log only
        # the terms are really indexed (so the scan below looks for something that exists)
        odd = [i for i in range(300) if i % 2] + [i for i in range(0, 300, 7) if i % 2]
        assert len(index.query(text="zebrafishterm", top_k=1000)) == len(odd)
        assert_no_text_terms(tmp_path, "text index, open")
        assert_no_plaintext(tmp_path, key, vectors, "text index, open")
    finally:
        client.close()
    assert_no_text_terms(tmp_path, "text index, closed")


# ----------------------------------------------------------------------------- keys

@pytest.mark.parametrize("bad_key, error", [
    ("wrong", WrongKeyError),
    (b"\x01" * 31, InvalidKeyError),
    (b"\x01" * 33, InvalidKeyError),
    (b"", InvalidKeyError),
    ("x" * 32, InvalidTypeError),
    (None, InvalidTypeError),
])
def test_bad_keys_are_refused_and_change_no_file(tmp_path: Path, bad_key: Any,
                                                 error: type[Exception]) -> None:
    key = generate_key()
    client, index, _ = small_index(tmp_path, "keys", key)
    index.flush()
    index.upsert([item(999, np.ones(DIM, np.float32), "log")])  # something in the log too
    client.close()
    if bad_key == "wrong":
        bad_key = generate_key()
    before = file_hashes(tmp_path)
    with Client(tmp_path) as client:
        with pytest.raises(error) as info:
            client.load_index("keys", bad_key)
        if isinstance(bad_key, bytes) and bad_key:
            assert bad_key.hex() not in str(info.value), "the error echoes the key"
        if error is not WrongKeyError:  # a malformed key cannot create an index either
            with pytest.raises(error):
                client.create_index("other", bad_key, dimension=DIM)
    assert file_hashes(tmp_path) == before, "a refused load changed files"
    with Client(tmp_path) as client:  # and the right key still opens everything
        index = client.load_index("keys", key)
        assert index.get_num_vectors() == 201


def test_wrong_key_refused_while_the_index_is_open(tmp_path: Path) -> None:
    key = generate_key()
    client, index, _ = small_index(tmp_path, "open", key)
    try:
        with pytest.raises(WrongKeyError):
            client.load_index("open", generate_key())
        with pytest.raises(WrongKeyError):
            index.query(np.ones(DIM, np.float32), top_k=1, index_key=generate_key())
        assert index.get_num_vectors() == 200
    finally:
        client.close()


# ----------------------------------------------------------------------------- tampering

def test_flipped_byte_in_a_segment_file_names_the_file(tmp_path: Path) -> None:
    key = generate_key()
    client, index, _ = small_index(tmp_path, "flip", key)
    index.flush()
    client.close()
    (seg,) = segment_dirs(tmp_path / "flip")
    target = seg / "vectors.bin"
    flip_byte(target, target.stat().st_size // 2)
    error = load_refused(tmp_path, "flip", key)
    assert error.path == str(target), error


def test_flipped_byte_in_a_trained_segment_asset_names_the_file(tmp_path: Path) -> None:
    key = generate_key()
    rng = np.random.default_rng(5)
    with Client(tmp_path) as client:
        index = client.create_index("tree", key, dimension=DIM, background_compaction=False)
        index.upsert(ids=[f"t{i}" for i in range(N_TREE)],
                     vectors=rng.standard_normal((N_TREE, DIM)).astype(np.float32))
        index.train()
        assert [s["kind"] for s in index.stats()["segments"]] == ["tree_ah"]
    (seg,) = segment_dirs(tmp_path / "tree")
    assets = sorted(p for p in seg.iterdir() if p.name not in ("vectors.bin", "segment.json"))
    assert assets, list(seg.iterdir())
    target = max(assets, key=lambda p: p.stat().st_size)
    flip_byte(target, target.stat().st_size // 2)
    error = load_refused(tmp_path, "tree", key)
    assert error.path == str(target), error


def _unclean_copy(tmp_path: Path, batches: int) -> tuple[Path, bytes, list[list[str]], Path]:
    """An index with `batches` upserts after its last flush, copied while still open (as a
    kill -9 would leave it: no CLOSE record, memtable unflushed). Returns (copy root, key,
    ids per batch, the copied log file)."""
    key = generate_key()
    client, index, _ = small_index(tmp_path / "live", "wal", key, rows=50)
    index.flush()
    rng = np.random.default_rng(3)
    per_batch = []
    for b in range(batches):
        ids = [f"b{b}-{j}" for j in range(5)]
        index.upsert(ids=ids, vectors=rng.standard_normal((5, DIM)).astype(np.float32))
        per_batch.append(ids)
    copy_root = tmp_path / "copy"
    shutil.copytree(tmp_path / "live", copy_root)
    client.close()
    return copy_root, key, per_batch, only_log(copy_root / "wal")


def test_damaged_earlier_log_record_is_corruption_naming_the_log(tmp_path: Path) -> None:
    copy_root, key, per_batch, log_file = _unclean_copy(tmp_path, batches=4)
    records = wal_records(log_file)
    _offset, payload_at, length, _lsn = records[-3]  # batch 2 of 4: intact records follow
    flip_byte(log_file, payload_at + length // 2)
    with Client(copy_root) as client:
        with pytest.raises(CorruptionError) as info:
            client.load_index("wal", key)
    assert info.value.path == str(log_file), info.value


def test_damaged_last_log_record_of_a_crash_is_a_torn_tail(tmp_path: Path) -> None:
    copy_root, key, per_batch, log_file = _unclean_copy(tmp_path, batches=4)
    _offset, payload_at, length, _lsn = wal_records(log_file)[-1]
    flip_byte(log_file, payload_at + length // 2)
    with Client(copy_root) as client:
        index = client.load_index("wal", key)
        live = set(index.list_ids())
        for ids in per_batch[:-1]:
            assert set(ids) <= live, ids
        assert not set(per_batch[-1]) & live, "a torn batch must vanish whole"
        assert index.get_num_vectors() == 50 + 5 * 3


def test_planted_docids_pickle_in_a_segment_is_refused_unloaded(tmp_path: Path) -> None:
    key = generate_key()
    rng = np.random.default_rng(6)
    with Client(tmp_path) as client:
        index = client.create_index("plant", key, dimension=DIM, background_compaction=False)
        index.upsert(ids=[f"p{i}" for i in range(N_TREE)],
                     vectors=rng.standard_normal((N_TREE, DIM)).astype(np.float32))
        index.train()
    (seg,) = segment_dirs(tmp_path / "plant")
    marker = tmp_path / "pickle-was-loaded"
    planted = seg / "scann_docids.pkl"
    # A protocol-0 pickle that runs `touch marker` if anything ever unpickles it.
    planted.write_bytes(b"cposix\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    error = load_refused(tmp_path, "plant", key)
    assert error.path == str(planted), error
    assert not marker.exists(), "the planted pickle was executed"


def test_any_extra_file_in_a_segment_folder_is_refused(tmp_path: Path) -> None:
    key = generate_key()
    client, index, _ = small_index(tmp_path, "extra", key)
    index.flush()
    client.close()
    (seg,) = segment_dirs(tmp_path / "extra")
    extra = seg / "notes.txt"
    extra.write_bytes(b"hello")
    error = load_refused(tmp_path, "extra", key)
    assert error.path == str(extra), error


def test_segment_folder_copied_from_another_index_is_refused(tmp_path: Path) -> None:
    """Same key, same segment id, same shape: only the binding to this index can tell."""
    key = generate_key()
    for name, seed in (("mine", 1), ("theirs", 2)):
        client, index, _ = small_index(tmp_path, name, key, seed=seed)
        index.flush()
        client.close()
    (mine,) = segment_dirs(tmp_path / "mine")
    (theirs,) = segment_dirs(tmp_path / "theirs")
    assert mine.name == theirs.name
    shutil.rmtree(mine)
    shutil.copytree(theirs, mine)
    error = load_refused(tmp_path, "mine", key)
    assert error.path is not None and error.path.startswith(str(mine)), error


def test_segment_file_from_a_fork_of_the_same_index_is_refused(tmp_path: Path) -> None:
    """A backup of the index taken earlier, then written differently: its seg-N/vectors.bin
    is sealed under the same key, index and segment id, so it authenticates; the manifest's
    size and SHA-256 must still refuse it (a restored older file, or a rollback)."""
    key = generate_key()
    client, index, _ = small_index(tmp_path / "a", "fork", key, rows=100)
    index.flush()
    client.close()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    rng = np.random.default_rng(9)
    for root in ("a", "b"):
        with Client(tmp_path / root) as client:
            index = client.load_index("fork", key)
            index.upsert(ids=[f"f{i}" for i in range(100)],
                         vectors=rng.standard_normal((100, DIM)).astype(np.float32))
            index.flush()
    seg_a = segment_dirs(tmp_path / "a" / "fork")[-1]
    seg_b = segment_dirs(tmp_path / "b" / "fork")[-1]
    assert seg_a.name == seg_b.name
    target = seg_a / "vectors.bin"
    assert target.stat().st_size == (seg_b / "vectors.bin").stat().st_size
    shutil.copyfile(seg_b / "vectors.bin", target)
    with Client(tmp_path / "a") as client:
        with pytest.raises(CorruptionError) as info:
            client.load_index("fork", key)
    assert info.value.path == str(target), info.value


def test_segment_file_moved_between_segments_is_refused(tmp_path: Path) -> None:
    """Two segments of equal shape in one index: swapping their vectors.bin keeps every size."""
    key = generate_key()
    client, index, vectors = small_index(tmp_path, "swap", key, rows=100)
    index.flush()
    index.upsert([item(i, v, "s") for i, v in enumerate(vectors)])
    index.flush()
    client.close()
    first, second = segment_dirs(tmp_path / "swap")
    a, b = first / "vectors.bin", second / "vectors.bin"
    assert a.stat().st_size == b.stat().st_size
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    error = load_refused(tmp_path, "swap", key)
    assert error.path in (str(a), str(b)), error


def test_rolled_back_store_is_refused_without_deleting_newer_segments(tmp_path: Path) -> None:
    """Restoring an older store/ (an older manifest) must be reported, and the failed open must
    not delete the newer segments the old manifest does not know (they hold the real data)."""
    key = generate_key()
    client, index, vectors = small_index(tmp_path, "roll", key, rows=100)
    index.flush()
    client.close()
    old_store = tmp_path / "old-store"
    shutil.copytree(tmp_path / "roll" / "store", old_store)
    with Client(tmp_path) as client:
        index = client.load_index("roll", key)
        index.upsert([item(i, v, "r") for i, v in enumerate(vectors)])
        index.flush()
        index.train()  # merges: the segment the old manifest names is gone
    shutil.rmtree(tmp_path / "roll" / "store")
    shutil.copytree(old_store, tmp_path / "roll" / "store")
    shutil.rmtree(old_store)
    before = file_hashes(tmp_path / "roll" / "segments")
    with Client(tmp_path) as client:
        with pytest.raises(CorruptionError):
            client.load_index("roll", key)
    assert file_hashes(tmp_path / "roll" / "segments") == before, \
        "a refused open deleted segment files"


@pytest.mark.parametrize("sizes", [(0,), (60, 15360, 40), (65536,), (65537,), (100, 3 << 20, 7)])
def test_seal_parts_seals_the_joined_parts_small_or_streamed(sizes: tuple[int, ...]) -> None:
    """Small records take the one-shot path, big ones the streaming one: both open to the
    joined plaintext, bound to their associated data, with a fresh nonce each time."""
    from lsmvec.disk.crypto import Aead
    rng = np.random.default_rng(sum(sizes))
    parts = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    joined = b"".join(p.tobytes() for p in parts)
    aead = Aead(os.urandom(32), "test")
    sealed = aead.seal_parts(parts, b"here")
    assert aead.open(sealed, b"here") == joined
    assert aead.seal_parts(parts, b"here") != sealed
    with pytest.raises(CorruptionError):
        aead.open(sealed, b"elsewhere")
