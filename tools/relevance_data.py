"""A real judged collection for the relevance benchmark, read from files a PyPI package ships,
and the standard measures over it (nDCG@k, recall@k).

Collection: the Lee corpus (Lee, Pincombe & Welsh, "An empirical evaluation of models of text
document similarity", CogSci 2005), as shipped inside the gensim wheel (``pip install gensim``,
LGPL-2.1; files under ``gensim/test/test_data/``):

* ``lee.cor``: 50 news articles (Australian Broadcasting Corporation news mail; measured 45-126
  whitespace-separated words);
* ``similarities0-1.txt``: for every pair of those 50 articles, the mean of about 10 human
  ratings on a 1 ("highly unrelated") .. 5 ("highly related") scale, divided by 5 (so 0.2..1);
* ``lee_background.cor``: 300 further articles from the same news service, which no one judged
  (45-620 words, mean 200: MiniLM reads only the first 256 word pieces of the longest).

Why this one: no registry package here ships a classic ad-hoc collection with its documents
(Cranfield, CACM, CISI, NPL, BEIR sets: their packages download the data at run time; pyserini's
jar holds CACM topics and qrels but not the documents). The Lee set has real documents and real
human judgements, and the task it defines is query-by-document ("find articles related to this
one", as BEIR's ArguAna and SCIDOCS): each of the 50 judged articles is a query, the corpus is
all 350 articles, the query's own article is excluded from its ranking, and the background
articles count as not relevant (the usual rule for unjudged documents).

Grades: the mean rating r = 5 * similarity, rounded half up, minus `floor` (default 2, clipped
at 0): with the default, 0 for r < 2.5 (people called the pair unrelated on average), 1 for
r ~ 3, 2 for r ~ 4, 3 for r ~ 5. Measured: 143 of the 1,225 pairs get grade >= 1 (97 / 37 / 9
of grades 1 / 2 / 3) and 48 of the 50 queries have at least one (the other two are left out of
the means, as undefined). `floor=1` is the lenient reading (r >= 1.5 counts: 546 pairs, every
query has >= 7).

Loading never imports gensim (its import pulls scipy and smart_open): the files are found
through the installed distribution's location.
"""
from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_FLOOR", "Judged", "RelevanceDataUnavailable", "gensim_test_data", "grade", "load_lee",
           "dcg", "ndcg_at_k", "recall_at_k"]

SOURCE = ("Lee corpus (Lee, Pincombe & Welsh 2005), files of the gensim wheel "
          "(gensim/test/test_data; gensim is LGPL-2.1)")
N_JUDGED = 50


class RelevanceDataUnavailable(RuntimeError):
    """The package holding the collection is not installed (the message says what to install)."""


@dataclass(frozen=True)
class Judged:
    """docs {doc_id: text}; queries {qid: text}; qrels {qid: {doc_id: grade > 0}} (a doc absent
    from a query's qrels has grade 0); query_doc {qid: doc_id} the document each query was made
    from, to be left out of that query's ranking."""
    name: str
    source: str
    docs: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    query_doc: dict[str, str]


def gensim_test_data() -> Path:
    """The gensim test-data folder of the installed distribution, without importing gensim."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise RelevanceDataUnavailable(
            "the judged collection ships inside the gensim package: pip install gensim "
            "(or pip install 'lsmvec[bench]')")
    folder = Path(spec.origin).parent / "test" / "test_data"
    if not (folder / "lee.cor").is_file():
        raise RelevanceDataUnavailable(f"gensim is installed but {folder} has no lee.cor")
    return folder


DEFAULT_FLOOR = 2


def grade(similarity: float, floor: int = DEFAULT_FLOOR) -> int:
    """Mean rating (5 * similarity, 1..5) rounded half up, minus `floor`, clipped at 0."""
    return max(0, math.floor(5.0 * similarity + 0.5) - floor)


def _lines(path: Path) -> list[str]:
    # measured: lee.cor is ASCII but for one Latin-1 pound sign (0xa3, before a number); read as
    # U+FFFD it changes no word, and the other two files are ASCII
    return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if line.strip()]


def _similarities(path: Path) -> list[list[float]]:
    rows = [[float(x) for x in line.split()] for line in _lines(path)]
    if len(rows) != N_JUDGED or any(len(r) != N_JUDGED for r in rows):
        raise ValueError(f"{path}: expected a {N_JUDGED}x{N_JUDGED} matrix")
    return rows


def load_lee(folder: Path | None = None, *, background: bool = True,
             floor: int = DEFAULT_FLOOR) -> Judged:
    """The Lee collection: 50 queries (the judged articles), docs = the 50 + (background) 300."""
    folder = folder or gensim_test_data()
    judged = _lines(folder / "lee.cor")
    if len(judged) != N_JUDGED:
        raise ValueError(f"{folder / 'lee.cor'}: expected {N_JUDGED} articles, got {len(judged)}")
    sims = _similarities(folder / "similarities0-1.txt")
    docs = {f"lee-{i:02d}": text for i, text in enumerate(judged)}
    if background:
        docs.update({f"bg-{j:03d}": text
                     for j, text in enumerate(_lines(folder / "lee_background.cor"))})
    queries, qrels, query_doc = {}, {}, {}
    for i in range(N_JUDGED):
        qid = f"q{i:02d}"
        queries[qid] = judged[i]
        query_doc[qid] = f"lee-{i:02d}"
        # the file fills the upper triangle (the lower one is 0): a pair's rating is at [min][max]
        grades = {f"lee-{j:02d}": grade(sims[min(i, j)][max(i, j)], floor)
                  for j in range(N_JUDGED) if j != i}
        qrels[qid] = {d: g for d, g in grades.items() if g > 0}
    return Judged("lee", SOURCE, docs, queries, qrels, query_doc)


def dcg(gains: Sequence[float]) -> float:
    """Sum of gain / log2(rank + 1), ranks from 1."""
    return sum(g / math.log2(rank + 2) for rank, g in enumerate(gains))


def ndcg_at_k(ranking: Sequence[str], judged: Mapping[str, float], k: int = 10) -> float:
    """nDCG@k with linear gain (gain = grade, as trec_eval's ndcg_cut) and a log2 discount; the
    ideal ranking is the judged grades sorted descending. A query with no positive grade is
    undefined: ValueError (callers leave such queries out)."""
    ideal = dcg(sorted((g for g in judged.values() if g > 0), reverse=True)[:k])
    if ideal <= 0:
        raise ValueError("no relevant document: nDCG is undefined")
    return dcg([judged.get(doc, 0) for doc in list(ranking)[:k]]) / ideal


def recall_at_k(ranking: Sequence[str], judged: Mapping[str, float], k: int = 100) -> float:
    """Share of the documents with grade > 0 found in the first k."""
    relevant = {d for d, g in judged.items() if g > 0}
    if not relevant:
        raise ValueError("no relevant document: recall is undefined")
    return len(relevant.intersection(list(ranking)[:k])) / len(relevant)
