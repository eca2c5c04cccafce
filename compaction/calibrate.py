"""Calibrate a trained segment's default search by measuring recall, not assuming it.

After ScaNN trains a segment's tree, ``calibrate`` takes a fixed-seed sample of the segment's own
rows as queries, finds their exact top-10 over ALL rows with numpy, and searches the tree with
more and more leaves (x1.5 per step from ``choose_params``' default, up to every leaf) until the
sample's mean recall@10 reaches the target. Each sample row is judged leave-one-out: its 10
nearest OTHER rows, exact vs found, so it behaves like a held-out query. If even every leaf falls
short, the reorder depth is the bottleneck (the true neighbours fall outside the approximate
candidates): it is doubled, up to ``MAX_REORDER``, and the leaves searched again. If nothing
reaches the target, ``calibrate`` says so (``reached`` False) and the build stores the segment
exact (kind "brute") instead.

A tree that reaches the target only by searching at least half its leaves may still cost as much
as the exact scan it replaces (tiny forced trees: ScaNN's per-query overhead dominates). Then
``measure_query_costs`` times single queries of both, interleaved, and ``exact_fallback`` (a
pure function of the measured numbers) stores the segment exact when the tree is not clearly
cheaper; the reason lands in the stored params (``fallback``) and so in ``stats()``.

The result lives in the segment's stored SearchParams (``leaves_to_search``, ``reorder``,
``calibrated_recall``), so a reopen searches the same way without recalibrating.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Callable

import numpy as np

from lsmvec.compaction.exact import direct_distances, search_exact
from lsmvec.compaction.scann_params import SearchParams
from lsmvec.wal.errors import InvalidArgumentError

__all__ = ["DEFAULT_TARGET_RECALL", "CALIBRATION_SAMPLE", "CALIBRATION_K", "MAX_REORDER",
           "COST_CHECK_SHARE", "TREE_COST_LIMIT", "Calibration", "QueryCosts", "calibrate",
           "check_target_recall", "exact_fallback", "measure_query_costs"]

logger = logging.getLogger(__name__)

DEFAULT_TARGET_RECALL = 0.95
"""api.md: ``n_probes=None`` aims at recall@10 >= 0.95."""

CALIBRATION_SAMPLE = 200
"""Rows used as queries: the mean recall@10 of 200 queries is known to about +-0.01 (2000
judged neighbours), and one batched search of them costs a few ms per setting."""

CALIBRATION_K = 10
SAMPLE_MARGIN = 0.01
"""The sample aims this far above the target: a 200-query mean is only known to about +-0.01,
and 2k MiniLM embeddings calibrated to exactly 0.955 gave held-out queries 0.94-0.96 from run
to run. Whether the target is *reached* (else: stored exact) is judged without the margin."""
LEAF_GROWTH = 1.5
"""Each step searches 1.5x the leaves of the last: doubling overshot (20k x 32 Gaussian needs
~45 of 141 leaves; doubling from 29 stored 58, a quarter slower per query than needed)."""
CALIBRATION_SEED = 17
MAX_REORDER = 1_600
"""Deepest exact reorder tried (8x the default 200): beyond it a tree saves little over an
exact scan anyway."""


COST_CHECK_SHARE = 0.5
"""The tree's query cost is measured against an exact scan only when the calibration searches at
least this share of the leaves. Below it the check would only cost build time: at half the
leaves (reorder 200) the tree cost <= 0.15x exact at 3k x 64 .. 100k x 128 Gaussian, and the
forced 1k-3k-row trees, the closest calls, cost 0.46-0.72x exact even at (nearly) every leaf."""
TREE_COST_LIMIT = 0.8
"""The tree is kept only when its single query costs under 0.8x an exact scan of the segment:
near parity the exact answer (recall 1.0, no AH codes in memory) is worth more, and repeated
builds moved the measured ratio by up to +-0.03 (5 builds of 1.5k x 32: 0.53-0.55). Measured
(``measure_query_costs``, us per query, tree at the calibrated setting vs exact, Gaussian,
squared L2): 100k x 128 316/316 leaves 1067 vs 6732 (0.16x); 30k x 128 173/173 leaves 386 vs
623 (0.62x); 8k x 64 89/89 leaves 95 vs 134 (0.71x); 3k x 64 55/55 leaves 63 vs 92 (0.68x);
1.5k x 32 27/30 leaves 38 vs 71 (0.54x). So none of these trees crossed the limit, even at
every leaf (by total time, which counts load spikes, 20k x 32 at 141 leaves + reorder 1600 read
0.36x): the rule is a guard for shapes and machines where ScaNN's per-query overhead wins."""
COST_QUERIES = 24
COST_ROUNDS = 3
"""``measure_query_costs`` times 24 sample queries per side in 2-3 rounds: at 100k x 128
Gaussian (every leaf) the calibration took 2.7 s instead of 1.5 s, while ScaNN's assets
serialize (17 s build); segments searching under COST_CHECK_SHARE of their leaves pay nothing."""
_CLEAR_MARGIN = 4.0


