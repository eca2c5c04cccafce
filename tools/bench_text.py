"""`python -m lsmvec.tools.bench_text`: tantivy vs bm25s vs lsmvec's own text index (scipy-free
numpy postings + db/bm25.py), the measurements behind the library choice of issue 19.

    python -m lsmvec.tools.bench_text [--n 100000] [--queries 200] [--rounds 5] [--parts 4]

Corpus: --n real English-ish short texts, offline and deterministic: the comment lines (>= 4
words, deduplicated, in sorted path order) of the .py files of this interpreter's
site-packages, topped up with tools/minilm_data.py's template sentences if too few. Queries:
2 words drawn from random corpus rows (seed 0).

Steps, all in this process: build each index (time; tantivy also on disk for its size);
query latency, the three engines in alternating order per round, median over rounds of the
per-query mean; sizes; then the decisive properties, measured:
  * segmentation: the corpus cut into --parts separately built indexes, each queried alone
    (what a per-index library gives a log-structured store): max relative difference of a
    row's score from the one-index score;
  * deletes: half the rows holding a query's first term deleted (tantivy delete+commit;
    bm25s has no delete), vs an index built without them;
  * plaintext: whether an indexed word appears in the library's files on disk.
One JSON line per measurement on stdout.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def corpus(n: int) -> list[str]:
    seen: dict[str, None] = {}
    root = Path(np.__file__).resolve().parent.parent
    comment = re.compile(r"^\s*#\s*(.+)$")
    for path in sorted(root.rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8", errors="ignore")
        except OSError:
            continue
        for line in text.splitlines():
            got = comment.match(line)
            if got and len(got.group(1).split()) >= 4:
                seen.setdefault(got.group(1).strip(), None)
        if len(seen) >= n:
            break
    docs = list(seen)[:n]
    if len(docs) < n:
        from lsmvec.tools.minilm_data import corpus_sentences
        docs += corpus_sentences(n - len(docs))
    return docs


def queries(docs: list[str], count: int) -> list[str]:
    from lsmvec.request.analyzer import analyze
    rng = np.random.default_rng(0)
    out = []
    while len(out) < count:
        words = [w for w in analyze(docs[rng.integers(len(docs))]) if w.isalpha()]
        if len(words) >= 2:
            out.append(" ".join(rng.choice(words, 2, replace=False)))
    return out


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def plaintext_in(folder: Path, word: str) -> bool:
    needle = word.encode("utf-8")
    return any(needle in p.read_bytes() for p in folder.rglob("*") if p.is_file())


class Tantivy:
    name = "tantivy"

    def __init__(self, docs: list[str], path: Path | None = None, deleted=()) -> None:
        import tantivy
        builder = tantivy.SchemaBuilder()
        builder.add_text_field("body", stored=False)
        builder.add_unsigned_field("row", stored=True, indexed=True)
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
        self.index = tantivy.Index(builder.build(), path=str(path) if path else None)
        writer = self.index.writer(heap_size=100_000_000, num_threads=1)
        for row, text in enumerate(docs):
            doc = tantivy.Document()
            doc.add_text("body", text)
            doc.add_unsigned("row", row)
            writer.add_document(doc)
        writer.commit()
        if len(deleted):
            for row in deleted:
                writer.delete_documents_by_term("row", int(row))
            writer.commit()
        writer.wait_merging_threads()
        self.index.reload()
        self.searcher = self.index.searcher()

    def query(self, text: str, k: int) -> dict[int, float]:
        q = self.index.parse_query(" ".join(re.findall(r"\w+", text)) or "x", ["body"])
        hits = self.searcher.search(q, k).hits
        return {self.searcher.doc(addr)["row"][0]: score for score, addr in hits}


class Bm25s:
    name = "bm25s"

    def __init__(self, docs: list[str], tokens: list[list[str]]) -> None:
        import bm25s
        self.retriever = bm25s.BM25(method="lucene", k1=1.2, b=0.75)
        self.retriever.index(tokens, show_progress=False)

    def query(self, terms: list[str], k: int) -> dict[int, float]:
        vocab = self.retriever.vocab_dict
        known = [t for t in terms if t in vocab]
        if not known:
            return {}
        rows, scores = self.retriever.retrieve([known], k=k, show_progress=False)
        # bm25s's "lucene" method omits Lucene's constant (k1 + 1) factor: scale for comparison
        return {int(r): float(s) * 2.2 for r, s in zip(rows[0], scores[0]) if s > 0}


class Ours:
    name = "lsmvec"

    def __init__(self, parts: list[list[str]], dead: list[np.ndarray] | None = None) -> None:
        from lsmvec.db.text_index import TextIndex
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.indexes = [TextIndex.build(({"body": t} for t in p), len(p), ["body"])
                        for p in parts]
        self.dead = dead

    def query(self, terms: list[str], k: int) -> dict[int, float]:
        from lsmvec.db.bm25 import Source, search
        sources = [Source(ix, None if self.dead is None else ~self.dead[i])
                   for i, ix in enumerate(self.indexes)]
        hits = search(sources, terms, ["body"], top_k=k)
        return {int(self.offsets[s] + r): float(v)
                for s, r, v in zip(hits.sources, hits.rows, hits.scores)}


def max_rel_diff(whole: dict[int, float], split: dict[int, float]) -> float:
    common = set(whole) & set(split)
    if not common:
        return float("nan")
    return max(abs(split[r] - whole[r]) / whole[r] for r in common)


def run(args: argparse.Namespace) -> list[dict]:
    from lsmvec.request.analyzer import analyze, query_terms
    out = []
    docs = corpus(args.n)
    qs = queries(docs, args.queries)
    qterms = [query_terms(q) for q in qs]
    tmp = Path(tempfile.mkdtemp(prefix="bench-text-"))
    try:
        t = time.perf_counter()
        tv = Tantivy(docs)
        build = {"tantivy": time.perf_counter() - t}
        t = time.perf_counter()
        tokens = [analyze(d) for d in docs]
        bs = Bm25s(docs, tokens)
        build["bm25s"] = time.perf_counter() - t
        t = time.perf_counter()
        ours = Ours([docs])
        build["lsmvec"] = time.perf_counter() - t
        out.append({"what": "build_s", "n": len(docs),
                    **{k: round(v, 3) for k, v in build.items()}})

        runs = {"tantivy": lambda: [tv.query(q, 10) for q in qs],
                "bm25s": lambda: [bs.query(ts, 10) for ts in qterms],
                "lsmvec": lambda: [ours.query(ts, 10) for ts in qterms]}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for rnd in range(args.rounds):
            for name in (list(runs) if rnd % 2 == 0 else list(reversed(runs))):
                t = time.perf_counter()
                runs[name]()
                times[name].append((time.perf_counter() - t) / len(qs) * 1000)
        out.append({"what": "query_ms_median", **{k: round(statistics.median(v), 3)
                                                   for k, v in times.items()}})
        out.append({"what": "query_time_ratio_median_vs_tantivy",
                    **{k: round(statistics.median(a / b for a, b in zip(v, times["tantivy"])), 2)
                       for k, v in times.items() if k != "tantivy"}})
        # agreement of scores (same analyzer tokens for bm25s and lsmvec)
        agree = [max_rel_diff(ours.query(ts, 10), bs.query(ts, 10)) for ts in qterms[:50]]
        out.append({"what": "lsmvec_vs_bm25s_lucene_x2.2_max_rel_diff",
                    "value": float(np.nanmax(agree))})

        Tantivy(docs, tmp / "tv")
        bs.retriever.save(str(tmp / "bs"), show_progress=False)
        import msgpack
        packed = len(msgpack.packb(ours.indexes[0].pack()))
        out.append({"what": "bytes", "tantivy_disk": folder_bytes(tmp / "tv"),
                    "bm25s_disk": folder_bytes(tmp / "bs"), "lsmvec_packed": packed,
                    "lsmvec_resident": ours.indexes[0].nbytes,
                    "lsmvec_postings": int(ours.indexes[0].fields["body"].rows.size),
                    "lsmvec_terms": len(ours.indexes[0].fields["body"])})
        words = sorted({t for ts in qterms[:20] for t in ts})
        import tantivy
        reopened = tantivy.Index.open(str(tmp / "tv"))  # no key asked: anyone can read it
        readable = sum(reopened.searcher().search(reopened.parse_query(w, ["body"]), 1).count > 0
                       for w in words)
        out.append({"what": "plaintext_terms_on_disk", "words": len(words),
                    "tantivy_bytes_grep": sum(plaintext_in(tmp / "tv", w) for w in words),
                    "tantivy_found_by_reopening_without_key": readable,
                    "bm25s_bytes_grep": sum(plaintext_in(tmp / "bs", w) for w in words)})

        # segmentation: parts built apart, each queried alone, vs the whole
        cuts = np.array_split(np.arange(len(docs)), args.parts)
        parts = [[docs[i] for i in c] for c in cuts]
        tv_parts = [Tantivy(p) for p in parts]
        bs_parts = [Bm25s(p, [tokens[i] for i in c]) for p, c in zip(parts, cuts)]
        ours_split = Ours(parts)
        diffs: dict[str, list[float]] = {"tantivy": [], "bm25s": [], "lsmvec": []}
        for q, ts in zip(qs[:50], qterms[:50]):
            for name, whole, pieces in (("tantivy", tv.query(q, 10), tv_parts),
                                        ("bm25s", bs.query(ts, 10), bs_parts)):
                split: dict[int, float] = {}
                for c, piece in zip(cuts, pieces):
                    got = piece.query(q if name == "tantivy" else ts, 10)
                    split.update({int(c[0]) + r: s for r, s in got.items()})
                diffs[name].append(max_rel_diff(whole, split))
            diffs["lsmvec"].append(max_rel_diff(ours.query(ts, 10), ours_split.query(ts, 10)))
        out.append({"what": f"segmented_{args.parts}_max_rel_score_diff",
                    **{k: float(np.nanmax(v)) for k, v in diffs.items()}})

        # deletes: half the rows holding the first query's first term
        term = qterms[0][0]
        holders = [i for i, tk in enumerate(tokens) if term in tk]
        gone = np.array(holders[::2], np.int64)
        kept_docs = [d for i, d in enumerate(docs) if i not in set(gone.tolist())]
        tv_del = Tantivy(docs, deleted=gone)
        tv_rebuilt = Tantivy(kept_docs)
        s_del = sorted(tv_del.query(term, 5).values())
        s_new = sorted(tv_rebuilt.query(term, 5).values())
        dead = np.zeros(len(docs), bool)
        dead[gone] = True
        o_del = sorted(Ours([docs], [dead]).query([term], 5).values())
        o_new = sorted(Ours([kept_docs]).query([term], 5).values())
        out.append({"what": "after_delete_score_vs_rebuilt", "term": term, "deleted": len(gone),
                    "tantivy": [round(s_del[-1], 5), round(s_new[-1], 5)],
                    "lsmvec": [round(o_del[-1], 5), round(o_new[-1], 5)],
                    "bm25s": "no delete API"})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--parts", type=int, default=4)
    args = parser.parse_args(argv)
    for row in run(args):
        print(json.dumps(row), file=sys.stdout, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
