"""How a segment is searched, chosen from its size: exact numpy scan or ScaNN tree + AH.

A pure function of (n, dim, metric, overrides) so it can be table-tested; the numbers below are
named with the measurement or reason behind them.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from lsmvec.wal.errors import InvalidArgumentError

__all__ = [
    "METRICS",
    "KIND_BRUTE",
    "KIND_TREE_AH",
    "BRUTE_FORCE_MAX_ROWS",
    "BRUTE_FORCE_MAX_FLOATS",
    "MIN_TREE_ROWS",
    "MIN_ROWS_PER_LEAF",
    "DEFAULT_REORDER",
    "REORDER_PRECISIONS",
    "SearchParams",
    "TUNING_KEYS",
    "choose_params",
    "scann_distance",
    "leaves_for_probes",
    "scann_scores_to_distances",
]

logger = logging.getLogger(__name__)

METRICS = ("euclidean", "squared_euclidean", "cosine")
KIND_BRUTE = "brute"
KIND_TREE_AH = "tree_ah"

BRUTE_FORCE_MAX_ROWS = 20_000
"""Below this many rows a segment is scanned exactly with numpy: one scan of such a segment
costs about what a ScaNN search costs (tens of microseconds at small dims), exact answers are
worth more than a training run, and flushed memtables are this small anyway."""

BRUTE_FORCE_MAX_FLOATS = 4_000_000
"""...but only while n * dim stays under 4M floats (16 MiB): a single-query numpy scan reads
every row, ~150-250 us at this size on the reference 2-core machine, about twice a ScaNN search;
beyond that a trained tree is clearly faster (20k x 384 takes ~750 us exact)."""

MIN_TREE_ROWS = 1_000
"""A tree needs rows to partition: with fewer, even a forced ``tree_ah`` build is exact instead
(ScaNN would make a handful of tiny leaves and gain nothing)."""

MIN_ROWS_PER_LEAF = 50
"""ScaNN's default ``min_partition_size``: more leaves than n / 50 only makes empty leaves."""

DEFAULT_REORDER = 200
"""AH candidates re-scored exactly by ScaNN: with 2-dim AH blocks the true top-10 sits well
inside the first 200 approximate candidates, so the reorder step costs recall nothing."""

DEFAULT_SEARCH_FRACTION = 0.20
"""Share of leaves a calibration starts from (compaction/calibrate.py doubles it until a sample
of the segment's rows reaches the target recall; it never searches fewer). Measured: on 60k
real MiniLM embeddings, 50 of 245 leaves (20%) gave recall@10 ~0.95 even with a short reorder
(design.md); clustered synthetic data reaches >= 0.98 with 10%; Gaussian data needs far more
(20k x 32: 0.80 at 20%, hence the calibration)."""

MIN_DEFAULT_LEAVES_TO_SEARCH = 8
"""Small trees still search a few leaves: neighbours near a leaf boundary live next door."""

DEFAULT_DIMS_PER_BLOCK = 2
LOW_DIM = 128
"""At or below this dimension AH uses 1 dim per block: with 2, clustered sets capped recall@10
at 0.93 whatever the leaves searched (16-d x 25k and 128-d x 200k alike: the true neighbours
fell outside the 200 reordered candidates); with 1 both reached 1.0 at no loss of query speed
(200k x 128: 435 vs 638 us per query on a loaded machine; build 24.5 vs 16.4 s)."""
"""2 dims per 4-bit AH block: ScaNN's recommended accuracy setting for reordered search."""

DOT_ANISOTROPIC_THRESHOLD = 0.2
"""ScaNN's recommended anisotropic quantization threshold for dot-product (MIPS) scoring."""

MAX_TRAINING_SAMPLE = 100_000
"""ScaNN's own default sample for k-means and AH training; bigger buys little and costs time."""

