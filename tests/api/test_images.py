"""Images as contents (issue 18, deliverable 6): a PIL image is stored as lossless PNG bytes,
and an index whose embedding model embeds images (CLIP) embeds it and answers image and text
queries.

The CLIP model is tests/tiny_clip.py's: random weights, built once per session into a temp
folder and loaded by lsmvec from that folder with the code that loads any model. The oracles are
the pixels themselves (numpy arrays of the decoded PNG), and the same model loaded by
sentence-transformers directly, whose ``encode`` output, normalised in float64, gives the exact
distances of a brute force (the indexes here are untrained: their search is exact).
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # everything below must work without the network

import asyncio
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from PIL import Image as PIL_Image  # the "images" extra, which make test installs

from lsmvec import AsyncClient, Client, generate_key  # noqa: E402
from lsmvec import embedding as embedding_module  # noqa: E402
from lsmvec.errors import (EmbeddingModelUnavailable, InvalidContentsError,  # noqa: E402
                           MissingVectorError)
from lsmvec.request.images import PNG_MODES  # noqa: E402

from tiny_clip import DIMENSION, build_tiny_clip  # noqa: E402

TEXT_MODEL = "all-MiniLM-L6-v2"
DIST_ATOL = 1e-5


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny CLIP model, written once per test session (process)."""
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "model")


@pytest.fixture(autouse=True)
def _forget_clip(clip_folder: str) -> Iterator[None]:
    """Drop the tiny model from lsmvec's process-wide model cache after each test, so that tests
    of other modules sharing this process see the cache they expect."""
    yield
    embedding_module._cache.pop(clip_folder, None)


@pytest.fixture(scope="module")
def oracle(clip_folder: str) -> Any:
    """The same model, loaded by sentence-transformers directly (not through lsmvec)."""
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(clip_folder, device="cpu")


def encode(model: Any, inputs: list) -> np.ndarray:
    """Unit-length float64 embeddings, each kind of input in its own call (as CLIP needs)."""
    out = np.empty((len(inputs), DIMENSION))
    for is_text in (True, False):
        rows = [j for j, x in enumerate(inputs) if isinstance(x, str) == is_text]
        if rows:
            out[rows] = model.encode([inputs[j] for j in rows], convert_to_numpy=True,
                                     show_progress_bar=False)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def random_image(rng: np.random.Generator, mode: str, size: tuple[int, int]) -> Any:
    """An image of `mode` with random pixels (PIL size is (width, height))."""
    w, h = size
    if mode in ("RGB", "RGBA", "L", "LA"):
        bands = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}[mode]
        pixels = rng.integers(0, 256, (h, w, bands), dtype=np.uint8)
        return PIL_Image.fromarray(pixels[..., 0] if bands == 1 else pixels, mode=mode)
    if mode == "P":
        image = PIL_Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L")
        image = image.convert("P")
        image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
        return image
    if mode == "1":
        return PIL_Image.fromarray(rng.integers(0, 2, (h, w), dtype=np.uint8) * 255,
                                   mode="L").convert("1")
    if mode in ("I;16", "I;16B"):
        image = PIL_Image.new(mode, (w, h))
        image.putdata(rng.integers(0, 65536, w * h).tolist())
        return image
    raise AssertionError(mode)


def pixels(image: Any) -> np.ndarray:
    return np.asarray(image)


def decoded(data: bytes) -> Any:
    """PNG bytes -> the image (fully loaded), checking that they are a PNG."""
    assert isinstance(data, bytes) and data[:8] == b"\x89PNG\r\n\x1a\n"
    image = PIL_Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    return image


def assert_same_image(data: bytes, original: Any) -> None:
    back = decoded(data)
    assert back.size == original.size
    assert back.mode == ("I;16" if original.mode == "I;16B" else original.mode)
    np.testing.assert_array_equal(pixels(back), pixels(original))
    if original.mode == "P":
        assert back.getpalette() == original.getpalette()


def brute_force(stored: dict[str, np.ndarray], query: np.ndarray) -> list[tuple[str, float]]:
    """(id, cosine distance) of every stored item, nearest first."""
    ids = list(stored)
    d = 1.0 - np.stack([stored[i] for i in ids]) @ query
    return [(ids[j], float(d[j])) for j in np.argsort(d, kind="stable")]


