"""Global BM25 (db/bm25.py) over segment text indexes (db/text_index.py) and the memtable's,
against a plain-Python oracle that sees only the live items: the scores must not depend on how
the rows happen to be cut into segments, on packing, on merging, or on dead rows.

The oracle is written from the formula (Lucene idf, (k1 + 1) numerator), with Python floats and
dicts of the analysed tokens; it shares only `analyze` with the engine, which the analyzer tests
below pin with hand-written expectations.
"""
from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsmvec.db.bm25 import Source, fuse, search, window
from lsmvec.db.text_index import MemTextIndex, TextIndex
from lsmvec.request.analyzer import ANALYZER_VERSION, STOP_WORDS, analyze, query_terms

FIELDS = ("title", "body")
WORDS = ("fox", "Fox", "FOX", "dog", "quick", "the", "a", "and", "naïve", "NAÏVE", "東京",
         "Straße", "strasse", "ﬁne", "fine", "x_y", "e-mail", "42", "brown")


# ------------------------------------------------------------------ analyzer

def test_analyzer_pinned_examples():
    assert analyze("The quick brown Fox, and THE lazy dog!") == [
        "quick", "brown", "fox", "lazy", "dog"]
    assert analyze("Ｆｏｘ ﬁne ℌello Straße") == ["fox", "fine", "hello", "strasse"]
    assert analyze("e-mail e_mail 3.14 東京タワー") == ["e", "mail", "e_mail", "3", "14", "東京タワー"]
    assert analyze("x" * 255 + " " + "y" * 256 + " ok") == ["x" * 255, "ok"]
    assert analyze("the a an of") == []
    assert query_terms("fox Fox dog fox") == ["fox", "dog"]
    assert isinstance(ANALYZER_VERSION, int)


def test_stop_words_are_lucene_english_set():
    # Lucene's EnglishAnalyzer default set; bm25s ships the same 33 words (frozen copy here)
    bm25s_stopwords = pytest.importorskip("bm25s.stopwords")
    assert STOP_WORDS == frozenset(bm25s_stopwords.STOPWORDS_EN)
    assert len(STOP_WORDS) == 33


# ------------------------------------------------------------------ oracle

def oracle(items: dict[str, dict], terms: list[str], fields, weights, k1, b, require_all):
    """id -> score over the live items, from the BM25 definition."""
    tokens = {i: {f: (analyze(v[f]) if isinstance(v.get(f), str) else []) for f in fields}
              for i, v in items.items()}
    scores: dict[str, float] = {}
    matched: dict[str, set] = {}
    for field, weight in zip(fields, weights):
        docs = {i: t[field] for i, t in tokens.items() if t[field]}
        if not docs:
            continue
        n = len(docs)
        avgdl = sum(len(d) for d in docs.values()) / n
        for term in terms:
            holders = [i for i, d in docs.items() if term in d]
            if not holders:
                continue
            idf = math.log(1 + (n - len(holders) + 0.5) / (len(holders) + 0.5))
            for i in holders:
                tf, dl = docs[i].count(term), len(docs[i])
                scores[i] = scores.get(i, 0.0) + weight * idf * tf * (k1 + 1) / (
                    tf + k1 * (1 - b + b * dl / avgdl))
                matched.setdefault(i, set()).add(term)
    keep = {i for i, got in matched.items() if (len(got) == len(terms) if require_all else got)}
    return {i: scores[i] for i in keep}


# ------------------------------------------------------------------ the engine side, simulated