REORDER_PRECISIONS = ("float32", "bfloat16", "int8")
"""What ScaNN's exact reorder scores against (``ReorderType``): the float32 rows (4 bytes a
dimension), bfloat16 (2) or int8 with per-dimension multipliers (1). Only the float32 reorder
keeps ScaNN's float32 copy of the rows: measured at 200k x 128 after a load, ScaNN resident
123 MB (float32), 72 MB (bfloat16), 47 MB (int8) for 102 MB of float32 rows."""

TUNING_KEYS = frozenset({
    "kind", "leaves_to_search", "reorder", "training_sample_size", "training_iterations",
    "dims_per_block", "anisotropic_threshold", "reorder_precision",
})
"""Overrides accepted by ``choose_params`` (and ``build_segment(**tuning)``)."""


@dataclass(frozen=True)
class SearchParams:
    """How one segment is built and searched. ``distance`` is ScaNN's name for the metric."""

    kind: str
    metric: str
    distance: str
    num_leaves: int = 0
    leaves_to_search: int = 0
    reorder: int = 0
    training_sample_size: int = 0
    training_iterations: int = 0
    dims_per_block: int = 0
    anisotropic_threshold: float = float("nan")
    calibrated_recall: float = float("nan")
    """Mean recall@10 measured at build time with ``leaves_to_search`` and ``reorder``
    (compaction/calibrate.py); NaN when not calibrated (exact segments, explicit leaves, or a
    segment written before calibration existed)."""
    reorder_precision: str = "float32"
    """One of REORDER_PRECISIONS: what the exact reorder scores against (a segment written
    before the field existed: float32)."""
    fallback: str = ""
    """Why a segment that was trained is stored exact instead (compaction/calibrate.py
    ``exact_fallback``), e.g. "exact: tree needs 55/55 leaves (reorder 200), 1.10x exact's
    cost"; "" otherwise."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (NaN becomes None)."""
        data = asdict(self)
        for name in _NAN_FIELDS:
            if math.isnan(data[name]):
                data[name] = None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchParams:
        """Inverse of ``as_dict``. Raises KeyError / TypeError on a malformed mapping."""
        fields = dict(data)
        for name in _NAN_FIELDS:
            if fields.get(name) is None:
                fields[name] = float("nan")
        return cls(**fields)


_NAN_FIELDS = ("anisotropic_threshold", "calibrated_recall")


def scann_distance(metric: str) -> str:
    """ScaNN's distance for an lsmvec metric: squared L2 for both L2 metrics; dot product for
    cosine (the engine stores unit vectors, so 1 - dot is the cosine distance).
    Raises InvalidArgumentError for an unknown metric."""
    if metric == "cosine":
        return "dot_product"
    if metric in ("euclidean", "squared_euclidean"):
        return "squared_l2"
    raise InvalidArgumentError(f"unknown metric {metric!r}; expected one of {METRICS}")