def assert_exact(results: list[dict], stored: dict[str, np.ndarray], query: np.ndarray,
                 top_k: int | None = None) -> None:
    """`results` is the brute force's top `top_k` (all items by default): each hit at its own
    exact distance, and the distances those of the nearest items (so only exact ties may swap)."""
    want = brute_force(stored, query)[:top_k]
    exact = dict(want if top_k is None else brute_force(stored, query))
    ids = [r["id"] for r in results]
    assert len(ids) == len(want) and len(set(ids)) == len(ids)
    np.testing.assert_allclose([r["distance"] for r in results], [exact[i] for i in ids],
                               atol=DIST_ATOL, rtol=0)
    np.testing.assert_allclose([r["distance"] for r in results], [d for _, d in want],
                               atol=DIST_ATOL, rtol=0)


def images_of(seed: int, modes: tuple[str, ...]) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {f"{mode.lower().replace(';', '')}-{j}":
            random_image(rng, mode, (20 + 7 * j, 33 - 5 * j)) for j, mode in enumerate(modes)}


EMBED_MODES = ("RGB", "RGBA", "L", "P", "RGB", "RGBA")


# ----------------------------------------------------------------------------- CLIP round trip

def test_images_round_trip_through_clip(tmp_path: Path, clip_folder: str, oracle: Any) -> None:
    images = images_of(1, EMBED_MODES)
    want = dict(zip(images, encode(oracle, list(images.values()))))
    with Client(tmp_path / "data") as client:
        index = client.create_index("pics", generate_key(), embedding_model=clip_folder,
                                    metric="cosine")
        assert index.dimension == DIMENSION
        index.upsert([{"id": k, "contents": im, "metadata": {"mode": im.mode}}
                      for k, im in images.items()])
        assert index.get_num_vectors() == len(images) and not index.is_trained()
        got = index.get(list(images))
        assert [g["id"] for g in got] == list(images)
        for item in got:
            assert_same_image(item["contents"], images[item["id"]])
            assert item["metadata"] == {"mode": images[item["id"]].mode}
            np.testing.assert_allclose(item["vector"], want[item["id"]], atol=1e-6, rtol=0)
        # one image: a flat list; its own image is nearest, at distance ~0
        probe = images["rgba-1"]
        single = index.query(query_contents=probe, top_k=len(images))
        assert single[0]["id"] == "rgba-1" and abs(single[0]["distance"]) < DIST_ATOL
        assert_exact(single, want, encode(oracle, [probe])[0])
        # a fresh image and texts, alone and in batches (lists of lists, in query order)
        fresh = random_image(np.random.default_rng(99), "RGB", (40, 24))
        texts = ["a photo of a cat", "red square"]
        queries = [fresh, *texts, probe]
        qv = encode(oracle, queries)
        batch = index.query(query_contents=queries, top_k=len(images))
        assert len(batch) == len(queries)
        for results, q in zip(batch, qv):
            assert_exact(results, want, q)
        assert_exact(index.query(query_contents=texts[0], top_k=len(images)), want, qv[1])
        assert_exact(index.query(query_contents=[fresh], top_k=3)[0], want, qv[0], top_k=3)
        # an image passed as query_vectors is contents too, never an array of pixel rows
        assert_exact(index.query(fresh, top_k=len(images)), want, qv[0])
        filtered = index.query(query_contents=fresh, top_k=10, filters={"mode": "RGB"})
        assert_exact(filtered, {k: v for k, v in want.items() if images[k].mode == "RGB"}, qv[0])


