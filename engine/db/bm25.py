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
from operator import itemgetter
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


_TermList = tuple[int, dict[int, tuple[np.ndarray, np.ndarray]]]
"""One (field, term) of a query: (term number, per source s its live postings as (rows
ascending, weighted idf x tf part: the row's share of the score))."""


def _term_lists(sources: Sequence[Source], terms: list[str], fields: Sequence[str],
                weights: list[float], k1: float, b: float) -> list[_TermList]:
    """The query's (field, term) lists in (field, term) order -- the order every row's score
    is summed in."""
    out = []
    for field, weight in zip(fields, weights):
        n_docs, total = field_stats(sources, field)
        if n_docs == 0:
            continue
        avgdl = total / n_docs
        for t, term in enumerate(terms):
            found: dict[int, tuple[np.ndarray, np.ndarray, list | None]] = {}
            for s, source in enumerate(sources):
                fp = source.index.field(field)
                got = _postings(fp, term, avgdl, k1, b) if fp is not None else None
                if got is None:
                    continue
                rows, part, slot = got
                if source.live is not None:
                    keep = source.live[rows]
                    rows, part, slot = rows[keep], part[keep], None
                if rows.size:
                    found[s] = (rows, part, slot)
            df = sum(len(got[0]) for got in found.values())
            if df:
                widf = weight * idf(n_docs, df)
                out.append((t, {s: (rows, _weighted(part, widf, slot))
                                 for s, (rows, part, slot) in found.items()}))
    return out


def _weighted(part: np.ndarray, widf: float, slot: list | None) -> np.ndarray:
    """widf * part, kept in `slot` (a cache entry's [(widf, product)], replaced in one
    assignment: threads share it) while widf holds."""
    held = slot[0] if slot is not None else None
    if held is not None and held[0] == widf:
        return held[1]
    product = widf * part
    if slot is not None:
        product.setflags(write=False)
        slot[0] = (widf, product)
    return product


def search(sources: Sequence[Source], terms: Sequence[str], fields: Sequence[str], *,
           weights: Sequence[float] | None = None, k1: float = DEFAULT_K1, b: float = DEFAULT_B,
           require_all_terms: bool = False, top_k: int | None = None) -> Hits:
    """The rows matching `terms` (already analysed, distinct) in `fields`, scored, best first;
    top_k None or 0: all of them."""
    terms = list(dict.fromkeys(terms))
    weights = [1.0] * len(fields) if weights is None else [float(w) for w in weights]
    if len(weights) != len(fields):
        raise ValueError("one weight per searched field")
    lists = _term_lists(sources, terms, fields, weights, k1, b)
    src, rows, vals = _matches(sources, lists, len(terms), require_all_terms, top_k)
    if top_k and vals.size > top_k:
        # Keep every row tied with the k-th score, so the tie order below stays exact.
        cut = np.partition(vals, vals.size - top_k)[vals.size - top_k]
        keep = vals >= cut
        src, rows, vals = src[keep], rows[keep], vals[keep]
    order = np.lexsort((rows, src, -vals))
    if top_k:
        order = order[:top_k]
    return Hits(src[order], rows[order], vals[order])


