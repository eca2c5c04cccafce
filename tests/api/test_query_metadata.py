"""query_metadata (issue 18 deliverables 1-3): metadata_schema, filter-only queries from the
term indexes, order_by / top_k, the pattern-field rule -- against a dict oracle across the
memtable, segments, merges and reopen; no item read from a segment; the reference's table."""
from __future__ import annotations

import math
import random
from typing import Any

import anyio
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from filter_oracle import FILTERS, oracle_lookup, oracle_match, reference_item

from lsmvec import AsyncClient, Client, generate_key
from lsmvec.disk.store import Store
from lsmvec.errors import FilterError, InvalidArgumentError, InvalidTypeError

DIM = 4
SCHEMA = {"s": {"pattern": True}, "t": {"pattern": True}, "n": {"pattern": True},
          "secret": {"filterable": False}}


def _meta(rng: random.Random, i: int, big: bool = True) -> dict:
    pool: list[Any] = [None, True, False, 0, 1, 1.5, 2, -3, "", "a", "ab", "B", "abé", "ba",
                       ["a", 1], [], {"t": "a"}, {"s": 2}, -0.0]
    if big:  # beyond float64's exact ints: the range index leaves the path to the items
        pool.append(2 ** 60)
    meta = {key: rng.choice(pool) for key in ("s", "t", "n") if rng.random() < 0.8}
    meta["secret"] = {"pin": i}
    return meta


class Layout:
    """An index whose items sit in every kind of source, and the dict it must equal."""

    def __init__(self, folder, seed: int = 5, big: bool = True) -> None:
        self.folder, self.key = folder, generate_key()
        self.client = Client(folder)
        self.index = self.client.create_index("m", self.key, dimension=DIM, metadata_schema=SCHEMA,
                                              background_compaction=False)
        self.model: dict[str, dict] = {}
        rng = random.Random(seed)
        for round_ in range(4):  # segments, shadowed and deleted rows, a merge, the memtable
            batch = {f"id{rng.randrange(120):03d}": _meta(rng, round_, big) for _ in range(50)}
            self.index.upsert([{"id": i, "vector": [1.0, 0, 0, round_], "metadata": m}
                               for i, m in batch.items()])
            self.model.update(batch)
            gone = rng.sample(sorted(self.model), 6)
            self.index.delete(gone)
            for i in gone:
                del self.model[i]
            if round_ < 3:
                self.index.flush()
            if round_ == 1:
                self.index.compact()
        stats = self.index.stats()
        assert stats["memtable_rows"] > 0 and len(stats["segments"]) >= 2

    def reopen(self) -> None:
        self.index.flush()
        self.client.close()
        self.client = Client(self.folder)
        self.index = self.client.load_index("m", self.key)

    def expected(self, spec: dict) -> set[str]:
        return {i for i, m in self.model.items() if oracle_match(spec, m)}


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Layout:
    lay = Layout(tmp_path_factory.mktemp("qm"))
    yield lay
    lay.client.close()


def _ids(rows: list[dict]) -> list[str]:
    assert all(set(row) == {"id"} for row in rows)
    return [row["id"] for row in rows]


# ------------------------------------------------------------------ filters vs the oracle

SPECS = [None, {}, {"s": "a"}, {"n": {"$gt": 0}}, {"t": {"$contains": "a"}}, {"s": {"$regex": "^a"}},
         {"n": {"$exists": False}}, {"$nor": [{"s": "a"}, {"t": {"$in": [1, "B"]}}]},
         {"s.t": "a"}, {"t": {"$lte": "ab"}}, {"n": {"$ne": 2}}, {"s": ["a", 1]},
         {"$or": [{"n": {"$nin": [0, 1]}}, {"t": {"$not": {"$exists": True}}}]}]


def check_specs(lay: Layout) -> None:
    for spec in SPECS:
        got = _ids(lay.index.query_metadata(filters=spec))
        assert len(got) == len(set(got)), spec
        assert set(got) == lay.expected(spec or {}), spec


def test_filters_match_the_oracle_in_every_source_and_after_reopen(layout: Layout) -> None:
    check_specs(layout)
    layout.reopen()
    check_specs(layout)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=FILTERS)
