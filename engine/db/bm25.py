"""BM25 over every source of an index at once (segments' TextIndex + the memtable's), with
corpus statistics that are global and live, and the weighted reciprocal-rank fusion of a text
ranking with a vector ranking.

Per searched field f (Lucene's BM25, idf as Lucene >= 6):
    N_f      = live rows, over all sources, with at least one term in f
    df_f(t)  = live rows, over all sources, whose f holds term t
    avgdl_f  = (sum of f's length over live rows) / N_f
    idf      = ln(1 + (N_f - df + 0.5) / (df + 0.5))
    score    = sum_f weight_f * sum_t idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl_f))
Query terms are the distinct analysed terms (request/analyzer.query_terms). A row matches when
it holds any query term in any searched field (every term, in some searched field, with
require_all_terms). Dead rows (deleted, superseded: `live` False) count nowhere; rows a filter
rejects (`allowed` False) still count in the statistics (a filter narrows the answer, it does
not change the corpus) but are not returned. Nothing depends on how rows are split into
sources: every statistic is a sum over sources, every score a function of those sums and the
row's own counts (tests/db/test_bm25.py checks this against a plain-Python oracle).

Vectorised: per (field, term, source) one numpy pass over that term's postings; no Python
loop per posting. Scores are float64 (the oracle agrees to ~1e-12; callers may cast).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Protocol, Sequence

import numpy as np

DEFAULT_K1 = 1.2
DEFAULT_B = 0.75
DEFAULT_ALPHA = 0.5
DEFAULT_RRF_K = 60.0
DEFAULT_WINDOW_MULT = 3


class _Field(Protocol):
    lengths: np.ndarray

    def postings(self, term: str) -> tuple[np.ndarray, np.ndarray] | None: ...


class _Index(Protocol):
    n: int

    def field(self, name: str) -> _Field | None: ...


@dataclass(frozen=True)
class Source:
    """One segment's (or the memtable's) text index. `live`: rows that exist (False: deleted
    or superseded), None for all. `allowed`: rows a filter admits, None for all. `live_key`:
    names this `live` set for the field's statistics cache (the same key, the same set: e.g. a
    segment's count of dead rows, which only grows); None: not cached."""
    index: _Index
    live: np.ndarray | None = None
    allowed: np.ndarray | None = None
    live_key: Hashable | None = None


@dataclass(frozen=True)
class Hits:
    """Matching rows, best first (ties: lower source, then lower row)."""
    sources: np.ndarray  # int32: position in the `sources` list given
    rows: np.ndarray     # int32: row within that source
    scores: np.ndarray   # float64


def idf(n: float, df: float) -> float:
    return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


def field_stats(sources: Sequence[Source], field: str) -> tuple[int, int]:
    """(N, total length) of `field` over live rows of every source."""
    count = total = 0
    for source in sources:
        fp = source.index.field(field)
        if fp is None:
            continue
        cache = getattr(fp, "stats", None) if source.live_key is not None else None
        hit = cache.get(source.live_key) if cache is not None else None
        if hit is None:
            lengths = fp.lengths if source.live is None else fp.lengths[source.live]
            hit = int(np.count_nonzero(lengths)), int(lengths.sum(dtype=np.int64))
            if cache is not None:
                if len(cache) >= 64:
                    cache.clear()
                cache[source.live_key] = hit
        count += hit[0]
        total += hit[1]
    return count, total


def search(sources: Sequence[Source], terms: Sequence[str], fields: Sequence[str], *,
           weights: Sequence[float] | None = None, k1: float = DEFAULT_K1, b: float = DEFAULT_B,
           require_all_terms: bool = False, top_k: int | None = None) -> Hits:
    """The rows matching `terms` (already analysed, distinct) in `fields`, scored, best first;
    top_k None or 0: all of them."""
    terms = list(dict.fromkeys(terms))
    weights = [1.0] * len(fields) if weights is None else [float(w) for w in weights]
    if len(weights) != len(fields):
        raise ValueError("one weight per searched field")
    # Per source, the postings' rows and score contributions, and per term the rows holding
    # it: summed per row at the end, O(postings) -- no array of every row per query.
    contrib_rows: list[list[np.ndarray]] = [[] for _ in sources]
    contrib: list[list[np.ndarray]] = [[] for _ in sources]
    holders: list[list[list[np.ndarray]]] = [[[] for _ in terms] for _ in sources]
    for field, weight in zip(fields, weights):
        n_docs, total = field_stats(sources, field)
        if n_docs == 0:
            continue
        avgdl = total / n_docs
        for t, term in enumerate(terms):
            found = []
            for s, source in enumerate(sources):
                fp = source.index.field(field)
                got = fp.postings(term) if fp is not None else None
                if got is None:
                    continue
                rows, tfs = got
                part = _tf_part(fp, term, rows, tfs, avgdl, k1, b)
                if source.live is not None:
                    keep = source.live[rows]
                    rows, part = rows[keep], part[keep]
                if rows.size:
                    found.append((s, rows, part))
            df = sum(len(f[1]) for f in found)
            if not df:
                continue
            weighted_idf = weight * idf(n_docs, df)
            for s, rows, part in found:
                contrib_rows[s].append(rows)
                contrib[s].append(weighted_idf * part)
                holders[s][t].append(rows)
    out_src, out_rows, out_scores = [], [], []
    for s, source in enumerate(sources):
        if not contrib_rows[s]:
            continue
        rows, sums = _sum_per_row(np.concatenate(contrib_rows[s]), np.concatenate(contrib[s]),
                                  source.index.n)
        keep = np.ones(rows.size, bool)
        if require_all_terms:
            count = np.zeros(rows.size, np.int64)
            for per_term in holders[s]:
                if per_term:  # a term in no field of this source: no row here holds them all
                    count[np.searchsorted(rows, np.unique(np.concatenate(per_term)))] += 1
            keep = count == len(terms)
        if source.allowed is not None:
            keep &= source.allowed[rows]
        out_src.append(np.full(int(keep.sum()), s, np.int32))
        out_rows.append(rows[keep].astype(np.int32))
        out_scores.append(sums[keep])
    src = np.concatenate(out_src) if out_src else np.zeros(0, np.int32)
    rows = np.concatenate(out_rows) if out_rows else np.zeros(0, np.int32)
    vals = np.concatenate(out_scores) if out_scores else np.zeros(0, np.float64)
    if top_k and vals.size > top_k:
        # Keep every row tied with the k-th score, so the tie order below stays exact.
        cut = np.partition(vals, vals.size - top_k)[vals.size - top_k]
        keep = vals >= cut
        src, rows, vals = src[keep], rows[keep], vals[keep]
    order = np.lexsort((rows, src, -vals))
    if top_k:
        order = order[:top_k]
    return Hits(src[order], rows[order], vals[order])


