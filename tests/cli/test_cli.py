"""The lsmvec command: exit codes and what each subcommand reports."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

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


# ----------------------------------------------------------------------------- paper cuts (issue 16)

def test_compact_json_prints_json(index_folder, capsys):
    folder, key = index_folder
    assert main(["compact", str(folder), "--json", "--key-hex", key.hex()]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["index"] == "x" and report["action"] == "compact"
    assert sum(s["rows"] for s in report["segments_after"]) == 300
    assert report["disk_bytes_after"] > 0 and report["training_state"]
    assert main(["compact", str(folder), "--train", "--json", "--key-hex", key.hex()]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["action"] == "train" and len(report["segments_after"]) == 1


def test_key_file_that_cannot_be_read_is_a_usage_error(index_folder, capsys, tmp_path):
    folder, _ = index_folder
    for missing in (tmp_path / "nonexistent", tmp_path):  # no such file; a folder
        assert main(["verify", str(folder), "--key-file", str(missing)]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert f"cannot read --key-file {missing}" in err and "Traceback" not in err


def test_key_file_holds_raw_bytes_or_hex_text(index_folder, capsys, tmp_path):
    folder, key = index_folder
    texts = {"raw": key, "hex-newline": key.hex().encode() + b"\n", "hex": key.hex().encode(),
             "HEX-crlf": key.hex().upper().encode() + b"\r\n"}
    for name, content in texts.items():
        (tmp_path / name).write_bytes(content)
        assert main(["verify", str(folder), "--key-file", str(tmp_path / name)]) == 0, name
    capsys.readouterr()
    (tmp_path / "junk").write_bytes(b"not a key at all\n")
    assert main(["verify", str(folder), "--key-file", str(tmp_path / "junk")]) == EXIT_OPEN
    err = capsys.readouterr().err
    assert "17 bytes" in err and "32 raw key bytes or 64 hex digits" in err
    (tmp_path / "short").write_text(key.hex()[:62] + "\n")  # hex, but 31 bytes: the key check says so
    assert main(["verify", str(folder), "--key-file", str(tmp_path / "short")]) == EXIT_OPEN
    assert "31" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    assert "64 hex" in " ".join(capsys.readouterr().out.split())


def _run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lsmvec.tools.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def _step3(out: str) -> tuple[str, str]:
    """The demo's step-3 line and the stats line under it."""
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("3. "))
    return lines[at], lines[at + 1]


@pytest.mark.parametrize("n, train, kind", [(1000, False, "brute"), (20_000, True, "tree_ah")])
def test_demo_says_the_segment_kind_stats_show(n, train, kind):
    done = _run_cli("demo", "--", "--n", str(n), "--dim", "8", *(["--train"] if train else []))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    said, stats = _step3(done.stdout)
    assert stats.strip().startswith("stats:") and f" {kind}," in stats
    assert f"({kind}:" in said, said
    assert ("ScaNN" in said) == (kind == "tree_ah"), said  # never "ScaNN" for exact segments
    assert "all checks passed" in done.stdout


_TRAIN_QUIETLY = textwrap.dedent("""
    import sys
    import numpy as np
    from lsmvec import Client
    key, folder = bytes.fromhex(sys.argv[1]), sys.argv[2]
    rng = np.random.default_rng(0)
    with Client(folder) as client:  # small memtables: background flushes and merges run too
        index = client.create_index("t", key, dimension=8, memtable_bytes=200_000)
        for start in range(0, 24_000, 2_000):
            index.upsert(ids=np.arange(start, start + 2_000),
                         vectors=rng.random((2_000, 8), dtype=np.float32))
        index.train()
        assert [s["kind"] for s in index.stats()["segments"]] == ["tree_ah"], index.stats()
    with Client(folder) as client:
        assert len(client.load_index("t", key).query(np.zeros(8), top_k=3)) == 3
    print("ok")
""")


def test_scann_native_logs_stay_off_stderr(tmp_path):
    """Training (a tree_ah segment needs >= BRUTE_FORCE_MAX_ROWS rows), background merges,
    reopening and `lsmvec compact --train` write nothing to stderr: ScaNN's absl lines
    ("WARNING: All log messages before absl::InitializeLog() ...") included."""
    from lsmvec.compaction.scann_params import BRUTE_FORCE_MAX_ROWS
    assert BRUTE_FORCE_MAX_ROWS <= 24_000
    key = generate_key()
    done = subprocess.run([sys.executable, "-c", _TRAIN_QUIETLY, key.hex(), str(tmp_path / "d")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
    assert done.stderr == ""
    with Client(tmp_path / "d") as client:  # more rows, so compact --train trains a new tree
        client.load_index("t", key).upsert(ids=np.arange(24_000, 26_000),
                                           vectors=np.ones((2_000, 8), np.float32))
    done = _run_cli("compact", str(tmp_path / "d" / "t"), "--train", "-q", "--key-hex", key.hex())
    assert done.returncode == 0 and "state trained" in done.stdout, done.stderr[-3000:]
    assert done.stderr == ""
    env_shows = subprocess.run(  # the switch back: LSMVEC_SCANN_LOG_LEVEL=0 shows them again
        [sys.executable, "-c", _TRAIN_QUIETLY, key.hex(), str(tmp_path / "e")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "LSMVEC_SCANN_LOG_LEVEL": "0"})
    assert env_shows.returncode == 0 and "absl::InitializeLog" in env_shows.stderr