def build_sources(ops, cuts, merge_first: int, pack: bool):
    """Rows in write order cut at `cuts` into segments, the tail a memtable; a row is live when
    it is its id's last write and no delete follows. Returns (sources, row ids per source)."""
    rows, last = [], {}
    for op in ops:
        if op[0] == "put":
            last[op[1]] = len(rows)
            rows.append((op[1], op[2]))
        else:
            last.pop(op[1], None)
    live_row = set(last.values())
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < len(rows)), len(rows)]
    segs = [list(range(lo, hi)) for lo, hi in zip(bounds, bounds[1:])]
    mem_rows = segs.pop() if segs else []
    built = []
    for seg in segs:
        ix = TextIndex.build((rows[r][1] for r in seg), len(seg), FIELDS)
        if pack:
            ix = TextIndex.unpack(msgpack.unpackb(msgpack.packb(ix.pack())), len(seg))
        built.append((ix, seg))
    if merge_first >= 2 and len(built) >= 2:
        # merge the first segments as compaction does: live rows only, renumbered in order
        parts, kept = [], []
        for ix, seg in built[:merge_first]:
            mapping = np.full(len(seg), -1, np.int64)
            for j, r in enumerate(seg):
                if r in live_row:
                    mapping[j] = len(kept)
                    kept.append(r)
            parts.append((ix, mapping))
        merged = TextIndex.merge([ix.remap(m, len(kept)) for ix, m in parts], len(kept))
        built = [(merged, kept)] + built[merge_first:]
    sources, ids = [], []
    for ix, seg in built:
        live = np.array([r in live_row for r in seg], bool)
        sources.append(Source(ix, live))
        ids.append([rows[r][0] for r in seg])
    mem = MemTextIndex(FIELDS)
    for r in mem_rows:
        mem.append(rows[r][1])
    mem.delete(j for j, r in enumerate(mem_rows) if r not in live_row)
    sources.append(Source(mem, mem.live()))
    ids.append([rows[r][0] for r in mem_rows])
    final = {rows[r][0]: rows[r][1] for r in live_row}
    return sources, ids, final


texts = st.lists(st.sampled_from(WORDS), max_size=6).map(" ".join)
values = st.fixed_dictionaries({}, optional={"title": texts, "body": st.one_of(texts, st.just(7))})
ops_strategy = st.lists(st.one_of(
    st.tuples(st.just("put"), st.sampled_from("abcdefghij"), values),
    st.tuples(st.just("del"), st.sampled_from("abcdefghij"))), max_size=40)


def check(sources, ids, final, terms, fields, weights, k1, b, require_all):
    hits = search(sources, terms, fields, weights=weights, k1=k1, b=b,
                  require_all_terms=require_all)
    got = {ids[s][r]: v for s, r, v in zip(hits.sources, hits.rows, hits.scores)}
    assert len(got) == len(hits.rows)  # a dead row never answers beside its live version
    want = oracle(final, terms, fields, weights, k1, b, require_all)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9)
    assert list(hits.scores) == sorted(hits.scores, reverse=True)
    return hits


@settings(max_examples=300, deadline=None)
@given(ops=ops_strategy, cuts=st.lists(st.integers(0, 40), max_size=5),
       merge_first=st.integers(0, 3), pack=st.booleans(),
       query=st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join),
       fields=st.sampled_from([("title",), ("body",), ("title", "body"), ("body", "title")]),
       weights=st.lists(st.floats(0.1, 3.0), min_size=2, max_size=2),
       k1=st.sampled_from([0.0, 1.2, 2.0]), b=st.sampled_from([0.0, 0.75, 1.0]),
       require_all=st.booleans())
def test_scores_equal_oracle_for_any_segmentation(ops, cuts, merge_first, pack, query, fields,
                                                   weights, k1, b, require_all):
    terms = query_terms(query)
    weights = weights[:len(fields)]
    one = build_sources(ops, [], 0, False)  # everything in the memtable
    split = build_sources(ops, cuts, merge_first, pack)
    h1 = check(*one, terms, fields, weights, k1, b, require_all)
    h2 = check(*split, terms, fields, weights, k1, b, require_all)
    assert len(h1.rows) == len(h2.rows)


