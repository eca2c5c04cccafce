"""Disk use stays bounded under overwrite churn (reliability.md guarantee 5; Chroma's unbounded
WAL and Lance's orphaned files are the failures this guards against).

The same 10k items (dim 32) are re-upserted 100 times. Disk use is measured independently of
the engine (walk the index folder, sum file sizes) and compared with what a fresh index holding
just those 10k items occupies after close, measured the same way.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lsmvec.compaction.filenames import parse_segment_dir_name
from lsmvec import Client, generate_key
from lsmvec.tools._report import folder_breakdown as breakdown, folder_bytes

N = 10_000
DIM = 32
BATCH = 1000
ROUNDS = 100
COMPACT_EVERY = 2
"""Rounds between explicit compact() calls: the memtable then never holds more than two rounds
of writes, so everything on disk beyond ~2x the live data is garbage the engine failed to drop."""
MAX_RATIO = 3.0
WAL_AFTER_FLUSH_MAX = 64 << 10
"""After a flush every log record is in a segment: what remains of the log must be tiny
(a CLOSE record, an empty active file), not proportional to what was ever written."""


def assert_no_orphan_segments(index_dir: Path, stats: dict) -> None:
    named = {s["id"] for s in stats["segments"]}
    on_disk = sorted(p.name for p in (index_dir / "segments").iterdir())
    ids = [parse_segment_dir_name(name) for name in on_disk]
    assert None not in ids, f"non-segment entries under segments/: {on_disk}"
    assert set(ids) == named, f"segment folders {on_disk} vs manifest {sorted(named)}"


@pytest.mark.slow
def test_disk_use_stays_bounded_under_overwrite_churn(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = [f"item-{i:05d}" for i in range(N)]
    key = generate_key()

    with Client(tmp_path) as client:
        fresh = client.create_index("fresh", key, dimension=DIM)
        fresh.upsert(ids=ids, vectors=rng.standard_normal((N, DIM)).astype(np.float32))
    live_bytes = folder_bytes(tmp_path / "fresh")
    assert live_bytes >= N * DIM * 4, live_bytes  # the vectors are really in there

    index_dir = tmp_path / "churn"
    client = Client(tmp_path)
    try:
        index = client.create_index("churn", key, dimension=DIM)
        measured: list[tuple[int, float, dict]] = []
        for round_no in range(1, ROUNDS + 1):
            for start in range(0, N, BATCH):
                index.upsert(ids=ids[start:start + BATCH],
                             vectors=rng.standard_normal((BATCH, DIM)).astype(np.float32))
            if round_no % COMPACT_EVERY == 0:
                index.compact()
                stats = index.stats()
                used = folder_bytes(index_dir)
                measured.append((round_no, used / live_bytes, breakdown(index_dir)))
                assert used < MAX_RATIO * live_bytes, (
                    f"round {round_no}: {used} bytes on disk = {used / live_bytes:.1f}x the "
                    f"{live_bytes} of a fresh index; by folder {breakdown(index_dir)}")
                wal_on_disk = folder_bytes(index_dir / "wal")
                assert stats["wal_bytes"] <= WAL_AFTER_FLUSH_MAX, (
                    f"round {round_no}: log holds {stats['wal_bytes']} bytes after a flush "
                    f"({stats['wal_files']} files; {wal_on_disk} measured)")
                assert wal_on_disk <= WAL_AFTER_FLUSH_MAX, (round_no, wal_on_disk)
                assert stats["checkpoint_lsn"] == stats["last_lsn"], stats
                assert stats["vectors"] == N, stats
        assert index.get_num_vectors() == N
    finally:
        client.close()

    assert folder_bytes(index_dir) < MAX_RATIO * live_bytes, breakdown(index_dir)
    with Client(tmp_path) as client:
        index = client.load_index("churn", key)
        stats = index.stats()
        assert_no_orphan_segments(index_dir, stats)
        assert not [p.name for p in index_dir.iterdir()
                    if p.name not in {"CONFIG", "LOCK", "wal", "segments", "store"}]
        assert index.get_num_vectors() == N
        assert sorted(index.list_ids()) == ids
        assert folder_bytes(index_dir) < MAX_RATIO * live_bytes, breakdown(index_dir)


def test_no_orphan_segment_folders_after_reopen(tmp_path: Path) -> None:
    """Segments replaced by merges are removed; a crash-style leftover (an unnamed seg- folder
    and a tmp-seg- build folder) is collected on open."""
    rng = np.random.default_rng(1)
    key = generate_key()
    ids = [f"o{i}" for i in range(400)]
    with Client(tmp_path) as client:
        index = client.create_index("orph", key, dimension=8, memtable_bytes=5_000,
                                    background_compaction=False)
        for _ in range(6):
            index.upsert(ids=ids, vectors=rng.standard_normal((400, 8)).astype(np.float32))
            index.flush()
        index.compact()
        stats = index.stats()
        assert_no_orphan_segments(tmp_path / "orph", stats)
    seg_root = tmp_path / "orph" / "segments"
    leftovers = [seg_root / "seg-999999", seg_root / "tmp-seg-000777-0123456789abcdef"]
    for folder in leftovers:
        folder.mkdir()
        (folder / "vectors.bin").write_bytes(b"\0" * 100)
    with Client(tmp_path) as client:
        index = client.load_index("orph", key)
        assert_no_orphan_segments(tmp_path / "orph", index.stats())
        assert not any(folder.exists() for folder in leftovers)
        assert index.get_num_vectors() == 400


def test_open_write_close_cycles_leave_few_segments(tmp_path: Path) -> None:
    """Each clean close flushes; before, nothing merged those one-batch segments in a process
    too short-lived for the background merger (474 segments after 500 cycles). Now close merges
    tier-0 segments: 60 cycles of one small batch leave fewer than MERGE_WIDTH of them, and the
    state is exactly what was written."""
    from lsmvec.compaction.policy import BASE_ROWS, MERGE_WIDTH
    key = generate_key()
    rng = np.random.default_rng(3)
    oracle: dict[str, np.ndarray] = {}
    with Client(tmp_path) as client:
        client.create_index("cycles", key, dimension=DIM)
    for cycle in range(60):
        rows = rng.standard_normal((3, DIM)).astype(np.float32)
        ids = [f"c{cycle}-{i}" for i in range(3)]
        with Client(tmp_path) as client:
            client.load_index("cycles", key).upsert(list(zip(ids, rows)))
        oracle.update(zip(ids, rows))
    with Client(tmp_path) as client:
        index = client.load_index("cycles", key)
        segments = index.stats()["segments"]
        small = [s for s in segments if s["rows"] - s["dead_rows"] <= BASE_ROWS]
        assert len(small) < MERGE_WIDTH, segments
        got = {it["id"]: np.asarray(it["vector"], np.float32)
               for it in index.get(list(oracle), include=["vector"])}
        assert set(got) == set(oracle) and index.get_num_vectors() == len(oracle)
        for item_id, vector in oracle.items():
            np.testing.assert_array_equal(got[item_id], vector)


def test_disk_bytes_count_a_link_not_what_it_points_to(tmp_path: Path) -> None:
    """A build's scratch folder inside the index links to memory files (compaction/
    scann_assets.py): stats()["disk_bytes"] counts the link itself, never the RAM behind it."""
    outside = tmp_path / "outside"
    outside.write_bytes(b"\0" * (1 << 20))
    with Client(tmp_path / "c") as client:
        index = client.create_index("i", generate_key(), dimension=DIM, metric="euclidean",
                                    background_compaction=False)
        index.upsert(ids=[str(i) for i in range(100)],
                     vectors=np.random.default_rng(0).standard_normal((100, DIM)))
        index.flush()
        index_dir = tmp_path / "c" / "i"
        before = index.stats()["disk_bytes"]
        assert before == folder_bytes(index_dir) > 0
        link = index_dir / "segments" / "scratch-link"
        link.symlink_to(outside)
        try:
            assert index.stats()["disk_bytes"] - before == len(str(outside))  # the link's size
        finally:
            link.unlink()
