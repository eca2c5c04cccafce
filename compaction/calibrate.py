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

The result lives in the segment's stored SearchParams (``leaves_to_search``, ``reorder``,
``calibrated_recall``), so a reopen searches the same way without recalibrating.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import numpy as np

from lsmvec.compaction.exact import direct_distances
from lsmvec.compaction.scann_params import SearchParams
from lsmvec.wal.errors import InvalidArgumentError

__all__ = ["DEFAULT_TARGET_RECALL", "CALIBRATION_SAMPLE", "CALIBRATION_K", "MAX_REORDER",
           "Calibration", "calibrate", "check_target_recall"]

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


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What ``calibrate`` measured: the params to store and whether they reach the target."""

    params: SearchParams
    reached: bool
    seconds: float


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
              target_recall: float = DEFAULT_TARGET_RECALL) -> Calibration:
    """The smallest ``leaves_to_search`` (from the default up, x1.5 per step) -- and, if needed, the
    reorder depth -- at which a sample of ``vectors`` finds its exact top-10 with mean recall
    >= ``target_recall`` + SAMPLE_MARGIN through ``scann`` (the trained pybind searcher over ``vectors``).
    ``params`` is the trained segment's; the returned params differ only in leaves_to_search,
    reorder and calibrated_recall. ``reached`` False: not even every leaf at MAX_REORDER made
    the target (the params then hold the best setting measured)."""
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
    seconds = time.monotonic() - started
    logger.info("calibrated %d x %d segment (%d leaves): leaves_to_search %d, reorder %d, "
                "recall@%d %.3f (target %.2f%s) in %.3fs; measured %s", n, vectors.shape[1],
                num_leaves, leaves, reorder, k, got, target_recall,
                "" if reached else ", NOT reached", seconds,
                [(lv, ro, round(r, 3)) for lv, ro, r in measured])
    calibrated = dataclasses.replace(params, leaves_to_search=leaves, reorder=reorder,
                                     calibrated_recall=round(got, 4))
    return Calibration(calibrated, reached, seconds)