IMPACTS_PER_FIELD = 2048
"""Terms whose tf parts one field of a segment keeps (db/text_index.FieldPostings.impacts);
past it the cache starts again. A sentence query's terms repeat across queries (Zipf): at 60k
rows the 8-term queries of tools/bench_hybrid spent ~40% of their time on these few numpy
passes per term."""


def _tf_part(fp: _Field, term: str, rows: np.ndarray, tfs: np.ndarray, avgdl: float, k1: float,
             b: float) -> np.ndarray:
    """tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl)) of every posting of `term` (float64,
    the same operations in the same order whether cached or not). Cached on the field while
    avgdl, k1 and b are unchanged: avgdl moves with every write, so a stale entry is simply
    recomputed."""
    cache = getattr(fp, "impacts", None)
    if cache is not None:
        hit = cache.get(term)
        if hit is not None and hit[0] == avgdl and hit[1] == k1 and hit[2] == b:
            return hit[3]
    tf = tfs.astype(np.float64)
    norm = k1 * (1.0 - b + b * fp.lengths[rows].astype(np.float64) / avgdl)
    part = tf * (k1 + 1.0) / (tf + norm)
    if cache is not None:
        if len(cache) >= IMPACTS_PER_FIELD:
            cache.clear()
        part.setflags(write=False)
        cache[term] = (avgdl, k1, b, part)
    return part


DENSE_SHARE = 16
"""A source's postings are summed in a dense per-row array once they number at least
1/DENSE_SHARE of its rows, else sorted (np.unique). Measured (one core, float64 sums, best of
20): 60k rows, 7.5k postings: 93 vs 281 us; 100k rows, 25k postings: 224 vs 758 us; 1M rows,
62.5k postings: 1.67 vs 1.85 ms, 15.6k postings: 0.67 vs 0.45 ms (sorting wins below ~1/16)."""


def _sum_per_row(rows: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(distinct rows ascending, sum of `values` per row). Both ways add a row's values in the
    same (input) order, so the sums are bit-identical."""
    if rows.size * DENSE_SHARE >= n:
        dense = np.bincount(rows, values, minlength=n)
        hit = np.zeros(dense.size, bool)
        hit[rows] = True  # a row whose values sum to 0 (a 0 field weight) still matched
        distinct = np.flatnonzero(hit)
        return distinct, dense[distinct]
    distinct, where = np.unique(rows, return_inverse=True)
    return distinct, np.bincount(where, values, minlength=distinct.size)


def window(top_k: int, window_mult: int | None = None) -> int:
    """How many candidates each side of a fused query contributes."""
    return top_k * (DEFAULT_WINDOW_MULT if window_mult is None else window_mult)


def fuse(vector_ids: Sequence[Hashable], text_ids: Sequence[Hashable], *,
         alpha: float | None = None, rrf_k: float | None = None,
         top_k: int | None = None) -> list[tuple[Hashable, float]]:
    """Weighted reciprocal-rank fusion of two rankings (best first, ranks from 1):
    score = alpha / (rrf_k + rank_vector) + (1 - alpha) / (rrf_k + rank_text), a side the id
    is missing from adding 0. Best first; ties keep first appearance (vector list, then text).
    An id scoring 0 (only on the side alpha gives no weight) is left out."""
    alpha = DEFAULT_ALPHA if alpha is None else float(alpha)
    rrf_k = DEFAULT_RRF_K if rrf_k is None else float(rrf_k)
    if not 0.0 <= alpha <= 1.0 or not rrf_k > 0:
        raise ValueError("alpha must be in [0, 1] and rrf_k > 0")
    fused: dict[Hashable, float] = {}
    for rank, key in enumerate(vector_ids, 1):
        fused.setdefault(key, 0.0)
        fused[key] += alpha / (rrf_k + rank)
    for rank, key in enumerate(text_ids, 1):
        fused[key] = fused.get(key, 0.0) + (1.0 - alpha) / (rrf_k + rank)
    ranked = sorted((item for item in fused.items() if item[1] > 0),
                    key=lambda item: -item[1])  # sorted is stable: ties keep insertion order
    return ranked[:top_k] if top_k else ranked