def _matches(sources: Sequence[Source], lists: list[_TermList], n_terms: int,
             require_all_terms: bool, top_k: int | None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source, row, score) of the matching rows a filter allows: all of them, or (top_k) at
    least every row that can be among the top_k or tie with the k-th. Per source, the postings'
    rows and score contributions summed per row, O(postings)."""
    contrib_rows: list[list[np.ndarray]] = [[] for _ in sources]
    contrib: list[list[np.ndarray]] = [[] for _ in sources]
    holders: list[list[list[np.ndarray]]] = [[[] for _ in range(n_terms)] for _ in sources]
    for term, found in lists:
        for s, (rows, part) in found.items():  # part: weighted
            contrib_rows[s].append(rows)
            contrib[s].append(part)
            holders[s][term].append(rows)
    out_src, out_rows, out_scores = [], [], []
    for s, source in enumerate(sources):
        if not contrib_rows[s]:
            continue
        all_rows, all_contrib = np.concatenate(contrib_rows[s]), np.concatenate(contrib[s])
        if top_k and not require_all_terms and all_rows.size * DENSE_SHARE >= source.index.n:
            rows, sums = _top_of_dense(all_rows, all_contrib, source, top_k,
                                       len(contrib_rows[s]))
            out_src.append(np.full(rows.size, s, np.int32))
            out_rows.append(rows.astype(np.int32))
            out_scores.append(sums)
            continue
        rows, sums = _sum_per_row(all_rows, all_contrib, source.index.n)
        keep = np.ones(rows.size, bool)
        if require_all_terms:
            count = np.zeros(rows.size, np.int64)
            for per_term in holders[s]:
                if per_term:  # a term in no field of this source: no row here holds them all
                    count[np.searchsorted(rows, np.unique(np.concatenate(per_term)))] += 1
            keep = count == n_terms
        if source.allowed is not None:
            keep &= source.allowed[rows]
        out_src.append(np.full(int(keep.sum()), s, np.int32))
        out_rows.append(rows[keep].astype(np.int32))
        out_scores.append(sums[keep])
    return _joined(out_src, out_rows, out_scores)


def _top_of_dense(rows: np.ndarray, values: np.ndarray, source: Source, k: int, n_lists: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(rows ascending, sums) of a superset of source's k best allowed rows, ties with the k-th
    included, without a pass over every row of the source: the sums land in a dense array;
    T = the (k * n_lists)-th largest sum read at the postings (a row appears there at most
    n_lists times, so at least k distinct rows sum to >= T: T is at most the k-th best) keeps
    the rows summing to >= T. Sums as _sum_per_row's (the same bits). At 60k rows and 12.6k
    postings: ~70 us, against ~180 us for every matching row's sum (a mask of every row, its
    nonzero, a partition of ~11k sums)."""
    dense = np.bincount(rows, values, minlength=source.index.n)
    if source.allowed is not None:
        rows = rows[source.allowed.take(rows)]
    at = dense.take(rows)  # take: 16 us at 12.6k intp rows, [] 23 us
    want = k * n_lists
    if at.size > want:
        cut = np.partition(at, at.size - want)[at.size - want]
        rows = rows[at >= cut]
    rows = np.unique(rows)
    return rows, dense.take(rows)


def _joined(out_src: list, out_rows: list, out_scores: list
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not out_src:
        return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float64)
    return np.concatenate(out_src), np.concatenate(out_rows), np.concatenate(out_scores)


IMPACTS_PER_FIELD = 2048
"""Terms whose tf parts one field of a segment keeps (db/text_index.FieldPostings.impacts);
past it the cache starts again. A sentence query's terms repeat across queries (Zipf): at 60k
rows the 8-term queries of tools/bench_hybrid spent ~40% of their time on these few numpy
passes per term."""


def _postings(fp: _Field, term: str, avgdl: float, k1: float, b: float
              ) -> tuple[np.ndarray, np.ndarray, list | None] | None:
    """(rows, tf part, cache slot for the weighted part) of `term` in field `fp`, or None. The
    tf part: tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl)) of every posting (float64,
    the same operations in the same order whether cached or not). A segment's field caches it
    with the rows (no binary search of the terms next time) while avgdl, k1 and b are
    unchanged: avgdl moves with every write, so a stale entry is simply recomputed."""
    cache = getattr(fp, "impacts", None)
    if cache is not None:
        hit = cache.get(term)
        if hit is not None and hit[0] == avgdl and hit[1] == k1 and hit[2] == b:
            return hit[3], hit[4], hit[5]
    got = fp.postings(term)
    if got is None:
        return None
    rows, tfs = got
    rows = rows.astype(np.intp)  # numpy indexes with intp: int32 rows are converted at every use
    tf = tfs.astype(np.float64)
    norm = k1 * (1.0 - b + b * fp.lengths[rows].astype(np.float64) / avgdl)
    part = tf * (k1 + 1.0) / (tf + norm)
    if cache is None:
        return rows, part, None
    if len(cache) >= IMPACTS_PER_FIELD:
        cache.clear()
    rows.setflags(write=False)
    part.setflags(write=False)
    slot: list = [None]
    cache[term] = (avgdl, k1, b, rows, part, slot)
    return rows, part, slot


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
    get = fused.get
    for rank, key in enumerate(vector_ids, 1):
        fused[key] = get(key, 0.0) + alpha / (rrf_k + rank)
    beta = 1.0 - alpha
    for rank, key in enumerate(text_ids, 1):
        fused[key] = get(key, 0.0) + beta / (rrf_k + rank)
    # sorted is stable, reverse=True too: ties keep insertion order
    ranked = sorted(fused.items(), key=itemgetter(1), reverse=True)
    if ranked and ranked[-1][1] <= 0:
        ranked = [item for item in ranked if item[1] > 0]
    return ranked[:top_k] if top_k else ranked
