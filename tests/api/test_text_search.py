"""query(text=...) / query_metadata(text=...) through the index (issue 19): BM25 scores equal
the plain-Python oracle of tests/db/test_bm25.py over the live items, whatever the memtable /
flush / merge / reopen history; deletes and overwrites never score; filters narrow the answer;
fused scores follow the documented formula; errors are raised before anything runs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from db.test_bm25 import oracle  # the plain-Python BM25 oracle (shared, not copied)
from lsmvec import AsyncClient, Client, generate_key
from lsmvec.compaction.filenames import segment_dir_name
from lsmvec.errors import InvalidArgumentError, InvalidTypeError, LsmvecError
from lsmvec.request.analyzer import ANALYZER_VERSION, query_terms

DIM = 4
FIELDS = ("title", "body")
WORDS = ("fox", "Fox", "dog", "quick", "the", "naïve", "東京", "Straße", "strasse", "brown",
         "lazy", "42")


def vec(i: int) -> list[float]:
    rng = np.random.default_rng(i)
    return rng.standard_normal(DIM).astype(np.float32).tolist()


def make(client: Client, name: str = "t", **options: Any):
    return client.create_index(name, generate_key() if "key" not in options else options.pop("key"),
                               dimension=DIM, background_compaction=False,
                               text_fields=list(FIELDS), **options)


def check_scores(index, live: dict[str, dict], text: str, fields=FIELDS, weights=None,
                 require_all=False, k1=1.2, b=0.75) -> None:
    terms = query_terms(text)
    kwargs = {} if fields == FIELDS else {"text_fields": list(fields)}
    if weights is not None:
        kwargs["text_field_weights"] = dict(zip(fields, weights))
    got = index.query(text=text, top_k=1000, require_all_terms=require_all, **kwargs)
    want = oracle(live, terms, fields, weights or [1.0] * len(fields), k1, b, require_all) \
        if terms else {}
    assert {r["id"] for r in got} == set(want)
    assert len(got) == len(want)  # each id once
    for row in got:
        assert set(row) == {"id", "score"}
        assert row["score"] == pytest.approx(want[row["id"]], rel=2e-7, abs=1e-7)
    assert [r["score"] for r in got] == sorted((r["score"] for r in got), reverse=True)


# ----------------------------------------------------------------------------- options

def test_text_fields_options_and_config(client: Client) -> None:
    plain = client.create_index("plain", generate_key(), dimension=DIM)
    assert plain.index_config()["bm25"] is None
    index = client.create_index("t", generate_key(), dimension=DIM, text_fields=["body"],
                                metadata_schema={"sku": {"pattern": True},
                                                 "body": {"filterable": True}},
                                bm25_k1=2.0, bm25_b=0.5)
    config = index.index_config()
    assert config["bm25"] == {"k1": 2.0, "b": 0.5, "analyzer_version": ANALYZER_VERSION}
    assert config["metadata_schema"]["body"] == {"filterable": True, "pattern": False,
                                                 "full_text": True}
    assert config["metadata_schema"]["sku"]["pattern"] is True


@pytest.mark.parametrize("options, error", [
    ({"text_fields": ["sku"], "metadata_schema": {"sku": {"pattern": True}}},
     InvalidArgumentError),
    ({"text_fields": "body"}, InvalidTypeError),
    ({"text_fields": [3]}, InvalidTypeError),
    ({"text_fields": ["body"], "bm25_k1": -0.1}, InvalidArgumentError),
    ({"text_fields": ["body"], "bm25_b": 1.5}, InvalidArgumentError),
    ({"text_fields": ["body"], "bm25_b": "x"}, InvalidTypeError),
    ({"analyzer_version": 2}, InvalidTypeError),  # set by lsmvec, not an option
])
def test_bad_text_options_write_nothing(data_dir: Path, options: dict, error: type) -> None:
    with Client(data_dir) as client:
        with pytest.raises(error):
            client.create_index("t", generate_key(), dimension=DIM, **options)
        assert client.list_indexes() == []


def test_other_analyzer_version_is_refused_at_open(data_dir: Path, monkeypatch) -> None:
    key = generate_key()
    with Client(data_dir) as client:
        make(client, key=key).upsert([{"id": "a", "vector": vec(0),
                                       "metadata": {"body": "fox"}}])
    import lsmvec.db.text_search as text_search
    monkeypatch.setattr(text_search, "ANALYZER_VERSION", ANALYZER_VERSION + 1)
    with Client(data_dir) as client:
        with pytest.raises(InvalidArgumentError) as info:
            client.load_index("t", key)
    message = str(info.value)
    assert f"version {ANALYZER_VERSION};" in message and f"version {ANALYZER_VERSION + 1}" in message
    monkeypatch.undo()
    with Client(data_dir) as client:  # the refusal changed nothing
        assert client.load_index("t", key).query(text="fox")[0]["id"] == "a"


# ----------------------------------------------------------------------------- the oracle

texts = st.lists(st.sampled_from(WORDS), max_size=5).map(" ".join)
values = st.fixed_dictionaries({}, optional={"title": texts, "body": st.one_of(texts, st.just(7)),
                                             "n": st.integers(0, 3)})
steps = st.lists(st.one_of(
    st.tuples(st.just("put"), st.sampled_from("abcdefgh"), values),
    st.tuples(st.just("del"), st.sampled_from("abcdefgh")),
    st.tuples(st.sampled_from(["flush", "compact", "reopen"]))), max_size=25)


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=steps, query=st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join),
       require_all=st.booleans())
def test_scores_equal_oracle_whatever_the_segmentation(tmp_path_factory, ops, query,
                                                        require_all) -> None:
    root = tmp_path_factory.mktemp("hyp")
    key = generate_key()
    live: dict[str, dict] = {}
    client = Client(root)
    try:
        index = make(client, key=key)
        for op in ops:
            if op[0] == "put":
                index.upsert([{"id": op[1], "vector": vec(len(live)), "metadata": op[2]}])
                live[op[1]] = op[2]
            elif op[0] == "del":
                index.delete([op[1]])
                live.pop(op[1], None)
            elif op[0] == "flush":
                index.flush()
            elif op[0] == "compact":
                index.compact()
            else:
                client.close()
                client = Client(root)
                index = client.load_index("t", key)
            check_scores(index, live, query, require_all=require_all)
        check_scores(index, live, query, fields=("body",), require_all=require_all)
        check_scores(index, live, query, weights=[2.0, 0.5], require_all=require_all)
    finally:
        client.close()


def corpus(n: int, seed: int) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        meta = {"n": int(i % 4)}
        for field in FIELDS:
            if rng.random() < 0.85:
                meta[field] = " ".join(rng.choice(WORDS, size=int(rng.integers(0, 7))))
        out[f"id{i}"] = meta
    return out


def test_scores_do_not_change_with_flushes_merges_overwrites_and_reopen(data_dir: Path) -> None:
    key = generate_key()
    items = corpus(120, 1)
    live: dict[str, dict] = {}
    client = Client(data_dir)
    try:
        index = make(client, key=key, bm25_k1=1.5, bm25_b=0.6)
        ids = list(items)
        snapshots = []
        for part in range(4):  # four segments, then a memtable of overwrites and deletes
            batch = ids[part * 30:(part + 1) * 30]
            index.upsert([{"id": i, "vector": vec(j), "metadata": items[i]}
                          for j, i in enumerate(batch)])
            live.update({i: items[i] for i in batch})
            index.flush()
        index.upsert([{"id": i, "vector": vec(1), "metadata": {"body": "fox fox fox"}}
                      for i in ids[:10]])
        live.update({i: {"body": "fox fox fox"} for i in ids[:10]})
        index.delete(ids[10:25])
        for i in ids[10:25]:
            live.pop(i)
        for state in ("memtable", "flushed", "merged", "reopened"):
            if state == "flushed":
                index.flush()
                assert len(index.stats()["segments"]) == 5
            elif state == "merged":
                index.compact()
            elif state == "reopened":
                client.close()
                client = Client(data_dir)
                index = client.load_index("t", key)
            for text in ("fox", "quick brown", "naïve 東京 strasse", "the"):
                check_scores(index, live, text, k1=1.5, b=0.6)
            snapshots.append([(r["id"], r["score"]) for r in index.query(text="fox dog",
                                                                          top_k=1000)])
        # the same ids and scores in every state (to float32 precision: the per-row sums may
        # add the fields' contributions in another order)
        first = dict(snapshots[0])
        for snap in snapshots[1:]:
            assert dict(snap).keys() == first.keys()
            assert [v for _i, v in snap] == pytest.approx([first[i] for i, _v in snap], rel=2e-7)
        assert not first.keys() & set(ids[10:25])  # deleted never score
    finally:
        client.close()


def test_filters_top_k_include_and_query_metadata(client: Client) -> None:
    items = corpus(60, 2)
    index = make(client)
    index.upsert([{"id": i, "vector": vec(j), "metadata": m}
                  for j, (i, m) in enumerate(list(items.items())[:30])])
    index.flush()
    index.upsert([{"id": i, "vector": vec(j), "metadata": m}
                  for j, (i, m) in enumerate(list(items.items())[30:])])
    want = oracle(items, ["fox", "dog"], FIELDS, [1.0, 1.0], 1.2, 0.75, False)
    # a filter narrows the answer, not the statistics: scores stay the unfiltered ones
    got = index.query(text="fox dog", top_k=1000, filters={"n": 2})
    assert {r["id"] for r in got} == {i for i in want if items[i]["n"] == 2}
    for row in got:
        assert row["score"] == pytest.approx(want[row["id"]], rel=2e-7)
    top = index.query(text="fox dog", top_k=5, include=["metadata", "distance"])
    assert [r["score"] for r in top] == pytest.approx(sorted(want.values(), reverse=True)[:5],
                                                       rel=2e-7)
    assert all(set(r) == {"id", "score", "metadata"} and r["metadata"] == items[r["id"]]
               for r in top)
    meta = index.query_metadata(text="fox dog", filters={"n": {"$in": [1, 2]}})
    assert {r["id"] for r in meta} == {i for i in want if items[i]["n"] in (1, 2)}
    assert all(r["score"] == pytest.approx(want[r["id"]], rel=2e-7) for r in meta)
    assert len(index.query_metadata(text="fox", top_k=3)) == 3
    batch = index.query(text=["fox", "dog"], top_k=4)
    assert [r["id"] for r in batch[0]] == [r["id"] for r in index.query(text="fox", top_k=4)]
    assert len(batch) == 2


def test_fused_scores_follow_the_documented_formula(client: Client) -> None:
    items = corpus(50, 3)
    index = make(client)
    index.upsert([{"id": i, "vector": vec(j), "metadata": m}
                  for j, (i, m) in enumerate(items.items())])
    index.flush()
    q = vec(1000)
    for alpha, rrf_k, mult, k in ((None, None, None, 5), (0.8, 10.0, 2, 4), (0.0, 60, 3, 3)):
        width = k * (3 if mult is None else mult)
        vector_ids = [r["id"] for r in index.query(q, top_k=width)]
        text_ids = [r["id"] for r in index.query(text="quick fox", top_k=width)]
        a = 0.5 if alpha is None else alpha
        kk = 60.0 if rrf_k is None else rrf_k
        hand: dict[str, float] = {}
        for rank, i in enumerate(vector_ids, 1):
            hand[i] = hand.get(i, 0.0) + a / (kk + rank)
        for rank, i in enumerate(text_ids, 1):
            hand[i] = hand.get(i, 0.0) + (1 - a) / (kk + rank)
        want = sorted((v for v in hand.values() if v > 0), reverse=True)[:k]
        got = index.query(q, top_k=k, text="quick fox", alpha=alpha, rrf_k=rrf_k,
                          window_mult=mult, include=["distance", "metadata"])
        assert [r["score"] for r in got] == pytest.approx(want)
        assert all(r["score"] == pytest.approx(hand[r["id"]]) for r in got)
        assert all("distance" not in r and r["metadata"] == items[r["id"]] for r in got)
    filtered = index.query(q, top_k=10, text="fox", filters={"n": 0})
    assert filtered and all(items[r["id"]]["n"] == 0 for r in filtered)


@pytest.mark.parametrize("kwargs, error", [
    ({"text": "fox", "text_fields": ["nope"]}, InvalidArgumentError),
    ({"text": "fox", "text_field_weights": {"title": -1}}, InvalidArgumentError),
    ({"text": "fox", "text_field_weights": {"n": 1}}, InvalidArgumentError),
    ({"text": "fox", "alpha": 1.5, "query_vectors": [0.0] * DIM}, InvalidArgumentError),
    ({"text": "fox", "rrf_k": 0, "query_vectors": [0.0] * DIM}, InvalidArgumentError),
    ({"text": "fox", "window_mult": 0}, InvalidArgumentError),
    ({"text": 3}, InvalidTypeError),
    ({"text": "fox", "require_all_terms": "yes"}, InvalidTypeError),
    ({"query_vectors": [0.0] * DIM, "alpha": 0.5}, InvalidArgumentError),
    # every text option without text= is refused, also on the single-vector fast path
    ({"query_vectors": [0.0] * DIM, "text_fields": ["title"]}, InvalidArgumentError),
    ({"query_vectors": [0.0] * DIM, "text_field_weights": {"title": 2}}, InvalidArgumentError),
    ({"query_vectors": [0.0] * DIM, "rrf_k": 60}, InvalidArgumentError),
    ({"query_vectors": [0.0] * DIM, "window_mult": 3}, InvalidArgumentError),
    ({"query_vectors": [0.0] * DIM, "require_all_terms": True}, InvalidArgumentError),
    ({"query_vectors": [[0.0] * DIM] * 2, "rrf_k": 60}, InvalidArgumentError),
])
def test_text_errors(client: Client, kwargs: dict, error: type) -> None:
    index = make(client)
    index.upsert([{"id": "a", "vector": vec(0), "metadata": {"body": "fox"}}])
    with pytest.raises(error):
        index.query(**kwargs)
    assert issubclass(error, LsmvecError)


def test_text_on_an_index_without_full_text_fields(client: Client) -> None:
    index = client.create_index("plain", generate_key(), dimension=DIM)
    with pytest.raises(InvalidArgumentError, match="full_text"):
        index.query(text="fox")
    with pytest.raises(InvalidArgumentError, match="full_text"):
        index.query_metadata(text="fox")


@pytest.mark.anyio
async def test_async_text_query(tmp_path: Path, anyio_backend: str) -> None:
    async with AsyncClient(tmp_path / "async") as client:
        index = await client.create_index("t", generate_key(), dimension=DIM,
                                          text_fields=["body"])
        await index.upsert([{"id": "a", "vector": vec(0), "metadata": {"body": "fox dog"}},
                            {"id": "b", "vector": vec(1), "metadata": {"body": "dog"}}])
        got = await index.query(text="fox")
        assert [r["id"] for r in got] == ["a"]
        fused = await index.query(vec(1), top_k=2, text="fox")
        assert {r["id"] for r in fused} == {"a", "b"}
        assert [r["id"] for r in await index.query_metadata(text="dog")] == ["b", "a"]


def _one_segment(data_dir: Path, key: bytes) -> Path:
    """An index "t" with one flushed segment holding a text index; its folder."""
    with Client(data_dir) as client:
        index = make(client, key=key)
        index.upsert([{"id": "a", "vector": vec(0), "metadata": {"body": "fox"}},
                      {"id": "b", "vector": vec(1), "metadata": {"body": "lazy dog"}}])
        index.flush()
        (segment,) = index.stats()["segments"]
    (folder,) = data_dir.rglob(segment_dir_name(segment["id"]))
    return folder


def test_text_index_is_a_sealed_file_of_the_segment_folder(data_dir: Path) -> None:
    key = generate_key()
    folder = _one_segment(data_dir, key)
    sidecar = folder / "text.idx"
    assert sidecar.is_file() and sidecar.stat().st_size > 0
    with Client(data_dir) as client:  # read back from the file after a reopen
        index = client.load_index("t", key)
        assert [r["id"] for r in index.query(text="dog")] == ["b"]
        index.upsert([{"id": "c", "vector": vec(2), "metadata": {"body": "dog dog"}}])
        index.flush()
        index.train()  # one merge of every segment: its index goes into the new folder
        (segment,) = index.stats()["segments"]
        assert [r["id"] for r in index.query(text="dog")] == ["c", "b"]
    assert not folder.exists()
    assert [p.parent.name for p in data_dir.rglob("text.idx")] == [
        segment_dir_name(segment["id"])]


@pytest.mark.parametrize("damage", ["flip", "delete", "truncate"])
def test_damaged_text_index_file_is_corruption_naming_it(data_dir: Path, damage: str) -> None:
    from lsmvec.errors import CorruptionError
    key = generate_key()
    sidecar = _one_segment(data_dir, key) / "text.idx"
    if damage == "delete":
        sidecar.unlink()
    else:
        raw = bytearray(sidecar.read_bytes())
        if damage == "flip":
            raw[len(raw) // 2] ^= 0x40
        sidecar.write_bytes(raw if damage == "flip" else raw[:-7])
    with Client(data_dir) as client:
        with pytest.raises(CorruptionError) as info:
            client.load_index("t", key)
    assert info.value.path and info.value.path.endswith("text.idx")


def test_segment_with_its_text_index_in_the_store_still_reads(data_dir: Path,
                                                              monkeypatch) -> None:
    """Segments written by the first BM25 build kept the text index as a store value
    (text/<segment>) instead of the folder's text.idx: still read, and dropped with them."""
    import lsmvec.db.jobs as jobs
    build = jobs.build_segment_folder
    monkeypatch.setattr(jobs, "build_segment_folder",
                        lambda *a, **kw: build(*a, **{**kw, "text": None}))
    key = generate_key()
    folder = _one_segment(data_dir, key)
    assert not (folder / "text.idx").exists()
    with Client(data_dir) as client:
        index = client.load_index("t", key)
        core = index._core
        (source,) = core.segments
        assert source.text is None  # nothing in the folder, nothing in the store yet
        from lsmvec.db.text_search import build_text
        text = build_text([{"body": "fox"}, {"body": "lazy dog"}], 2, ("title", "body"))
        with core.commit_lock:
            core.store.commit(lambda txn: txn.put_meta(b"text/%d" % source.id, text.pack()))
    monkeypatch.undo()
    with Client(data_dir) as client:
        index = client.load_index("t", key)
        assert [r["id"] for r in index.query(text="dog")] == ["b"]
        check_scores(index, {"a": {"body": "fox"}, "b": {"body": "lazy dog"}}, "lazy fox")
        index.upsert([{"id": "c", "vector": vec(2), "metadata": {"body": "dog"}}])
        index.flush()
        index.train()  # merges the legacy segment away
        assert index._core.store.get_meta(b"text/%d" % source.id) is None
        check_scores(index, {"a": {"body": "fox"}, "b": {"body": "lazy dog"},
                             "c": {"body": "dog"}}, "dog fox")
