"""The benchmark commands run end to end on small data and report sane, checkable figures:
`lsmvec bench` (lsmvec vs raw ScaNN, also from an .npy file) and `lsmvec bench --compare`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "lsmvec.tools.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_lsmvec_bench_on_an_npy_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((20, 8)).astype(np.float32) * 4
    data = centers[rng.integers(0, 20, 21_000)] + rng.standard_normal((21_000, 8)).astype(np.float32)
    np.save(tmp_path / "vectors.npy", data)
    out = tmp_path / "result.json"
    done = _run(["bench", "--", "--dataset", "file", "--data", str(tmp_path / "vectors.npy"),
                 "--queries", "50", "--reopens", "1", "--repeats", "1", "--json", str(out),
                 "--workdir", str(tmp_path)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["n"] == 21_000 - 50
    assert result["search"], "no n_probes setting measured"
    for setting in result["search"]:
        assert 0.0 <= setting["lsm_recall"] <= 1.0 and 0.0 <= setting["raw_recall"] <= 1.0
        assert setting["lsm_single_qps"] > 0 and setting["raw_single_qps"] > 0
        assert setting["lsm_p50_ms"] <= setting["lsm_p99_ms"]
    assert max(s["lsm_recall"] for s in result["search"]) >= 0.9
    assert "| n_probes |" in done.stdout and "p99 ms lsm / raw" in done.stdout
    assert out.with_suffix(".png").exists() == _has_matplotlib()


def test_lsmvec_bench_compare_with_raw_scann(tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    done = _run(["bench", "--compare", "--", "--n", "3000", "--dim", "16", "--queries", "30",
                 "--peers", "lsmvec,scann", "--out", str(out), "--dir", str(tmp_path)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    names = [r["peer"] for r in result["results"]]
    assert names == ["lsmvec", "scann"]
    for r in result["results"]:
        best = r["best"]
        assert 0.0 <= best["recall"] <= 1.0 and best["single_qps"] > 0 and best["batch_qps"] > 0
        assert best["p50_ms"] <= best["p99_ms"] and r["ingest_vps"] > 0
    lsm = result["results"][0]
    assert lsm["best"]["recall"] >= 0.95  # 3,000 rows: one exact segment
    assert "| lsmvec |" in done.stdout and "p50 / p99 ms" in done.stdout
    assert out.with_suffix(".png").exists() == _has_matplotlib()


@pytest.mark.parametrize("n", [1, 2, 7, 2000])
def test_lsmvec_bench_on_any_size(tmp_path: Path, n: int) -> None:
    """Every size from one row up: below ScaNN's tree threshold both sides search exactly
    (raw ScaNN by its brute force), and the report says so."""
    out = tmp_path / "result.json"
    done = _run(["bench", "--n", str(n), "--dim", "4", "--queries", "3", "--reopens", "1",
                 "--repeats", "1", "--json", str(out), "--workdir", str(tmp_path)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    result = json.loads(out.read_text())
    assert result["n"] == n and result["params"]["kind"] == "brute"
    assert [s["n_probes"] for s in result["search"]] == [None]
    (row,) = result["search"]
    assert row["lsm_recall"] == 1.0 and row["raw_recall"] == 1.0
    assert row["lsm_single_qps"] > 0 and row["raw_single_qps"] > 0
    assert "brute force" in done.stdout and "| default (exact) |" in done.stdout


def test_lsmvec_bench_ingest(tmp_path: Path) -> None:
    """`lsmvec bench-ingest` (formerly `python -m tools.bench`): its own name, and it runs."""
    out = tmp_path / "ingest.json"
    done = _run(["bench-ingest", "--n", "40", "--dim", "4", "--batch", "10", "--threads", "1,2",
                 "--json", str(out), "--dir", str(tmp_path)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("lsmvec bench-ingest:")
    results = {r["config"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) >= {"fsync-1t", "fsync-2t", "os-1t", "logonly-1t", "reopen", "replay"}
    assert all("error" not in r for r in results.values()), results
    assert results["replay"]["vectors"] == 40 and results["replay"]["rows_from_log"] == 40


@pytest.mark.parametrize("mode", ["overwrite", "mixed"])
def test_lsmvec_bench_space(tmp_path: Path, mode: str) -> None:
    """`lsmvec bench-space` runs on small data: the live items are exactly what was written
    (overwrite: every id once), the peak is at least the live data and stays within the
    documented bound A x L + 2 MiB, and the engine's counters are reported."""
    from lsmvec.db.space import SLACK
    done = _run(["bench-space", "--mode", mode, "--n", "2000", "--dim", "16", "--batch", "200",
                 "--rounds", "5", "--seconds", "3", "--json", "--dir", str(tmp_path)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if mode == "overwrite":
        assert result["live_items"] == 2000 and result["batches"] == 50
    assert result["live_items"] > 0 and result["batches"] > 0
    assert result["live_bytes"] <= result["peak_bytes"] <= 3.0 * result["live_bytes"] + SLACK
    assert set(result["write_pressure"]) >= {"slowed_writes", "stopped_writes", "space"}
