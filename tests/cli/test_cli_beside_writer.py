"""`lsmvec inspect / stats / verify` open read-only by default (issue 20): they work beside a
running application's writer process, report what it acknowledged, and change no file; with
--write they take the writer's lock and are refused, naming the holder's pid."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lsmvec import generate_key
from lsmvec.tools.cli import EXIT_OPEN, main

WORKER = Path(__file__).resolve().parent.parent / "writer_worker.py"


def _state(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "lock.mdb"}


@pytest.fixture
def running_writer(tmp_path: Path):
    """A writer process holding index "t" open (20 rows flushed, 5 more only in its log)."""
    key = generate_key()
    proc = subprocess.Popen([sys.executable, str(WORKER), str(tmp_path), key.hex()],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def do(**command) -> None:
        proc.stdin.write(json.dumps(command) + "\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["ok"]

    do(op="create", dimension=4, options={"background_compaction": False})
    do(op="upsert_generated", prefix="a", n=20, seed=0)
    do(op="flush")
    do(op="upsert_generated", prefix="b", n=5, seed=1)
    yield tmp_path / "t", key, proc
    proc.kill()
    proc.wait(timeout=60)


def test_inspect_stats_verify_run_beside_the_writer(running_writer, capsys) -> None:
    folder, key, proc = running_writer
    before = _state(folder)
    assert main(["inspect", str(folder), "--json", "--key-hex", key.hex()]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["vectors"] == 25 and report["memtable_rows"] == 5
    assert report["write_pressure"]["read_only"] is True
    assert main(["stats", str(folder), "--json", "--key-hex", key.hex()]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["index"] == "t" and stats["vectors"] == 25 and len(stats["segments"]) == 1
    assert main(["verify", str(folder), "--json", "--key-hex", key.hex()]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert proc.poll() is None  # the application goes on
    assert _state(folder) == before


def test_write_mode_is_refused_naming_the_holder(running_writer, capsys) -> None:
    folder, key, proc = running_writer
    assert main(["verify", str(folder), "--write", "--key-hex", key.hex()]) == EXIT_OPEN
    assert f"process {proc.pid}" in capsys.readouterr().err