def test_generated_filters_match_the_oracle(layout: Layout, spec: dict) -> None:
    assert set(_ids(layout.index.query_metadata(filters=spec))) == layout.expected(spec)


def test_no_segment_item_is_read(tmp_path, monkeypatch) -> None:
    """Every operator and the ordering come from the term indexes (a cold reopen: the item
    cache is empty, so any segment item wanted would be a store read). Ints beyond 2**53
    are the exception: ordering or ranging on their path reads the matching items."""
    lay = Layout(tmp_path, big=False)
    lay.reopen()
    reads: list[int] = []
    original = Store.get_bodies
    monkeypatch.setattr(Store, "get_bodies", lambda self, ids: reads.append(len(ids)) or original(self, ids))
    for spec in SPECS[:-2]:
        lay.index.query_metadata(filters=spec, order_by="t")
        lay.index.query_metadata(filters=spec, order_by={"n": -1}, top_k=5)
    assert reads == []
    lay.client.close()


# ------------------------------------------------------------------ order_by and top_k

_GROUPS = {"number": 0, "str": 1, "bool": 2}


def _oracle_order(lay: Layout, spec: dict, path: str, ascending: bool) -> list[str]:
    """Numbers, strings, booleans (each ascending; the three groups and their insides
    reversed for descending), then everything else; ties by id."""
    def key(item_id: str) -> tuple:
        value = oracle_lookup(lay.model[item_id], path)
        if isinstance(value, bool):
            group, v = "bool", float(value)
        elif isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
            group, v = "number", float(value)
        elif isinstance(value, str):
            group, v = "str", value
        else:
            return (1, 0, 0, item_id)
        rank = _GROUPS[group] if ascending else 2 - _GROUPS[group]
        return (0, rank, v, item_id)

    ids = sorted(lay.expected(spec))
    out = []
    for rank in range(3):
        group = [i for i in ids if key(i)[:2] == (0, rank)]
        group.sort(key=lambda i: key(i)[2], reverse=not ascending)  # stable: ties keep id order
        out.extend(group)
    return out + [i for i in ids if key(i)[0] == 1]


@pytest.mark.parametrize("path", ["s", "t", "n", "s.t"])
@pytest.mark.parametrize("ascending", [True, False])
def test_order_by_matches_the_oracle(layout: Layout, path: str, ascending: bool) -> None:
    for spec in (None, {"n": {"$exists": True}}, {"t": {"$contains": "a"}}):
        want = _oracle_order(layout, spec or {}, path, ascending)
        for order_by, kwargs in ((path, {"ascending": ascending}),
                                 ({path: 1 if ascending else -1}, {"ascending": not ascending})):
            got = _ids(layout.index.query_metadata(filters=spec, order_by=order_by, **kwargs))
            assert got == want, (path, ascending, spec)
            assert _ids(layout.index.query_metadata(filters=spec, order_by=order_by, top_k=7,
                                                    **kwargs)) == want[:7]


def test_top_k_none_and_zero_mean_every_match(layout: Layout) -> None:
    every = set(_ids(layout.index.query_metadata()))
    assert every == set(layout.model)
    assert set(_ids(layout.index.query_metadata(top_k=0))) == every
    three = _ids(layout.index.query_metadata(top_k=3))
    assert len(three) == 3 and set(three) <= every


# ------------------------------------------------------------------ schema and refusals

