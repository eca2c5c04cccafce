"""`python -m lsmvec.tools.bench_metadata` runs end to end on small data: every case's answer
from query_metadata equals the full scan's (the tool stops otherwise), and its match counts are
those of a Python oracle over the items the tool wrote."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lsmvec.tools.bench_metadata import _same, cases, item_metadata, words_of

ROOT = Path(__file__).resolve().parents[2]


def _oracle_count(case: dict, n: int) -> int:
    first, second = words_of(n, 0)
    metas = [item_metadata(i, int(first[i]), int(second[i])) for i in range(n)]
    spec = case["filters"]
    tests = {
        "eq 1%": lambda m: m["cat"] == 7,
        "eq 50%": lambda m: m["half"] is True,
        "$nor/$ne 1%": lambda m: m["cat"] == 7,
        "$ne 50%": lambda m: m["half"] is not True,
        "$ne 50% top 10 by n desc": lambda m: m["half"] is not True,
    }
    if "title" in spec:
        ((op, operand),) = spec["title"].items()
        test = ((lambda m: operand in m["title"]) if op == "$contains"
                else (lambda m: re.search(operand, m["title"]) is not None))
    else:
        test = tests[case["name"]]
    count = sum(1 for m in metas if test(m))
    return min(count, case["top_k"]) if case.get("top_k") else count


@pytest.mark.slow
def test_bench_metadata_small(tmp_path: Path) -> None:
    n, memtable = 2000, 200
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "lsmvec.tools.bench_metadata", "--n", str(n),
                           "--memtable", str(memtable), "--rounds", "1", "--json",
                           "--dir", str(tmp_path / "bench")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    *rows, summary = lines
    assert summary["summary"] is True and summary["memtable_rows"] == memtable
    assert sum(rows for _kind, rows in summary["segments"]) == n - memtable
    assert summary["folder_bytes"] > 0 and summary["rss_peak"] >= summary["rss_after"] > 0
    assert summary["build"]["build_seconds"] > 0 and summary["build"]["reused"] is False
    by_name = {case["name"]: case for case in cases()}
    names = [row["case"] for row in rows]
    assert names[:len(by_name)] == list(by_name)
    assert names[len(by_name):] == ["$contains 1% (no trigram index)",
                                    "$regex 1% (no trigram index)"]
    for row in rows:
        case = by_name[row["case"].replace(" (no trigram index)", "")]
        assert row["matches"] == _oracle_count(case, n), row["case"]
        assert row["qm_seconds"] > 0 and row["scan_seconds"] > 0 and row["speedup"] > 0
        assert len(row["speedups"]) == 1
    exact = {row["case"]: row["exact_plan"] for row in rows}
    assert exact["eq 1%"] and not exact["$nor/$ne 1%"] and not exact["$ne 50%"]


def test_the_agreement_check_refuses_a_difference() -> None:
    plain, ordered = cases()[0], cases()[-1]
    _same(plain, ["1", "2"], ["2", "1"])  # a set: any order
    with pytest.raises(AssertionError, match="2 differ"):
        _same(plain, ["1", "2"], ["1", "3"])
    with pytest.raises(AssertionError, match="found 1 ids, the scan 2"):
        _same(plain, ["1"], ["1", "2"])
    with pytest.raises(AssertionError):
        _same(ordered, ["1", "2"], ["2", "1"])  # ordered: the very list
