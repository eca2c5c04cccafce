"""The relevance measures against values computed by hand on tiny judged sets, the Lee loader's
grading and layout on a hand-made folder, and the benchmark's query forms through the public API
against a numpy oracle. The run on the real collection (gensim's files + MiniLM) is a benchmark:
`python -m lsmvec.tools.bench_relevance` (docs/benchmarks.md), not a test."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from lsmvec import Client
from lsmvec.tools import bench_relevance
from lsmvec.tools.relevance_data import (Judged, dcg, grade, load_lee, ndcg_at_k, recall_at_k)


def test_ndcg_hand_computed() -> None:
    judged = {"a": 2, "c": 1, "d": 3}  # b unjudged: grade 0
    # DCG@3 of a, b, c = 2/log2(2) + 0/log2(3) + 1/log2(4) = 2 + 0 + 0.5 = 2.5
    # ideal d, a, c = 3/1 + 2/log2(3) + 1/2 = 3 + 1.2618595 + 0.5 = 4.7618595
    assert ndcg_at_k(["a", "b", "c"], judged, 3) == pytest.approx(2.5 / 4.7618595, abs=1e-7)
    assert ndcg_at_k(["a", "b", "c"], judged, 3) == pytest.approx(0.525005, abs=1e-6)
    assert ndcg_at_k(["d", "a", "c", "b"], judged, 3) == pytest.approx(1.0)
    # k=1: only the first row counts, against the best single grade (3)
    assert ndcg_at_k(["a", "d"], judged, 1) == pytest.approx(2 / 3)
    assert ndcg_at_k(["x", "y"], judged, 10) == 0.0
    assert dcg([1, 1]) == pytest.approx(1 + 1 / math.log2(3))
    with pytest.raises(ValueError):
        ndcg_at_k(["a"], {"a": 0}, 10)


def test_recall_hand_computed() -> None:
    judged = {"a": 1, "b": 2, "c": 0}  # c judged not relevant
    assert recall_at_k(["a", "x", "b"], judged, 2) == 0.5
    assert recall_at_k(["a", "x", "b"], judged, 3) == 1.0
    assert recall_at_k(["c"], judged, 3) == 0.0


@pytest.mark.parametrize(("similarity", "floor", "expected"), [
    (0.2, 2, 0), (0.48, 2, 0), (0.5, 2, 1), (0.8, 2, 2), (1.0, 2, 3),
    (0.28, 1, 0), (0.3, 1, 1), (1.0, 1, 4)])
def test_grade_from_mean_rating(similarity: float, floor: int, expected: int) -> None:
    assert grade(similarity, floor) == expected


def _fake_lee(folder: Path) -> np.ndarray:
    rng = np.random.default_rng(1)
    sims = np.triu(rng.choice([0.2, 0.4, 0.6, 0.8, 1.0], (50, 50)), 1) + np.eye(50)
    folder.mkdir()
    (folder / "lee.cor").write_text("".join(f"article {i} words\n" for i in range(50)))
    (folder / "lee_background.cor").write_text("bg one\nbg two\n\nbg three\n")
    (folder / "similarities0-1.txt").write_text(
        "".join("\t".join(str(x) for x in row) + "\n" for row in sims))
    return sims


def test_load_lee_layout(tmp_path: Path) -> None:
    sims = _fake_lee(tmp_path / "data")
    got = load_lee(tmp_path / "data")
    assert len(got.docs) == 53 and len(got.queries) == 50
    assert got.queries["q07"] == "article 7 words" == got.docs[got.query_doc["q07"]]
    assert got.docs["bg-002"] == "bg three"
    for i in range(50):
        qrels = got.qrels[f"q{i:02d}"]
        assert f"lee-{i:02d}" not in qrels  # never the query's own article
        expected = {f"lee-{j:02d}": grade(sims[min(i, j), max(i, j)])
                    for j in range(50) if j != i}
        assert qrels == {d: g for d, g in expected.items() if g > 0}
    assert got.qrels["q03"].get("lee-40", 0) == got.qrels["q40"].get("lee-03", 0)


def test_query_forms_against_oracle(tmp_path: Path) -> None:
    """rank_all through a real index: the own document is filtered out, vector order is numpy's
    cosine order, text-only returns only rows holding a query word."""
    rng = np.random.default_rng(0)
    texts = {f"d{i}": f"common {w}" for i, w in enumerate(
        ["apple", "banana", "cherry", "apple banana", "grape", "melon"])}
    vecs = rng.standard_normal((6, 384)).astype(np.float32)
    judged = Judged("tiny", "hand-made", texts, {"qa": "apple", "qb": "banana"},
                    {"qa": {"d3": 1}, "qb": {"d3": 2}}, {"qa": "d0", "qb": "d1"})
    qvecs = {"qa": vecs[0], "qb": vecs[1]}
    with Client(tmp_path / "db") as client:
        index = bench_relevance.build(client, "tiny", judged, vecs)
        vector = bench_relevance.rank_all(index, judged, qvecs, "vector", 10)
        text = bench_relevance.rank_all(index, judged, qvecs, "text", 10)
        hybrid = bench_relevance.rank_all(index, judged, qvecs, "hybrid", 10)
        index.close()
    assert vector == bench_relevance.exact_top(judged, vecs, qvecs)
    assert all(len(r) == 5 and judged.query_doc[q] not in r for q, r in vector.items())
    assert text == {"qa": ["d3"], "qb": ["d3"]}
    assert all(judged.query_doc[q] not in r and set(r) == set(vector[q]) for q, r in hybrid.items())
    assert bench_relevance.score(text, judged.qrels)["ndcg@10"] == 1.0