def test_schema_is_persisted_and_reported(layout: Layout) -> None:
    stored = layout.index.index_config()["metadata_schema"]
    assert stored["secret"] == {"filterable": False, "pattern": False, "full_text": False}
    assert stored["s"] == {"filterable": True, "pattern": True, "full_text": False}
    for source in layout.index._core.segments:  # never in any term index
        assert not [p for (p, _), _ in source.terms.rows.items() if p.startswith("secret")]


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"filters": {"secret.pin": 1}}, ["'secret.pin'", "filterable"]),
    ({"filters": {"$or": [{"s": 1}, {"secret": {"$exists": True}}]}}, ["'secret'"]),
    ({"filters": {"z": {"$regex": "a"}}}, ["$regex", "'z'", "pattern"]),
    ({"filters": {"$nor": [{"z": {"$not": {"$contains": "a"}}}]}}, ["$contains", "'z'", "pattern"]),
    ({"order_by": "secret"}, ["'secret'", "order"]),
    ({"order_by": {"s": 1, "t": 1}}, ["exactly one field"]),
    ({"order_by": {"s": 2}}, ["1", "-1"]),
    ({"order_by": 5}, ["field name"]),
    ({"order_by": "$s"}, ["field name"]),
    ({"top_k": -1}, ["top_k"]),
    ({"top_k": 1.5}, ["top_k"]),
    ({"ascending": "no"}, ["ascending"]),
    ({"filters": {"s": {"$bogus": 1}}}, ["$bogus"]),
])
def test_refusals_name_the_fault(layout: Layout, kwargs: dict, words: list[str]) -> None:
    with pytest.raises((FilterError, InvalidArgumentError)) as info:
        layout.index.query_metadata(**kwargs)
    assert all(word in str(info.value) for word in words), info.value


def test_query_still_filters_on_any_field(layout: Layout) -> None:
    """query() (a vector) post-filters: hidden fields and $regex on any field work there."""
    got = layout.index.query([1.0, 0, 0, 0], top_k=200, filters={"secret.pin": 2, "z": {"$exists": False}})
    assert {row["id"] for row in got} == layout.expected({"secret.pin": 2})


@pytest.mark.parametrize(("schema", "error", "words"), [
    ({"x": {"pattern": True, "full_text": True}}, InvalidArgumentError, ["'x'", "full_text", "pattern"]),
    ({"x": {"pattern": True, "filterable": False}}, InvalidArgumentError, ["'x'", "filterable"]),
    ({"x": {"bogus": True}}, InvalidArgumentError, ["'x'", "bogus"]),
    ({"x": {"pattern": 1}}, InvalidTypeError, ["'x'", "pattern", "bool"]),
    ({"x": True}, InvalidTypeError, ["'x'", "dict"]),
    ({"": {}}, InvalidArgumentError, ["field"]),
    ({"a.$b": {}}, InvalidArgumentError, ["'a.$b'"]),
    (["x"], InvalidTypeError, ["metadata_schema", "dict"]),
])
def test_bad_schemas_are_refused_before_any_file(tmp_path, schema: Any, error: type,
                                                 words: list[str]) -> None:
    with Client(tmp_path) as client:
        with pytest.raises(error) as info:
            client.create_index("bad", generate_key(), dimension=DIM, metadata_schema=schema)
        assert all(word in str(info.value) for word in words), info.value
        assert client.list_indexes() == []


# ------------------------------------------------------------------ the reference's table



# reference-0.18.md section 5, query_metadata() column, where lsmvec agrees (api.md lists the
# differences: $ne matches a missing field, strings compare, field-level $not, dict equality)
REFERENCE = [
    ({"grp": "odd"}, list(range(1, 20, 2))), ({"n": 3}, [3]), ({"n": {"$eq": 3}}, [3]),
    ({"flag": True}, [0, 3, 6, 9, 12, 15, 18]), ({"f": {"$eq": 1.5}}, [3]), ({"n": 3.0}, [3]),
    ({"grp": {"$ne": "odd"}}, list(range(0, 20, 2))), ({"n": {"$gt": 15}}, [16, 17, 18, 19]),
    ({"n": {"$gte": 15}}, [15, 16, 17, 18, 19]), ({"n": {"$lt": 3}}, [0, 1, 2]),
    ({"n": {"$lte": 3}}, [0, 1, 2, 3]), ({"n": {"$gt": 3, "$lt": 7}}, [4, 5, 6]),
    ({"n": {"$in": [1, 2, 3]}}, [1, 2, 3]), ({"s": {"$in": ["str1", "str2"]}}, [1, 2]),
    ({"n": {"$nin": list(range(11))}}, list(range(11, 20))), ({"tags": {"$in": ["x"]}}, [0, 5, 10, 15]),
    ({"tags": "x"}, [0, 5, 10, 15]), ({"opt": {"$exists": True}}, [0, 4, 8, 12, 16]),
    ({"opt": {"$exists": False}}, [i for i in range(20) if i % 4]),
    ({"$and": [{"grp": "even"}, {"n": {"$gt": 10}}]}, [12, 14, 16, 18]),
    ({"grp": "even", "n": {"$gt": 10}}, [12, 14, 16, 18]), ({"$or": [{"n": 1}, {"n": 2}]}, [1, 2]),
    ({"$not": {"n": {"$gt": 3}}}, [0, 1, 2, 3]), ({"$nor": [{"n": {"$gt": 3}}]}, [0, 1, 2, 3]),
    ({"nested.k": 3}, [3]), ({"nested.k": {"$gte": 18}}, [18, 19]), ({"nope": 1}, []),
    ({}, list(range(20))), ({"opt": None}, []), ({"n": {"$in": []}}, []),
    ({"$or": [{"$and": [{"grp": "odd"}, {"n": {"$lt": 4}}]}, {"n": 18}]}, [1, 3, 18]),
]
REFUSED = [{"s": {"$regex": "^str1"}}, {"s": {"$contains": "r1"}}, {"tags": {"$contains": "x"}},
           {"s": {"$regex": "STR1", "$options": "i"}}, {"tags": {"$all": ["x", "y"]}},
           {"tags": {"$size": 2}}, {"n": {"$type": "number"}}, {"n": {"$mod": [5, 0]}},
           {"n": {"$bogus": 1}}, {"$text": {"$search": "fox"}}]