@settings(max_examples=100, deadline=None)
@given(ops=ops_strategy, cuts=st.lists(st.integers(0, 40), max_size=4),
       query=st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join),
       k=st.integers(1, 5))
def test_top_k_is_a_prefix_and_filters_keep_statistics(ops, cuts, query, k):
    sources, ids, final = build_sources(ops, cuts, 0, False)
    terms = query_terms(query)
    full = search(sources, terms, FIELDS)
    top = search(sources, terms, FIELDS, top_k=k)
    assert list(zip(top.sources, top.rows)) == list(zip(full.sources, full.rows))[:k]
    assert top.scores.tolist() == full.scores[:k].tolist()  # the same bits either way
    # a filter admitting every other id narrows the answer but leaves each score unchanged
    admitted = {i for i in final if i in "acegi"}
    filtered = [Source(s.index, s.live, np.array([i in admitted for i in ids[n]], bool))
                for n, s in enumerate(sources)]
    got = search(filtered, terms, FIELDS)
    want = {(s, r): v for s, r, v in zip(full.sources, full.rows, full.scores)
            if ids[s][r] in admitted}
    assert {(s, r): v for s, r, v in zip(got.sources, got.rows, got.scores)} == want
    # ... and its top k (sums read at the postings, cut below the k-th) is the same prefix
    top = search(filtered, terms, FIELDS, top_k=k)
    assert list(zip(top.sources, top.rows, top.scores)) == list(zip(
        got.sources, got.rows, got.scores))[:k]


