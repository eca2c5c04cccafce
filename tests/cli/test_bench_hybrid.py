"""`python -m lsmvec.tools.bench_hybrid` runs end to end on small data: every measurement line is
there, the latencies and ratios are positive numbers, the disk figures add up, and the fresh
rows really sat in the memtable while they were measured."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lsmvec.tools import bench_hybrid


def test_bench_hybrid_small(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n, queries, rounds, fresh = 400, 6, 2, 50
    assert bench_hybrid.main(["--dataset", "gaussian", "--n", str(n), "--queries", str(queries),
                              "--rounds", str(rounds), "--fresh", str(fresh),
                              "--dir", str(tmp_path / "work")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    setup = next(r for r in rows if r["what"] == "setup")
    assert (setup["n"], setup["queries"], setup["rounds"], setup["fresh"]) == (
        n, queries, rounds, fresh)

    builds = [r for r in rows if r["what"] == "build"]
    assert [b["text_fields"] for b in builds] == [[], ["text"]]
    disk = next(r for r in rows if r["what"] == "disk")
    assert disk["bytes_without_text"] == builds[0]["folder_bytes"] > 0
    assert disk["bytes_with_text"] == builds[1]["folder_bytes"]
    assert disk["text_index_bytes"] == disk["bytes_with_text"] - disk["bytes_without_text"]
    assert disk["text_index_bytes"] > 0  # postings of 400 sentences take room
    # the no-text index was deleted after measuring: only the one with text is left
    assert sorted(p.name for p in (tmp_path / "work" / "db").iterdir()
                  if not p.name.startswith(".")) == ["with_text"]

    latency = {(r["case"], r["mode"]): r for r in rows if r["what"] == "latency_ms"}
    expected = {("trained", m) for m in ("vector", "text", "hybrid")}
    expected |= {("trained+filter", f"{m}+filter") for m in ("vector", "text", "hybrid")}
    expected |= {("trained+fresh_memtable", m) for m in ("vector", "text", "hybrid")}
    cycling = latency.pop(("filter_group_cycling", "vector+filter"))
    assert cycling["queries"] == 20 and 0 < cycling["p50"] <= cycling["p95"]
    assert set(latency) == expected
    for row in latency.values():
        assert row["queries"] == queries and row["rounds"] == rounds
        assert len(row["p50_rounds"]) == rounds
        assert 0 < row["p50"] <= row["p95"] and row["mean"] > 0

    ratios = {r["case"]: r for r in rows if r["what"] == "ratio_vs_vector"}
    assert set(ratios) == {"trained", "trained+filter", "trained+fresh_memtable"}
    for row in ratios.values():
        for key in ("text_p50", "text_p95", "hybrid_p50", "hybrid_p95"):
            assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, key

    fresh_row = next(r for r in rows if r["what"] == "fresh_rows")
    assert fresh_row["memtable_rows"] == fresh and fresh_row["segments"] == [n]
    assert not [r for r in rows if r["what"] == "warning"]


def test_the_answer_check_refuses_a_wrong_answer() -> None:
    good = [{"id": str(i), "score": 1.0 / (i + 1)} for i in range(0, 100, 10)]  # group 0
    bench_hybrid.check({"hybrid+filter": lambda j: good}, 1)
    with pytest.raises(AssertionError):
        bench_hybrid.check({"hybrid+filter": lambda j: good[:-1] + [{"id": "3", "score": 0.0}]},
                           1)  # a row of group 3 for query 0's group-0 filter
    with pytest.raises(AssertionError):
        bench_hybrid.check({"text": lambda j: list(reversed(good))}, 1)  # not best first
    with pytest.raises(AssertionError):
        bench_hybrid.check({"vector": lambda j: good[:5]}, 1)  # fewer than top_k
