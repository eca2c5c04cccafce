"""$nor, $contains and $regex through a real index: hypothesis-drawn filters (mixed with the older
operators, nested, dotted paths) against the independent oracle of tests/filter_oracle.py, over
two flushed segments with shadowed and deleted rows plus a live memtable, before and after a
reopen; and malformed operands refused before the index reads anything."""
from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from filter_oracle import FILTERS, oracle_match, random_metadata
from lsmvec import AsyncClient, Client, generate_key
from lsmvec.errors import FilterError
from lsmvec.request import filters as filters_module
from lsmvec.request.filters import compile_filter
from lsmvec.db.core import IndexCore
from lsmvec.disk.store import Store

DIM = 8


def _metadata(rng: random.Random, i: int) -> dict | None:
    return random_metadata(rng, i, depth=2, list_p=0.2, dict_p=0.35, text_p=0.7, text_len=5,
                           none_every=17)


# Hand-made items, one copy per layer, so that every HAND_FILTERS entry has matches in both.
_ANCHORS = [{"s": "bab", "t": [1, "x"], "n": "aB"}, {"s": {"t": "ab"}, "t": -1},
            {"s": "Ab", "t": 3}, {"n": "Béa"}, {"t": 5}]


class _Layout:
    """An index whose live items sit in segments (some rows shadowed by newer memtable writes,
    some deleted) and in the memtable, with the dict model of what is live and where."""

    def __init__(self, folder: Path, key: bytes) -> None:
        self.folder, self.key = folder, key
        self.model: dict[str, tuple[np.ndarray, dict | None]] = {}
        self.in_memtable: set[str] = set()
        self.rng = random.Random(18)
        self.vrng = np.random.default_rng(18)
        self.client = Client(folder)
        self.index = self.client.create_index("ops", key, dimension=DIM, metric="euclidean",
                                              background_compaction=False)
        self.put([str(i) for i in range(0, 70)], anchors="seg")
        self.index.flush()
        self.put([str(i) for i in range(70, 120)])
        self.index.flush()
        self.in_memtable.clear()
        self.memtable_writes(range(0, 170, 4), range(120, 170), range(1, 160, 9))

    def put(self, ids: list[str], anchors: str | None = None) -> None:
        items = []
        metas = [_metadata(self.rng, int(i)) for i in ids]
        if anchors:
            ids = ids + [f"{anchors}-{j}" for j in range(len(_ANCHORS))]
            metas = metas + [dict(a) for a in _ANCHORS]
        for item_id, meta in zip(ids, metas):
            vector = self.vrng.standard_normal(DIM).astype(np.float32)
            self.model[item_id] = (vector, meta)
            self.in_memtable.add(item_id)
            items.append({"id": item_id, "vector": vector, "metadata": meta})
        self.index.upsert(items)

    def memtable_writes(self, overwrite: range, new: range, delete: range) -> None:
        """Newer versions shadowing segment rows, new items, deletes: all left in the memtable."""
        self.put([str(i) for i in overwrite if str(i) in self.model])
        self.put([str(i) for i in new], anchors="mem")
        doomed = [str(i) for i in delete]
        self.index.delete(doomed)
        for item_id in doomed:
            self.model.pop(item_id, None)
            self.in_memtable.discard(item_id)

    def reopen(self) -> None:
        """Close and reopen (the memtable is flushed or replayed), then write again, so the
        memtable serves part of the answer after the reopen too."""
        self.client.close()
        self.client = Client(self.folder)
        self.index = self.client.load_index("ops", self.key)
        self.in_memtable.clear()
        self.memtable_writes(range(2, 200, 5), range(170, 200), range(5, 200, 13))

    def check_layers(self) -> None:
        stats = self.index.stats()
        assert len(stats["segments"]) >= 2 and stats["memtable_live"] > 0, stats

    def expected(self, spec: dict, query: np.ndarray, k: int) -> list[str]:
        ids = [i for i, (_, meta) in self.model.items() if oracle_match(spec, meta)]
        dist = [float(np.linalg.norm(self.model[i][0].astype(np.float64) - query)) for i in ids]
        return [ids[j] for j in np.argsort(dist, kind="stable")[:k]]


@pytest.fixture(scope="module", params=["live", "reopened"])
def layout(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[_Layout]:
    built = _Layout(tmp_path_factory.mktemp(f"ops-{request.param}"), generate_key())
    try:
        if request.param == "reopened":
            built.reopen()
        built.check_layers()
        yield built
    finally:
        built.client.close()


_QUERY = np.random.default_rng(5).standard_normal(DIM).astype(np.float32)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=FILTERS)
def test_drawn_filters_equal_the_oracle(layout: _Layout, spec: dict) -> None:
    everything = layout.index.query(_QUERY, top_k=len(layout.model), filters=spec)
    assert [h["id"] for h in everything] == layout.expected(spec, _QUERY, len(layout.model)), spec
    nearest = layout.index.query(_QUERY, top_k=3, filters=spec)
    assert [h["id"] for h in nearest] == layout.expected(spec, _QUERY, 3), spec