def choose_params(n: int, dim: int, metric: str, *, n_lists: int | None = None,
                  **tuning: Any) -> SearchParams:
    """The build/search configuration for a segment of ``n`` rows of ``dim`` floats.

    ``kind`` may be "auto" (default: exact below the brute-force limits, else tree + AH),
    "brute" or "tree_ah" (a forced tree below MIN_TREE_ROWS is exact instead). ``n_lists``
    overrides the number of leaves (clamped to 1 .. n / MIN_ROWS_PER_LEAF). Raises
    InvalidArgumentError for an unknown metric or tuning key, or non-positive sizes.
    """
    unknown = set(tuning) - TUNING_KEYS
    if unknown:
        raise InvalidArgumentError(f"unknown segment tuning option(s): {sorted(unknown)}")
    if n < 1 or dim < 1:
        raise InvalidArgumentError(f"a segment needs n >= 1 and dim >= 1, got n={n} dim={dim}")
    distance = scann_distance(metric)
    precision = tuning.get("reorder_precision") or "float32"
    if precision not in REORDER_PRECISIONS:
        raise InvalidArgumentError(f"reorder_precision must be one of {REORDER_PRECISIONS}, "
                                   f"got {precision!r}")
    for name in TUNING_KEYS - {"kind", "anisotropic_threshold", "reorder_precision"}:
        _positive(tuning, name, 1)  # refuse a bad value even where it would not be used
    kind = tuning.get("kind", "auto")
    if kind not in ("auto", KIND_BRUTE, KIND_TREE_AH):
        raise InvalidArgumentError(f"kind must be 'auto', 'brute' or 'tree_ah', got {kind!r}")
    if kind == "auto":
        small = n < BRUTE_FORCE_MAX_ROWS and n * dim <= BRUTE_FORCE_MAX_FLOATS
        kind = KIND_BRUTE if small or n < MIN_TREE_ROWS else KIND_TREE_AH
    elif kind == KIND_TREE_AH and n < MIN_TREE_ROWS:
        logger.info("segment of %d rows is too small for a tree; building it exact", n)
        kind = KIND_BRUTE
    if kind == KIND_BRUTE:
        return SearchParams(kind=KIND_BRUTE, metric=metric, distance=distance)

    max_leaves = max(1, n // MIN_ROWS_PER_LEAF)
    wanted = n_lists if n_lists is not None else round(math.sqrt(n))
    if wanted < 1:
        raise InvalidArgumentError(f"n_lists must be >= 1, got {n_lists}")
    num_leaves = min(int(wanted), max_leaves)
    default_search = max(MIN_DEFAULT_LEAVES_TO_SEARCH,
                         math.ceil(DEFAULT_SEARCH_FRACTION * num_leaves))
    leaves_to_search = _positive(tuning, "leaves_to_search", default_search)
    anisotropic = tuning.get("anisotropic_threshold")
    if anisotropic is None:
        anisotropic = DOT_ANISOTROPIC_THRESHOLD if distance == "dot_product" else float("nan")
    return SearchParams(
        kind=KIND_TREE_AH,
        metric=metric,
        distance=distance,
        num_leaves=num_leaves,
        leaves_to_search=min(leaves_to_search, num_leaves),
        reorder=_positive(tuning, "reorder", DEFAULT_REORDER),
        training_sample_size=min(n, _positive(tuning, "training_sample_size",
                                              max(MAX_TRAINING_SAMPLE, 64 * num_leaves))),
        training_iterations=_positive(tuning, "training_iterations", 12),
        dims_per_block=min(dim, _positive(tuning, "dims_per_block",
                                                         1 if dim <= LOW_DIM else DEFAULT_DIMS_PER_BLOCK)),
        anisotropic_threshold=float(anisotropic),
        reorder_precision=precision,
    )


def _positive(tuning: Mapping[str, Any], name: str, default: int) -> int:
    value = tuning.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def leaves_for_probes(params: SearchParams, n_probes: int | None) -> int:
    """ScaNN ``leaves_to_search`` for a query's ``n_probes`` (None = the segment's default),
    clamped to 1 .. num_leaves so any positive value is meaningful."""
    if n_probes is None:
        return params.leaves_to_search
    return min(max(1, int(n_probes)), params.num_leaves)


def scann_scores_to_distances(metric: str, scores: np.ndarray) -> np.ndarray:
    """ScaNN's scores as lsmvec distances: dot product -> 1 - dot; squared L2 as is for
    "squared_euclidean", its square root for "euclidean" (negative rounding clamped to 0)."""
    if metric == "cosine":
        return (1.0 - scores).astype(np.float32, copy=False)
    if metric == "squared_euclidean":
        return np.maximum(scores, 0.0).astype(np.float32, copy=False)
    if metric == "euclidean":
        return np.sqrt(np.maximum(scores, 0.0)).astype(np.float32, copy=False)
    raise InvalidArgumentError(f"unknown metric {metric!r}; expected one of {METRICS}")