@dataclasses.dataclass(frozen=True)
class QueryCosts:
    """Microseconds per single query (``measure_query_costs``): the tree at the calibrated
    setting, an exact scan (``search_exact``, as a brute segment searches), and tree / exact."""

    tree_us: float
    exact_us: float
    ratio: float


CostProbe = Callable[[int, int], QueryCosts]
"""(leaves_to_search, reorder) -> QueryCosts; ``calibrate``'s ``probe`` (tests inject one)."""


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What ``calibrate`` measured: the params to store, whether they reach the target, the
    query costs (None when not measured) and ``fallback``: why the segment should be stored
    exact ("" to keep the tree; see ``exact_fallback``)."""

    params: SearchParams
    reached: bool
    seconds: float
    costs: QueryCosts | None = None
    fallback: str = ""

    @property
    def keep_tree(self) -> bool:
        return self.reached and not self.fallback


def exact_fallback(num_leaves: int, leaves: int, reorder: int, recall: float,
                   target_recall: float, costs: QueryCosts | None) -> str:
    """Why a calibrated tree should be stored exact instead, or "" to keep it. Pure: the
    target missed at the best setting measured; or searching >= COST_CHECK_SHARE of the leaves
    with a measured cost ratio tree / exact >= TREE_COST_LIMIT (no costs: keep the tree)."""
    if recall < target_recall:
        return (f"exact: recall@10 {recall:.3f} < target {target_recall:.2f} even at "
                f"{leaves}/{num_leaves} leaves, reorder {reorder}")
    if costs is None or leaves < COST_CHECK_SHARE * num_leaves:
        return ""
    if costs.ratio >= TREE_COST_LIMIT:
        return (f"exact: tree needs {leaves}/{num_leaves} leaves (reorder {reorder}), "
                f"{costs.ratio:.2f}x exact's cost ({costs.tree_us:.0f} vs "
                f"{costs.exact_us:.0f} us per query)")
    return ""


def measure_query_costs(scann: Any, vectors: np.ndarray, queries: np.ndarray, metric: str,
                        leaves: int, reorder: int, k: int = CALIBRATION_K) -> QueryCosts:
    """Single-query cost of the tree (``scann.search``, the segment's hot path) at ``leaves``
    and ``reorder`` vs ``search_exact`` over ``vectors`` (with precomputed norms, as a brute
    Segment has), on the first COST_QUERIES ``queries``: each query timed both ways back to
    back (which first alternates by round), up to COST_ROUNDS rounds; a query's cost is its
    fastest round (the build's serializing child and other processes share the cores: 8k x 64
    exact read 380 us in one build, 7.3 ms in the next by total time), a side's cost the
    median over queries. Wall clock: only ``exact_fallback``'s coarse limit depends on it."""
    queries = queries[:COST_QUERIES]
    norms = np.einsum("nd,nd->n", vectors, vectors) if metric != "cosine" else None
    fetch = max(1, min(k, vectors.shape[0]))
    depth = max(reorder, fetch)
    clock = time.perf_counter
    tree_us = np.full(len(queries), np.inf)
    exact_us = np.full(len(queries), np.inf)
    scann.search(queries[0], fetch, depth, leaves)  # warm both paths
    search_exact(vectors, queries[:1], fetch, metric, sqnorms=norms)
    ratio = math.nan
    for round_number in range(COST_ROUNDS):
        for i, query in enumerate(queries):
            for side in ((0, 1) if round_number % 2 == 0 else (1, 0)):
                start = clock()
                if side == 0:
                    scann.search(query, fetch, depth, leaves)
                else:
                    search_exact(vectors, query[None, :], fetch, metric, sqnorms=norms)
                spent = (clock() - start) * 1e6
                costs = tree_us if side == 0 else exact_us
                costs[i] = min(costs[i], spent)
        ratio = float(np.median(tree_us)) / max(float(np.median(exact_us)), 1e-3)
        if round_number and not (TREE_COST_LIMIT / _CLEAR_MARGIN < ratio
                                 < TREE_COST_LIMIT * _CLEAR_MARGIN):
            break  # two rounds 4x clear of the limit: a third cannot change the decision
    return QueryCosts(float(np.median(tree_us)), float(np.median(exact_us)), ratio)


def check_target_recall(value: Any) -> float:
    """``value`` as a target recall in (0, 1]. Raises InvalidArgumentError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidArgumentError(f"target_recall must be a number in (0, 1], got {value!r}")
    value = float(value)
    if not 0.0 < value <= 1.0:  # NaN fails this too
        raise InvalidArgumentError(f"target_recall must be in (0, 1], got {value!r}")
    return value


_FIRST_BLOCK = 4_096
_BLOCK_ROWS = 32_768
"""Rows scored per step (against all sample queries at once) by ``exact_neighbours``. Each
step reads its rows once (search_exact, built for few queries over a segment, read all the
rows once per 16 queries and argpartitioned every score: 0.27 s at 60k x 384, 3+ s at
1M x 128), and only scores that beat a query's current k-th best are sorted."""
_RESCORE_MARGIN = 16


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int,
                     metric: str) -> np.ndarray:
    """The ``k`` nearest rows of ``vectors`` for each query (q, k), nearest first: a running
    top-(k + margin) by the matrix-product expansion, re-scored by the direct formula
    (exact.direct_distances, as search_exact does). Cosine expects unit rows and queries."""
    n = vectors.shape[0]
    keep = min(n, k + _RESCORE_MARGIN)
    nq = queries.shape[0]
    best = np.full((nq, keep), np.inf, np.float32)  # expansion scores, |q|^2 left out
    best_rows = np.zeros((nq, keep), np.int64)
    # scores = |x|^2 - 2 q.x (L2) or -q.x (cosine): the factor rides on the queries
    scaled = queries * np.float32(-1.0 if metric == "cosine" else -2.0)
    start, step = 0, min(n, _FIRST_BLOCK)  # a small first block: every score of it sorts
    while start < n:
        block = vectors[start:start + step]
        scores = scaled @ block.T
        if metric != "cosine":
            scores += np.einsum("nd,nd->n", block, block)[None, :]
        beats = scores < best[:, -1:] if start else None  # best[:, -1]: each k-th best so far
        cols = (np.flatnonzero(beats.any(axis=0)) if beats is not None
                else np.arange(block.shape[0]))
        if cols.size:
            merged = np.concatenate([best, scores[:, cols]], axis=1)
            merged_rows = np.concatenate([best_rows, np.broadcast_to(
                start + cols, (nq, cols.size))], axis=1)
            order = np.argsort(merged, axis=1, kind="stable")[:, :keep] if merged.shape[1] \
                <= 4 * keep else _partial_order(merged, keep)
            best = np.take_along_axis(merged, order, axis=1)
            best_rows = np.take_along_axis(merged_rows, order, axis=1)
        start += step
        step = _BLOCK_ROWS
    exact = direct_distances(queries, vectors[best_rows], metric)
    order = np.argsort(exact, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(best_rows, order, axis=1)


def _partial_order(scores: np.ndarray, keep: int) -> np.ndarray:
    """Column indexes of each row's ``keep`` smallest scores, ascending."""
    part = np.argpartition(scores, keep - 1, axis=1)[:, :keep]
    inner = np.argsort(np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, inner, axis=1)


def _others(rows: np.ndarray, own: int, k: int) -> set[int]:
    """The first ``k`` of ``rows`` other than ``own`` (and other than ScaNN's padding)."""
    return set([int(r) for r in rows.tolist() if r != own and r >= 0][:k])


def calibrate(scann: Any, vectors: np.ndarray, params: SearchParams,
              target_recall: float = DEFAULT_TARGET_RECALL,
              probe: CostProbe | None = None) -> Calibration:
    """The smallest ``leaves_to_search`` (from the default up, x1.5 per step) -- and, if needed, the
    reorder depth -- at which a sample of ``vectors`` finds its exact top-10 with mean recall
    >= ``target_recall`` + SAMPLE_MARGIN through ``scann`` (the trained pybind searcher over ``vectors``).
    ``params`` is the trained segment's; the returned params differ only in leaves_to_search,
    reorder and calibrated_recall. ``reached`` False: not even every leaf at MAX_REORDER made
    the target (the params then hold the best setting measured). ``fallback`` says whether
    to store the segment exact (``exact_fallback``); the query costs it needs are measured by
    ``probe`` (default: ``measure_query_costs`` on the sample) only when the setting searches
    at least COST_CHECK_SHARE of the leaves."""
    started = time.monotonic()
    n = vectors.shape[0]
    k = max(1, min(CALIBRATION_K, n - 1))
    rng = np.random.default_rng(CALIBRATION_SEED)
    sample = np.sort(rng.choice(n, size=min(CALIBRATION_SAMPLE, n), replace=False))
    queries = np.ascontiguousarray(vectors[sample])
    # Leave-one-out: each sample row's neighbours other than itself. Counting the row as its
    # own first hit (found in its own leaf, always) read 0.953 where held-out queries got 0.941
    # (20k x 32 Gaussian): a free 1/10 per query flatters the tree.
    truth = exact_neighbours(vectors, queries, k + 1, params.metric)
    truth_sets = [_others(row, own, k) for row, own in zip(truth, sample)]

    def recall(leaves: int, reorder: int) -> float:
        found, _scores = scann.search_batched(queries, k + 1, max(reorder, k + 1), leaves,
                                              True, 256)
        hits = sum(len(truth_sets[i] & _others(found[i], sample[i], k))
                   for i in range(len(truth_sets)))
        return hits / (k * len(truth_sets))

    aim = min(1.0, target_recall + SAMPLE_MARGIN)
    num_leaves = params.num_leaves
    deepest = min(MAX_REORDER, n)
    measured: list[tuple[int, int, float]] = []

    def measure(leaves: int, reorder: int) -> float:
        got = recall(leaves, reorder)
        measured.append((leaves, reorder, got))
        return got

    def scan_leaves(reorder: int) -> tuple[int, float]:
        leaves = min(max(1, params.leaves_to_search), num_leaves)
        while True:
            got = measure(leaves, reorder)
            if got >= aim or leaves >= num_leaves:
                return leaves, got
            leaves = min(num_leaves, math.ceil(leaves * LEAF_GROWTH))

    reorder = params.reorder
    leaves, got = scan_leaves(reorder)
    best = (leaves, reorder, got)
    # Every leaf fell short: the true neighbours are outside the reordered candidates. Only a
    # deeper reorder helps; measure it at every leaf, then find the leaves it needs.
    while got < aim and reorder < deepest:
        reorder = min(deepest, reorder * 2)
        at_all = measure(num_leaves, reorder)
        if at_all > best[2]:
            best = (num_leaves, reorder, at_all)
        if at_all >= aim:
            leaves, got = scan_leaves(reorder)
            best = (leaves, reorder, got)
            break
    leaves, reorder, got = best
    reached = got >= target_recall
    costs = None
    if reached and leaves >= COST_CHECK_SHARE * num_leaves:
        costs = (probe(leaves, reorder) if probe is not None else measure_query_costs(
            scann, vectors, queries, params.metric, leaves, reorder, k))
    fallback = exact_fallback(num_leaves, leaves, reorder, got, target_recall, costs)
    seconds = time.monotonic() - started
    logger.info("calibrated %d x %d segment (%d leaves): leaves_to_search %d, reorder %d, "
                "recall@%d %.3f (target %.2f%s) in %.3fs; measured %s%s%s", n, vectors.shape[1],
                num_leaves, leaves, reorder, k, got, target_recall,
                "" if reached else ", NOT reached", seconds,
                [(lv, ro, round(r, 3)) for lv, ro, r in measured],
                "" if costs is None else f"; tree {costs.tree_us:.0f} us vs exact "
                f"{costs.exact_us:.0f} us per query ({costs.ratio:.2f}x)",
                f"; {fallback}" if fallback else "")
    calibrated = dataclasses.replace(params, leaves_to_search=leaves, reorder=reorder,
                                     calibrated_recall=round(got, 4))
    return Calibration(calibrated, reached, seconds, costs, fallback)