@pytest.mark.parametrize("seed", range(4))
def test_top_k_of_many_overlapping_terms_is_the_full_ranking_prefix(seed):
    """Rows holding several query terms each, so a row appears in many postings lists: every
    top_k (filtered or not, one source or three) is the full ranking's prefix, to the bit."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(12)]
    docs = [" ".join(rng.choice(vocab, size=int(rng.integers(1, 9)))) for _ in range(300)]
    cuts = [0, 120, 250, 300] if seed % 2 else [0, 300]
    sources = []
    for lo, hi in zip(cuts, cuts[1:]):
        ix = TextIndex.build(({"title": d} for d in docs[lo:hi]), hi - lo, ("title",))
        allowed = rng.random(hi - lo) < 0.6 if seed >= 2 else None
        sources.append(Source(ix, None, allowed))
    terms = vocab[:7]
    full = search(sources, terms, ("title",))
    for k in (1, 2, 3, 5, 10, 30, 100):
        top = search(sources, terms, ("title",), top_k=k)
        assert list(zip(top.sources, top.rows, top.scores)) == list(zip(
            full.sources, full.rows, full.scores))[:k], k


def test_reference_fox_score_is_ln2():
    # reference-0.18.md: query_metadata(text='fox') -> [{'id': 'a', 'score': 0.693...}] with
    # text_fields=['title']; two equal-length titles, one holding "fox", give exactly ln 2 with
    # the (k1 + 1) numerator (Lucene >= 8's form without it would give 0.315).
    ix = TextIndex.build([{"title": "quick fox"}, {"title": "lazy dog"}], 2, ["title"])
    hits = search([Source(ix)], query_terms("fox"), ["title"])
    assert hits.rows.tolist() == [0]
    assert hits.scores[0] == pytest.approx(math.log(2), rel=1e-12)


def test_require_all_terms_and_weights_by_hand():
    ix = TextIndex.build([{"title": "fox dog", "body": "cat"}, {"title": "fox", "body": "dog"},
                          {"title": "dog"}], 3, FIELDS)
    src = [Source(ix)]
    both = search(src, ["fox", "dog"], FIELDS, require_all_terms=True)
    assert sorted(both.rows.tolist()) == [0, 1]  # row 1: fox in title, dog in body
    only_title = search(src, ["fox", "dog"], ["title"], require_all_terms=True)
    assert only_title.rows.tolist() == [0]
    w1 = search(src, ["cat"], FIELDS, weights=[1.0, 1.0])
    w3 = search(src, ["cat"], FIELDS, weights=[5.0, 3.0])
    assert w3.scores[0] == pytest.approx(3 * w1.scores[0])
    assert search(src, [], FIELDS).rows.size == 0


# ------------------------------------------------------------------ packing

def _only_plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _only_plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_only_plain(v) for v in value)
    return isinstance(value, (bytes, str, int, bool)) or value is None


def test_pack_is_msgpack_of_plain_values_and_round_trips():
    rows = [{"title": "The quick fox", "body": "jumps over 東京"}, None, {"title": "the"},
            {"body": "fox fox fox"}]
    ix = TextIndex.build(rows, 4, FIELDS)
    raw = ix.pack()
    assert _only_plain(raw)
    blob = msgpack.packb(raw, use_bin_type=True)
    assert not blob.startswith(b"\x80")  # no pickle protocol header
    back = TextIndex.unpack(msgpack.unpackb(blob, raw=False), 4)
    assert back.pack() == raw
    assert back.fields["body"].postings("fox")[1].tolist() == [3]
    assert back.fields["title"].lengths.tolist() == [2, 0, 0, 0]


@pytest.mark.parametrize("damage", ["format", "n", "truncate", "row", "length", "order", "type"])
def test_unpack_rejects_damaged_or_foreign_blobs(damage):
    ix = TextIndex.build([{"title": "quick fox"}, {"title": "lazy dog fox"}], 2, ["title"])
    raw = msgpack.unpackb(msgpack.packb(ix.pack()))
    n = 2
    entry = raw["fields"][0]
    if damage == "format":
        raw = {"t": []}
    elif damage == "n":
        n = 3
    elif damage == "truncate":
        entry[3] = entry[3][:-1]
    elif damage == "row":
        entry[3] = np.array([0, 1, 1, 5, 0], "<i4").tobytes()
    elif damage == "length":
        entry[6] = np.array([2, 9], "<u4").tobytes()
    elif damage == "order":
        entry[1] = entry[1][::-1]
    elif damage == "type":
        entry[2] = "oops"
    with pytest.raises(ValueError):
        TextIndex.unpack(raw, n)


def test_memtable_freeze_remap_matches_build():
    mem = MemTextIndex(FIELDS)
    rows = [{"title": "fox"}, {"title": "dog fox"}, {"body": "quick"}, {"title": "dog"}]
    for r in rows:
        mem.append(r)
    mem.delete([1])
    mapping = np.array([0, -1, 1, 2])
    flushed = mem.freeze().remap(mapping, 3)
    direct = TextIndex.build([rows[0], rows[2], rows[3]], 3, FIELDS)
    assert flushed.pack() == direct.pack()
    with pytest.raises(IndexError):
        mem.delete([9])


# ------------------------------------------------------------------ fusion

def test_fusion_by_hand():
    got = fuse(["a", "b", "c"], ["c", "d"])
    want = {"a": 0.5 / 61, "b": 0.5 / 62, "c": 0.5 / 63 + 0.5 / 61, "d": 0.5 / 62}
    assert [k for k, _ in got] == ["c", "a", "b", "d"]  # b, d tie: vector side first
    assert dict(got) == pytest.approx(want)
    weighted = dict(fuse(["a", "b"], ["b"], alpha=0.8, rrf_k=10))
    assert weighted == pytest.approx({"a": 0.8 / 11, "b": 0.8 / 12 + 0.2 / 11})
    assert [k for k, _ in fuse(["a"], ["b"], alpha=1.0)] == ["a"]  # text side weighs nothing
    assert fuse(["a", "b", "c"], [], top_k=2) == [("a", 0.5 / 61), ("b", 0.5 / 62)]
    assert window(10) == 30 and window(10, 1) == 10
    with pytest.raises(ValueError):
        fuse(["a"], ["b"], alpha=1.5)
