"""The lsmvec command: exit codes and what each subcommand reports."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lsmvec import Client, generate_key
from lsmvec.tools.cli import EXIT_CORRUPT, EXIT_OPEN, EXIT_USAGE, main


@pytest.fixture()
def index_folder(tmp_path):
    key = generate_key()
    with Client(tmp_path) as client:
        ix = client.create_index("x", key, dimension=8)
        ix.upsert(ids=np.arange(300), vectors=np.random.default_rng(0).random((300, 8)))
    return tmp_path / "x", key


def test_inspect_reports_config_and_segments(index_folder, capsys, monkeypatch):
    folder, key = index_folder
    monkeypatch.setenv("LSMVEC_KEY", key.hex())
    assert main(["inspect", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["index"] == "x" and report["dimension"] == 8 and report["vectors"] == 300
    assert sum(s["rows"] for s in report["segments"]) == 300
    assert key.hex() not in json.dumps(report)


def test_verify_ok_then_damage_found(index_folder, capsys):
    folder, key = index_folder
    assert main(["verify", str(folder), "--key-hex", key.hex()]) == 0
    vectors = next(folder.glob("segments/*/vectors.bin"))
    data = bytearray(vectors.read_bytes())
    data[len(data) // 2] ^= 0x01
    vectors.write_bytes(bytes(data))
    # the damaged segment is refused at open: a corrupt index, named, never data
    assert main(["verify", str(folder), "--key-hex", key.hex()]) == EXIT_CORRUPT
    assert "vectors.bin" in capsys.readouterr().err


def test_compact_train_and_open_errors(index_folder, capsys, tmp_path):
    folder, key = index_folder
    assert main(["compact", str(folder), "--train", "-q", "--key-hex", key.hex()]) == 0
    assert "state trained" in capsys.readouterr().out
    assert main(["verify", str(folder), "--key-hex", generate_key().hex()]) == EXIT_OPEN
    assert "wrong index_key" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "nope"), "--key-hex", key.hex()]) == EXIT_OPEN
    with pytest.raises(SystemExit) as usage:
        main(["verify"])
    assert usage.value.code == 2
    assert main(["verify", str(folder), "--key-hex", "zz"]) == EXIT_USAGE


def test_verify_reports_log_damage_without_raising(tmp_path, capsys):
    key = generate_key()
    with Client(tmp_path) as client:
        ix = client.create_index("y", key, dimension=4)
        ix.upsert(ids=np.arange(10), vectors=np.ones((10, 4)))
        ix.upsert(ids=np.arange(10, 20), vectors=np.ones((10, 4)))
        core = ix._core
        # damage an item value in place, behind the engine's back, then verify while open
        report = ix.verify()
        assert report["ok"]
        log = sorted((tmp_path / "y" / "wal").glob("*.log"))[-1]
        raw = bytearray(log.read_bytes())
        raw[40] ^= 0xFF  # inside the first record's payload
        log.write_bytes(bytes(raw))
        report = ix.verify()
        assert not report["ok"] and report["problems"][0]["path"].endswith(log.name)
        assert core is ix._core
