"""Issue 17: a segment whose calibrated tree is not cheaper than an exact scan is stored exact.

``exact_fallback`` is a pure function of what the calibration measured, tested by tables. The
build tests replace the wall-clock measurement (``calibrate.measure_query_costs``) with fixed
costs, so which segments reach the cost check (>= COST_CHECK_SHARE of the leaves searched) and
what the build does with the verdict are checked without asserting on timings.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from lsmvec import Client, generate_key
from lsmvec.compaction import calibrate as calibration
from lsmvec.compaction.calibrate import (COST_CHECK_SHARE, TREE_COST_LIMIT, QueryCosts,
                                         exact_fallback)
from lsmvec.compaction.scann_params import KIND_BRUTE, KIND_TREE_AH
from lsmvec.compaction.segment import Segment, build_and_open_segment
from lsmvec.compaction.segment_files import SegmentFiles

KEY = bytes(range(32))
CONTEXT = b"fallback-test"
K = 10


def _costs(ratio: float) -> QueryCosts:
    return QueryCosts(tree_us=100.0 * ratio, exact_us=100.0, ratio=ratio)


@pytest.mark.parametrize("num_leaves, leaves, recall, costs, exact", [
    # target reached, cost check applies (>= half the leaves): the limit decides
    (141, 141, 1.0, _costs(TREE_COST_LIMIT), True),
    (141, 141, 1.0, _costs(1.3), True),
    (141, 141, 1.0, _costs(TREE_COST_LIMIT - 0.01), False),
    (141, 141, 1.0, _costs(0.16), False),
    (100, 50, 0.96, _costs(0.9), True),  # exactly COST_CHECK_SHARE
    # under half the leaves: the tree stays, whatever a probe said
    (100, 49, 0.96, _costs(5.0), False),
    (141, 29, 1.0, _costs(5.0), False),
    # not measured: the tree stays
    (141, 141, 0.97, None, False),
    # target missed: exact, whatever the costs
    (141, 141, 0.94, None, True),
    (141, 141, 0.94, _costs(0.01), True),
])
def test_exact_fallback_table(num_leaves: int, leaves: int, recall: float,
                              costs: QueryCosts | None, exact: bool) -> None:
    assert COST_CHECK_SHARE == 0.5 and TREE_COST_LIMIT == 0.8  # the table's premises
    reason = exact_fallback(num_leaves, leaves, 200, recall, 0.95, costs)
    assert bool(reason) == exact, reason
    if exact:
        assert reason.startswith("exact: ")
        assert f"{leaves}/{num_leaves} leaves" in reason
        if recall >= 0.95:
            assert f"{costs.ratio:.2f}x exact's cost" in reason


def _gaussian(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim)).astype(np.float32) * 4.0
    return centres[rng.integers(0, 50, n)] + rng.standard_normal((n, dim)).astype(np.float32)


class _Probe:
    """Stands in for measure_query_costs: fixed costs, and the (leaves, reorder) asked."""

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self.calls: list[tuple[int, int]] = []

    def __call__(self, scann, vectors, queries, metric, leaves, reorder, k=K) -> QueryCosts:
        self.calls.append((leaves, reorder))
        return _costs(self.ratio)


def _truth(rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
    r, q = rows.astype(np.float64), queries.astype(np.float64)
    return np.argsort((r * r).sum(1)[None, :] - 2.0 * (q @ r.T), axis=1, kind="stable")[:, :K]


def test_gaussian_needing_most_leaves_is_stored_exact_clustered_stays_tree(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both segments 5k x 64, forced tree_ah; the probe says the tree costs 0.9x exact.
    Gaussian rows need (nearly) every leaf for 0.95: checked, too dear, stored exact, the reason
    kept across a reopen and the answers exact. Clustered rows need the starting 20%: never
    checked, a tree."""
    probe = _Probe(0.9)
    monkeypatch.setattr(calibration, "measure_query_costs", probe)
    rows = _gaussian(5_000, 64, 0)
    files, segment = build_and_open_segment(tmp_path / "g", rows, metric="squared_euclidean",
                                            key=KEY, context=CONTEXT, kind="tree_ah")
    with segment:
        assert len(probe.calls) == 1
        leaves, reorder = probe.calls[0]
        assert leaves >= COST_CHECK_SHARE * 71  # 5k rows: 71 leaves
        assert segment.kind == KIND_BRUTE and files.kind == KIND_BRUTE
        assert segment.params.fallback == (f"exact: tree needs {leaves}/71 leaves (reorder "
                                           f"{reorder}), 0.90x exact's cost (90 vs 100 us "
                                           "per query)")
        queries = _gaussian(30, 64, 1)
        found, _ = segment.search(queries, K)
        np.testing.assert_array_equal(found, _truth(rows, queries))
    with Segment.open(tmp_path / "g", SegmentFiles.from_dict(files.as_dict()), key=KEY,
                      context=CONTEXT, metric="squared_euclidean") as reopened:
        assert reopened.kind == KIND_BRUTE
        assert reopened.params.fallback == segment.params.fallback

    _files, tree = build_and_open_segment(tmp_path / "c", _clustered(5_000, 64, 2),
                                          metric="squared_euclidean", key=KEY, context=CONTEXT,
                                          kind="tree_ah")
    with tree:
        assert len(probe.calls) == 1  # not checked: it searches under half the leaves
        assert tree.kind == KIND_TREE_AH
        assert tree.params.leaves_to_search < COST_CHECK_SHARE * tree.n_lists
        assert tree.params.fallback == ""


