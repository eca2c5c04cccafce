"""`lsmvec backup PATH DEST` and `lsmvec restore BACKUP DEST`: exit codes and the copies' contents."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lsmvec import Client, generate_key
from lsmvec.tools.cli import EXIT_CORRUPT, EXIT_OPEN, EXIT_USAGE, main


@pytest.fixture()
def index_folder(tmp_path):
    """A closed index of 200 live items (100 deleted) and its oracle: id -> vector."""
    key = generate_key()
    vectors = np.random.default_rng(0).random((300, 8)).astype(np.float32)
    with Client(tmp_path / "data") as client:
        ix = client.create_index("x", key, dimension=8)
        ix.upsert(ids=[str(i) for i in range(300)], vectors=vectors)
        ix.delete([str(i) for i in range(0, 300, 3)])
    oracle = {str(i): vectors[i] for i in range(300) if i % 3}
    return tmp_path / "data" / "x", key, oracle


def holds(folder, key, oracle) -> None:
    with Client(folder.parent) as client:
        ix = client.load_index(folder.name, key)
        ids = sorted(ix.list_ids())
        assert ids == sorted(oracle)
        for item in ix.get(ids, include=["vector"]):
            assert np.array_equal(np.asarray(item["vector"], np.float32), oracle[item["id"]])


def test_backup_then_restore_round_trip(index_folder, tmp_path, capsys):
    folder, key, oracle = index_folder
    dest = tmp_path / "bk" / "x-copy"
    assert main(["backup", str(folder), str(dest), "--key-hex", key.hex(), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == str(dest) and report["lsn"] >= 1 and report["segments"] >= 1
    assert key.hex() not in json.dumps(report)
    restored = tmp_path / "restored" / "x"
    assert main(["restore", str(dest), str(restored), "--key-hex", key.hex()]) == 0
    assert "count: 200" in capsys.readouterr().out
    holds(restored, key, oracle)
    holds(dest, key, oracle)
    holds(folder, key, oracle)


def test_refusals_exit_codes_and_write_nothing(index_folder, tmp_path, capsys):
    folder, key, oracle = index_folder
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "f").write_text("x")
    assert main(["backup", str(folder), str(taken), "--key-hex", key.hex()]) == EXIT_USAGE
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["f"]
    dest = tmp_path / "bk" / "ok"
    assert main(["backup", str(folder), str(dest), "--key-hex", key.hex()]) == 0
    capsys.readouterr()
    wrong = generate_key().hex()
    assert main(["restore", str(dest), str(tmp_path / "r" / "a"), "--key-hex", wrong]) == EXIT_OPEN
    assert "wrong index_key" in capsys.readouterr().err
    assert main(["restore", str(tmp_path / "none"), str(tmp_path / "r" / "a"),
                 "--key-hex", key.hex()]) == EXIT_OPEN
    assert main(["restore", str(dest), str(taken), "--key-hex", key.hex()]) == EXIT_USAGE
    assert not (tmp_path / "r").exists()
    # a damaged backup is refused: nothing appears at DEST, the backup stays as it was
    seg_file = next((dest / "segments").rglob("vectors.bin"))
    seg_file.unlink()  # unlink, not an in-place write: the file is a hard link of the source's
    seg_file.write_bytes(b"\0" * 64)
    assert main(["restore", str(dest), str(tmp_path / "r" / "b"), "--key-hex", key.hex()]) \
        == EXIT_CORRUPT
    assert "corrupt" in capsys.readouterr().err
    assert not any((tmp_path / "r").iterdir())  # (the parent it made stays, empty)
    holds(folder, key, oracle)  # the source was not touched through the link