def test_each_image_is_encoded_once_and_embedded_as_given(tmp_path: Path, clip_folder: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The PNG bytes are what is stored; the model sees the caller's image objects, not images
    decoded back from the PNG (one save per image, none for the embedding)."""
    images = images_of(2, ("RGB", "L", "RGBA"))
    saves: list[str] = []
    real_save = PIL_Image.Image.save
    monkeypatch.setattr(PIL_Image.Image, "save",
                        lambda self, fp, *a, **kw: (saves.append(kw.get("format") or a[0]),
                                                    real_save(self, fp, *a, **kw))[1])
    with Client(tmp_path / "data") as client:
        index = client.create_index("pics", generate_key(), embedding_model=clip_folder,
                                    metric="cosine")
        seen: list[Any] = []
        embedder = index._core.embedder
        real_encode = embedder._encode
        monkeypatch.setattr(embedder, "_encode", lambda inputs: (seen.extend(inputs),
                                                                 real_encode(inputs))[1])
        index.upsert([{"id": k, "contents": im} for k, im in images.items()])
    assert saves == ["PNG"] * len(images)
    assert len(seen) == len(images) and all(a is b for a, b in zip(seen, images.values()))


def test_mixed_batch_of_texts_and_images(tmp_path: Path, clip_folder: str, oracle: Any) -> None:
    rng = np.random.default_rng(3)
    images = images_of(4, ("RGB", "L", "RGBA"))
    given = rng.standard_normal(DIMENSION).astype(np.float32)
    dup_first = random_image(rng, "RGB", (16, 16))
    items = [
        {"id": "text-a", "contents": "a dog on the beach"},
        {"id": "dup", "contents": dup_first},             # overwritten later in the batch
        *({"id": k, "contents": im} for k, im in images.items()),
        {"id": "vector", "vector": given, "contents": images["l-1"]},  # stored, not embedded
        {"id": "text-b", "contents": "mountains at dawn"},
        {"id": "dup", "contents": "the last occurrence wins"},
    ]
    with Client(tmp_path / "data") as client:
        index = client.create_index("mixed", generate_key(), embedding_model=clip_folder,
                                    metric="cosine")
        index.upsert(items)
        embedded = {"text-a": "a dog on the beach", **images, "text-b": "mountains at dawn",
                    "dup": "the last occurrence wins"}
        want = dict(zip(embedded, encode(oracle, list(embedded.values()))))
        want["vector"] = given / np.linalg.norm(given.astype(np.float64))
        got = {g["id"]: g for g in index.get(list(want))}
        assert set(got) == set(want)
        for k, g in got.items():
            np.testing.assert_allclose(g["vector"], want[k], atol=1e-6, rtol=0, err_msg=k)
            value = embedded.get(k, images["l-1"])
            if isinstance(value, str):
                assert g["contents"] == value.encode()
            else:
                assert_same_image(g["contents"], value)
        queries = ["a dog", images["rgba-2"], "dawn", dup_first]
        for results, q in zip(index.query(query_contents=queries, top_k=len(want)),
                              encode(oracle, queries)):
            assert_exact(results, want, q)


# ----------------------------------------------------------------------------- without CLIP

def test_text_only_model_refuses_images_before_writing(tmp_path: Path) -> None:
    image = random_image(np.random.default_rng(5), "RGB", (12, 10))
    with Client(tmp_path / "data") as client:
        index = client.create_index("texts", generate_key(), embedding_model=TEXT_MODEL,
                                    metric="cosine")
        index.upsert([{"id": "kept", "contents": "already here"}])
        before = index.get(["kept"])
        with pytest.raises(InvalidContentsError) as info:
            index.upsert([{"id": "fine", "contents": "a valid text item"},
                          {"id": "photo", "contents": image}])
        message = str(info.value)
        assert "'photo'" in message and "contents" in message and TEXT_MODEL in message
        assert "text only" in message
        assert index.get_num_vectors() == 1 and sorted(index.list_ids()) == ["kept"]
        assert index.get(["fine", "photo"]) == [] and index.get(["kept"]) == before
        for queries, where in ((image, "query_contents"), (["a text", image], "query_contents[1]")):
            with pytest.raises(InvalidContentsError, match=rf"^{re.escape(where)}: an image"):
                index.query(query_contents=queries)
        # with its vector given, the model is not asked: the image is stored as PNG
        vector = np.random.default_rng(6).standard_normal(index.dimension).astype(np.float32)
        index.upsert([{"id": "photo", "vector": vector, "contents": image}])
        assert_same_image(index.get(["photo"])[0]["contents"], image)


@pytest.mark.parametrize("mode", sorted(PNG_MODES))
def test_no_model_index_stores_images_with_vectors(tmp_path: Path, mode: str) -> None:
    rng = np.random.default_rng(sum(map(ord, mode)))
    images = {f"{mode}-{j}": random_image(rng, mode, (9 + j, 14 - j)) for j in range(3)}
    vectors = rng.standard_normal((3, 8)).astype(np.float32)
    with Client(tmp_path / "data") as client:
        index = client.create_index("plain", generate_key(), metric="euclidean")
        index.upsert([{"id": k, "vector": v, "contents": im}
                      for (k, im), v in zip(images.items(), vectors)])
        for g, v in zip(index.get(list(images)), vectors):
            assert_same_image(g["contents"], images[g["id"]])
            np.testing.assert_array_equal(g["vector"], v)
        hits = index.query(vectors[1], top_k=1, include=["distance", "contents"])
        assert hits[0]["id"] == f"{mode}-1"
        assert_same_image(hits[0]["contents"], images[f"{mode}-1"])


def test_no_model_index_refusals_write_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    image = random_image(rng, "RGB", (8, 8))
    vector = rng.standard_normal(4).astype(np.float32)
    with Client(tmp_path / "data") as client:
        index = client.create_index("plain", generate_key(), metric="euclidean")
        index.upsert([{"id": "a", "vector": vector}])
        with pytest.raises(MissingVectorError, match=r"item 1 \(id 'img'\): vector: missing"):
            index.upsert([{"id": "b", "vector": vector}, {"id": "img", "contents": image}])
        for mode in ("CMYK", "YCbCr", "F", "I"):
            odd = image.convert(mode)
            with pytest.raises(InvalidContentsError,
                               match=rf"item 1 \(id 'odd'\): contents: a {mode} image cannot"):
                index.upsert([{"id": "b", "vector": vector},
                              {"id": "odd", "vector": vector, "contents": odd}])
        with pytest.raises(EmbeddingModelUnavailable, match="no embedding_model"):
            index.query(query_contents=image)
        assert index.list_ids() == ["a"] and index.get_num_vectors() == 1


# ----------------------------------------------------------------------------- reopen, async

def test_images_survive_reopen_and_flush(tmp_path: Path, clip_folder: str, oracle: Any) -> None:
    key = generate_key()
    images = images_of(8, EMBED_MODES)
    more = images_of(9, ("L", "RGB"))
    more = {f"more-{k}": v for k, v in more.items()}
    with Client(tmp_path / "data") as client:
        index = client.create_index("pics", key, embedding_model=clip_folder, metric="cosine")
        index.upsert([{"id": k, "contents": im} for k, im in images.items()])
        index.flush()                                      # these go to a segment
        index.upsert([{"id": k, "contents": im} for k, im in more.items()])  # these stay logged
    embedding_module._cache.pop(clip_folder, None)  # reopening loads the model from its name
    everything = {**images, **more}
    want = dict(zip(everything, encode(oracle, list(everything.values()))))
    with Client(tmp_path / "data") as client:
        index = client.load_index("pics", key)
        assert index.index_config()["embedding_model"] == clip_folder
        for g in index.get(list(everything)):
            assert_same_image(g["contents"], everything[g["id"]])
        probe = more["more-rgb-1"]
        results = index.query(query_contents=probe, top_k=len(want),
                              include=["distance", "contents"])
        assert_exact(results, want, encode(oracle, [probe])[0])
        assert_same_image(results[0]["contents"], probe)


def test_async_face_upserts_and_queries_images(tmp_path: Path, clip_folder: str,
                                               oracle: Any) -> None:
    images = images_of(10, ("RGB", "RGBA", "L"))
    queries = [images["rgba-1"], "a small house"]
    want = dict(zip(images, encode(oracle, list(images.values()))))
    qv = encode(oracle, queries)

    async def main() -> tuple[list, list, list]:
        async with AsyncClient(tmp_path / "data") as client:
            index = await client.create_index("pics", generate_key(), embedding_model=clip_folder,
                                              metric="cosine")
            # concurrent upserts: batched by the async face into one group of log records
            await asyncio.gather(*(index.upsert([{"id": k, "contents": im}])
                                   for k, im in images.items()))
            single = await index.query(query_contents=queries[0], top_k=len(images))
            batch = await index.query(query_contents=queries, top_k=len(images))
            return single, batch, await index.get(list(images), include=["contents"])

    single, batch, got = asyncio.run(main())
    assert_exact(single, want, qv[0])
    for results, q in zip(batch, qv):
        assert_exact(results, want, q)
    for g in got:
        assert_same_image(g["contents"], images[g["id"]])
