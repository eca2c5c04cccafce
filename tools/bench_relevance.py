"""`python -m lsmvec.tools.bench_relevance`: retrieval quality on a real judged collection --
nDCG@10 (and recall@100) of text-only, vector-only (MiniLM) and hybrid queries, through the
public API only.

    python -m lsmvec.tools.bench_relevance [--floor 2] [--dir DIR] [--no-train]

Collection: tools/relevance_data.py (the Lee corpus shipped in the gensim wheel: 350 news
articles, 50 query articles, graded human judgements; query-by-document, each query's own article
filtered out of its ranking). Embeddings: all-MiniLM-L6-v2 from the offline bundled model
(lsmvec.embedding resolves it), cached under ~/.cache/lsmvec-bench/ keyed by the texts' hash.

Index: Client(dir).create_index(..., dimension=384, metric="cosine", text_fields=["body"]),
items {"id", "vector", "metadata": {"body", "doc"}}. Every configuration runs on the index as
upserted and flushed (state "flushed") and again after index.train() (state "trained", unless
--no-train); each state's line says training_state() and how many of the vector-only top-10 rows
equal numpy's exact cosine top-10 (so: exact or approximate). Per state, one JSON line each for:
  text-only  query(text=q, top_k=10)
  vector     query(query_vectors=emb(q), top_k=10)
  hybrid     query(query_vectors=emb(q), text=q, top_k=10) with DEFAULT alpha/rrf_k/window_mult
  sweep      the same with alpha = 0.3 / 0.5 / 0.7 (information only: tuned on these queries it
             would not be a default)
with mean nDCG@10 (linear gain = grade, log2 discount, ideal from the qrels), mean recall@100
(its own top_k=100 call) and, for hybrid, per-query wins/ties/losses against text, vector and the
better of the two. Also a "random" line (expected nDCG@10 of a shuffled ranking) as the floor,
and the same nDCG@10 under the lenient grading (floor=1) from the same rankings, and a
"hybrid_paired" line: mean per-query nDCG@10 difference hybrid - text / - vector with a 95%
bootstrap interval over queries (2,000 resamples, seed 0). Queries with no relevant document under
a grading are left out of its means (and counted in the line).
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import argparse
import hashlib
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from lsmvec.tools.relevance_data import Judged, load_lee, ndcg_at_k, recall_at_k

__all__ = ["ALPHAS", "embed_cached", "rank_all", "score", "run", "main"]

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
ALPHAS = (0.3, 0.5, 0.7)
K, RECALL_K = 10, 100
KEY = b"relevance-bench-key-0123456789ab"  # 32 bytes: the benchmark's index key, not a secret
RANDOM_SHUFFLES = 200
BOOTSTRAP = 2000


def embed_cached(texts: list[str], folder: Path, say: Callable[[str], None]) -> np.ndarray:
    """(len(texts), 384) float32 MiniLM embeddings, from `folder` when the same texts were
    embedded before (the file name carries a hash of the model name and every text)."""
    digest = hashlib.sha256("\x00".join([MODEL_NAME, *texts]).encode("utf-8")).hexdigest()[:16]
    path = folder / f"relevance-{MODEL_NAME}-{digest}.npy"
    if path.is_file():
        out = np.load(path, allow_pickle=False)
        if out.shape[0] == len(texts):
            return out
    from lsmvec.embedding import load_model
    started = time.perf_counter()
    out = load_model(MODEL_NAME).embed(texts)
    say(f"embedded {len(texts)} texts with {MODEL_NAME} in {time.perf_counter() - started:.1f}s")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out, allow_pickle=False)
    os.replace(tmp, path)
    return out


def rank_all(index: Any, judged: Judged, qvecs: dict[str, np.ndarray], how: str, top_k: int,
             alpha: float | None = None) -> dict[str, list[str]]:
    """{qid: ranked doc ids} for one query form; each query's own article is filtered out."""
    out = {}
    for qid, text in judged.queries.items():
        kw: dict[str, Any] = {"top_k": top_k, "filters": {"doc": {"$ne": judged.query_doc[qid]}}}
        if how in ("vector", "hybrid"):
            kw["query_vectors"] = qvecs[qid]
        if how in ("text", "hybrid"):
            kw["text"] = text
        if alpha is not None:
            kw["alpha"] = alpha
        out[qid] = [row["id"] for row in index.query(**kw)]
    return out