HAND_FILTERS = [
    {"s": {"$contains": "a"}},
    {"t": {"$contains": 1}},
    {"s": {"$regex": "^[aA]"}},
    {"s.t": {"$regex": "b"}},
    {"$nor": [{"s": {"$exists": True}}, {"n": {"$regex": "a"}}]},
    {"$or": [{"n": {"$contains": "B"}}, {"$nor": [{"t": {"$gt": 0}}]}]},
    {"$and": [{"s": {"$not": {"$regex": "a"}}}, {"t": {"$exists": True}}]},
]


@pytest.mark.parametrize("spec", HAND_FILTERS)
def test_hand_filters_match_in_every_layer(layout: _Layout, spec: dict) -> None:
    """Each filter here has matches both among the segment-resident and the memtable items,
    so a broken operator in either path shows."""
    got = [h["id"] for h in layout.index.query(_QUERY, top_k=len(layout.model), filters=spec,
                                               include=["metadata"])]
    want = layout.expected(spec, _QUERY, len(layout.model))
    assert got == want, spec
    assert 0 < len(want) < len(layout.model), spec
    assert set(want) - layout.in_memtable, spec  # some served by a segment
    assert set(want) & layout.in_memtable, spec  # some by the memtable


BAD = [
    {"s": {"$regex": "(?=a)"}},
    {"s": {"$regex": r"(a)\1"}},
    {"s": {"$regex": 3}},
    {"$or": [{"s": "a"}, {"s.t": {"$regex": "["}}]},
    {"s": {"$contains": ["a"]}},
    {"$nor": []},
    {"s": {"$regex": "a", "$options": "i"}},
]


@pytest.mark.parametrize("spec", BAD)
def test_malformed_operands_are_refused_before_anything_is_read(layout: _Layout, spec: dict,
                                                                 monkeypatch) -> None:
    calls = {"query": 0, "bodies": 0}
    real_query, real_bodies = IndexCore.query, Store.get_bodies

    def counted_query(self, *args: Any, **kwargs: Any) -> Any:
        calls["query"] += 1
        return real_query(self, *args, **kwargs)

    def counted_bodies(self, *args: Any, **kwargs: Any) -> Any:
        calls["bodies"] += 1
        return real_bodies(self, *args, **kwargs)

    monkeypatch.setattr(IndexCore, "query", counted_query)
    monkeypatch.setattr(Store, "get_bodies", counted_bodies)
    with pytest.raises(FilterError):
        layout.index.query(_QUERY, top_k=5, filters=spec)
    assert calls == {"query": 0, "bodies": 0}
    layout.index.query(_QUERY, top_k=5, filters={"n": {"$not": {"$regex": "a"}}})
    assert calls["query"] == 1  # the control: the counter does count


def test_pathological_regex_through_the_index(tmp_path: Path, monkeypatch) -> None:
    """``(a+)+$`` against a 100k-char value of 'a's ending in 'b', in a segment and in the
    memtable: the query returns (RE2 scans each value once) with the right answer."""
    hostile = "a" * 100_000 + "b"
    compiled: list[str] = []
    real_compile = filters_module.re2.compile

    def spy(pattern: str, options: Any = None) -> Any:
        compiled.append(pattern)
        return real_compile(pattern, options)

    monkeypatch.setattr(filters_module.re2, "compile", spy)
    compile_filter({"s": {"$regex": "(a+)+$"}})
    assert compiled == ["(a+)+$"]  # RE2 it is: checked before the hostile value is searched
    with Client(tmp_path) as client:
        index = client.create_index("p", generate_key(), dimension=4,
                                    background_compaction=False)
        index.upsert([{"id": "seg", "vector": [1.0, 0, 0, 0], "metadata": {"s": hostile}},
                      {"id": "hit", "vector": [0, 1.0, 0, 0], "metadata": {"s": "b" + "a" * 50}}])
        index.flush()
        index.upsert([{"id": "mem", "vector": [0, 0, 1.0, 0], "metadata": {"s": [hostile]}}])
        hits = index.query([1.0, 1.0, 1.0, 1.0], top_k=10, filters={"s": {"$regex": "(a+)+$"}})
        assert [h["id"] for h in hits] == ["hit"]
        misses = index.query([1.0, 1.0, 1.0, 1.0], top_k=10,
                             filters={"$nor": [{"s": {"$regex": "(a+)+$"}}]})
        assert sorted(h["id"] for h in misses) == ["mem", "seg"]


@pytest.mark.anyio
async def test_async_face_filters_with_the_new_operators(tmp_path: Path) -> None:
    async with AsyncClient(tmp_path) as client:
        index = await client.create_index("a", generate_key(), dimension=4)
        await index.upsert([{"id": "x", "vector": [1.0, 0, 0, 0], "metadata": {"s": "str10"}},
                            {"id": "y", "vector": [0, 1.0, 0, 0], "metadata": {"s": "other"}}])
        hits = await index.query([1.0, 0, 0, 0], top_k=5, filters={"s": {"$regex": "^str1"}})
        assert [h["id"] for h in hits] == ["x"]
        hits = await index.query([1.0, 0, 0, 0], top_k=5,
                                 filters={"$nor": [{"s": {"$contains": "r1"}}]})
        assert [h["id"] for h in hits] == ["y"]
        with pytest.raises(FilterError, match="RE2"):
            await index.query([1.0, 0, 0, 0], filters={"s": {"$regex": "(?<=x)"}})