@pytest.fixture(scope="module")
def reference_index(tmp_path_factory):
    with Client(tmp_path_factory.mktemp("ref")) as client:
        index = client.create_index("r", generate_key(), dimension=DIM)
        index.upsert([{"id": str(i), "vector": [float(i), 0, 0, 1], "metadata": reference_item(i)}
                      for i in range(10)])
        index.flush()  # half in a segment, half in the memtable
        index.upsert([{"id": str(i), "vector": [float(i), 0, 0, 1], "metadata": reference_item(i)}
                      for i in range(10, 20)])
        yield index


@pytest.mark.parametrize(("spec", "expected"), REFERENCE)
def test_reference_table(reference_index, spec: dict, expected: list[int]) -> None:
    got = _ids(reference_index.query_metadata(filters=spec, order_by="n"))
    assert got == [str(i) for i in expected]


@pytest.mark.parametrize("spec", REFUSED)
def test_reference_table_refusals(reference_index, spec: dict) -> None:
    with pytest.raises(FilterError):  # a ValueError, as the reference raises
        reference_index.query_metadata(filters=spec)


def test_reference_order(tmp_path) -> None:
    """The order the reference product gave for these values (observed, cyborgdb-core 0.18)."""
    values = {"a": 3, "b": "x", "c": 1.5, "d": None, "e": True, "g": [5, 0], "h": "B",
              "i": {"k": 1}, "j": -2}
    with Client(tmp_path) as client:
        index = client.create_index("o", generate_key(), dimension=DIM)
        index.upsert([{"id": k, "vector": [1.0, 2, 3, 4], "metadata": {"v": v}}
                      for k, v in values.items()] + [{"id": "f", "vector": [1.0, 2, 3, 4]}])
        for flushed in (False, True):
            assert _ids(index.query_metadata(order_by="v"))[:6] == ["j", "c", "a", "h", "b", "e"]
            assert _ids(index.query_metadata(order_by={"v": -1}))[:6] == ["e", "b", "h", "a", "c", "j"]
            assert set(_ids(index.query_metadata(order_by="v"))[6:]) == {"d", "f", "g", "i"}
            if not flushed:
                index.flush()


def test_async_face(tmp_path) -> None:
    async def main() -> list:
        async with AsyncClient(tmp_path) as client:
            index = await client.create_index("a", generate_key(), dimension=DIM,
                                              metadata_schema={"s": {"pattern": True}})
            await index.upsert([{"id": str(i), "vector": np.ones(DIM), "metadata": {"s": f"v{i}"}}
                                for i in range(5)])
            return await index.query_metadata(filters={"s": {"$regex": "[13]$"}},
                                              order_by={"s": -1})

    assert anyio.run(main) == [{"id": "3"}, {"id": "1"}]