def test_a_cheap_tree_needing_every_leaf_stays_a_tree(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The measured 100k x 128 case: every leaf, but 0.16x exact's cost -- keep the tree."""
    probe = _Probe(0.16)
    monkeypatch.setattr(calibration, "measure_query_costs", probe)
    _files, segment = build_and_open_segment(tmp_path / "g", _gaussian(5_000, 64, 0),
                                             metric="squared_euclidean", key=KEY,
                                             context=CONTEXT, kind="tree_ah")
    with segment:
        assert len(probe.calls) == 1
        assert segment.kind == KIND_TREE_AH
        assert segment.params.leaves_to_search == probe.calls[0][0]
        assert segment.params.calibrated_recall >= 0.95
        assert segment.params.fallback == ""


def test_the_build_follows_the_real_measurement(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No injected costs: the real probe's numbers are sane and the stored kind is what
    exact_fallback says of them (no assertion on which way the timing goes)."""
    seen: list[QueryCosts] = []
    real = calibration.measure_query_costs

    def recording(*args, **kwargs) -> QueryCosts:
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(calibration, "measure_query_costs", recording)
    _files, segment = build_and_open_segment(tmp_path / "g", _gaussian(3_000, 32, 5),
                                             metric="euclidean", key=KEY, context=CONTEXT,
                                             kind="tree_ah")
    with segment:
        (costs,) = seen
        assert 0 < costs.tree_us < math.inf and 0 < costs.exact_us < math.inf
        assert costs.ratio == pytest.approx(costs.tree_us / costs.exact_us)
        assert (segment.kind == KIND_BRUTE) == (costs.ratio >= TREE_COST_LIMIT)
        assert bool(segment.params.fallback) == (segment.kind == KIND_BRUTE)


def test_stats_say_why_a_segment_is_exact(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the index: 20k x 64 Gaussian (a tree by default, needs every one of its 141
    leaves) with a probe saying 1.3x: stored exact, stats() shows why, queries are exact."""
    probe = _Probe(1.3)
    monkeypatch.setattr(calibration, "measure_query_costs", probe)
    rows = _gaussian(20_000, 64, 7)
    with Client(tmp_path / "data") as client:
        index = client.create_index("g", generate_key(), dimension=64,
                                    metric="squared_euclidean", background_compaction=False)
        index.upsert([(str(i), rows[i]) for i in range(len(rows))])
        index.train()
        (entry,) = index.stats()["segments"]
        assert len(probe.calls) == 1
        assert entry["kind"] == KIND_BRUTE
        assert entry["fallback"].startswith("exact: tree needs ")
        assert "1.30x exact's cost" in entry["fallback"]
        queries = _gaussian(20, 64, 8)
        results = index.query(query_vectors=queries, top_k=K)
        found = np.array([[int(hit["id"]) for hit in hits] for hits in results])
        np.testing.assert_array_equal(found, _truth(rows, queries))


def test_calibrate_takes_an_injected_probe(tmp_path: Path) -> None:
    """calibrate(probe=...) asks the probe at the calibrated setting, once, and its verdict is
    exact_fallback's of those numbers; a setting under half the leaves never asks."""
    from lsmvec.compaction.calibrate import calibrate
    from lsmvec.compaction.scann_params import choose_params
    rows = _gaussian(5_000, 64, 0)
    _files, segment = build_and_open_segment(tmp_path / "g", rows, metric="squared_euclidean",
                                             key=KEY, context=CONTEXT, kind="tree_ah",
                                             leaves_to_search=1)  # trained, not calibrated
    trained = choose_params(5_000, 64, "squared_euclidean", kind="tree_ah")
    with segment:
        calls: list[tuple[int, int]] = []

        def probe(leaves: int, reorder: int) -> QueryCosts:
            calls.append((leaves, reorder))
            return _costs(1.1)

        result = calibrate(segment._scann, rows, trained, 0.95, probe=probe)
        assert calls == [(result.params.leaves_to_search, result.params.reorder)]
        assert result.reached and not result.keep_tree
        assert result.costs == _costs(1.1)
        assert result.fallback == exact_fallback(
            trained.num_leaves, *calls[0], result.params.calibrated_recall, 0.95, _costs(1.1))
        calls.clear()
        low = calibrate(segment._scann, rows, trained, 0.05, probe=probe)  # the first step does
        assert calls == [] and low.costs is None and low.keep_tree