def per_query(rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]],
              measure: Callable[..., float], k: int) -> dict[str, float]:
    """measure(ranking, judged, k) per query that has a relevant document."""
    return {qid: measure(ranking, qrels[qid], k) for qid, ranking in rankings.items()
            if any(g > 0 for g in qrels[qid].values())}


def score(rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, Any]:
    ndcg = per_query(rankings, qrels, ndcg_at_k, K)
    return {"ndcg@10": round(statistics.fmean(ndcg.values()), 4), "queries": len(ndcg),
            "per_query": ndcg}


def wins(a: dict[str, float], b: dict[str, float], eps: float = 1e-9) -> dict[str, int]:
    diffs = [a[q] - b[q] for q in a]
    return {"wins": sum(d > eps for d in diffs), "ties": sum(abs(d) <= eps for d in diffs),
            "losses": sum(d < -eps for d in diffs)}


def random_floor(judged: Judged, qrels: dict[str, dict[str, int]], seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    ids = list(judged.docs)
    means = []
    for _ in range(RANDOM_SHUFFLES):
        order = [ids[j] for j in rng.permutation(len(ids))]
        rankings = {q: [d for d in order if d != judged.query_doc[q]][:K] for q in judged.queries}
        means.append(statistics.fmean(per_query(rankings, qrels, ndcg_at_k, K).values()))
    return round(statistics.fmean(means), 4)


def paired(a: dict[str, float], b: dict[str, float], seed: int = 0) -> dict[str, float]:
    """Mean of a - b over queries and its 95% percentile-bootstrap interval."""
    d = np.array([a[q] - b[q] for q in a])
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (BOOTSTRAP, len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": round(float(d.mean()), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)]}


def exact_top(judged: Judged, vecs: np.ndarray, qvecs: dict[str, np.ndarray]
              ) -> dict[str, list[str]]:
    """numpy's exact cosine top-K per query, own article left out: the oracle for the index."""
    ids = list(judged.docs)
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    out = {}
    for qid, q in qvecs.items():
        sims = unit @ (q / np.linalg.norm(q))
        order = [ids[j] for j in np.argsort(-sims, kind="stable")]
        out[qid] = [d for d in order if d != judged.query_doc[qid]][:K]
    return out


def build(client: Any, name: str, judged: Judged, doc_vecs: np.ndarray) -> Any:
    index = client.create_index(name, KEY, dimension=doc_vecs.shape[1], metric="cosine",
                                text_fields=["body"])
    index.upsert([{"id": doc_id, "vector": doc_vecs[j], "metadata": {"body": text, "doc": doc_id}}
                  for j, (doc_id, text) in enumerate(judged.docs.items())])
    index.flush()
    return index


def configurations() -> Iterable[tuple[str, str, float | None]]:
    yield "text", "text", None
    yield "vector", "vector", None
    yield "hybrid", "hybrid", None
    for alpha in ALPHAS:
        yield f"hybrid_alpha_{alpha}", "hybrid", alpha


def measure_state(index: Any, state: str, judged: Judged, lenient: Judged,
                  qvecs: dict[str, np.ndarray], oracle: dict[str, list[str]],
                  progress: Callable[[Iterable], Iterable]) -> list[dict[str, Any]]:
    vector = rank_all(index, judged, qvecs, "vector", K)
    out: list[dict[str, Any]] = [{
        "what": "index", "state": state, "training_state": index.training_state(),
        "vector_top10_equal_to_exact": sum(len(set(vector[q]) & set(oracle[q])) for q in oracle),
        "of": K * len(oracle)}]
    scored = {}
    for label, how, alpha in progress(list(configurations())):
        t = time.perf_counter()
        top10 = rank_all(index, judged, qvecs, how, K, alpha)
        took = time.perf_counter() - t
        top100 = rank_all(index, judged, qvecs, how, RECALL_K, alpha)
        s = score(top10, judged.qrels)
        recall = per_query(top100, judged.qrels, recall_at_k, RECALL_K)
        scored[label] = s["per_query"]
        out.append({"what": "relevance", "state": state, "config": label, "alpha": alpha,
                    "ndcg@10": s["ndcg@10"], "recall@100": round(statistics.fmean(recall.values()), 4),
                    "queries": s["queries"], "ndcg@10_lenient": score(top10, lenient.qrels)["ndcg@10"],
                    "ms_per_query": round(took / len(judged.queries) * 1000, 2)})
    best = {q: max(scored["text"][q], scored["vector"][q]) for q in scored["hybrid"]}
    out.append({"what": "hybrid_per_query", "state": state,
                "vs_text": wins(scored["hybrid"], scored["text"]),
                "vs_vector": wins(scored["hybrid"], scored["vector"]),
                "vs_better_of_two_per_query": wins(scored["hybrid"], best),
                "text_vs_vector": wins(scored["text"], scored["vector"])})
    out.append({"what": "hybrid_paired", "state": state,
                "hybrid_minus_text": paired(scored["hybrid"], scored["text"]),
                "hybrid_minus_vector": paired(scored["hybrid"], scored["vector"])})
    return out


def run(args: argparse.Namespace, say: Callable[[str], None] = log.info,
        progress: Callable[[Iterable], Iterable] = lambda xs: xs) -> list[dict[str, Any]]:
    from lsmvec import Client
    from lsmvec.tools.minilm_data import cache_dir

    started = time.perf_counter()
    judged = load_lee(floor=args.floor)
    lenient = load_lee(floor=1)
    doc_ids = list(judged.docs)
    vecs = embed_cached([judged.docs[d] for d in doc_ids], Path(args.cache or cache_dir()), say)
    by_id = dict(zip(doc_ids, vecs))
    # a query is one of the judged articles: its embedding is that article's
    qvecs = {qid: by_id[judged.query_doc[qid]] for qid in judged.queries}
    oracle = exact_top(judged, vecs, qvecs)
    out: list[dict[str, Any]] = [{
        "what": "setup", "collection": judged.name, "source": judged.source,
        "docs": len(judged.docs), "queries": len(judged.queries),
        "judged_pairs_grade>0": sum(len(q) for q in judged.qrels.values()) // 2,
        "floor": args.floor, "gain": "linear (gain = grade)", "model": MODEL_NAME,
        "random_ndcg@10": random_floor(judged, judged.qrels),
        "exact_cosine_ndcg@10": score(oracle, judged.qrels)["ndcg@10"]}]
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-relevance-"))
    try:
        with Client(work / "db") as client:
            index = build(client, "lee", judged, vecs)
            out += measure_state(index, "flushed", judged, lenient, qvecs, oracle, progress)
            if not args.no_train:
                index.train()
                out += measure_state(index, "trained", judged, lenient, qvecs, oracle, progress)
            index.close()
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    out.append({"what": "runtime_s", "value": round(time.perf_counter() - started, 1)})
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lsmvec.tools.bench_relevance",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--floor", type=int, default=2,
                   help="grade = mean rating rounded - floor (2: 'unrelated' pairs get 0)")
    p.add_argument("--dir", help="work folder (kept); default a temporary one (removed)")
    p.add_argument("--cache", help="embedding cache folder (default ~/.cache/lsmvec-bench)")
    p.add_argument("--no-train", action="store_true", help="measure the untrained index only")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from tqdm import tqdm
    say = lambda msg: print(msg, file=sys.stderr)  # noqa: E731 - CLI progress goes to stderr
    for row in run(args, say, lambda xs: tqdm(xs, file=sys.stderr, desc="configs")):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
