"""get(filters=) and delete(filters=) (issue 18, deliverable 4) against a dict oracle with the
Python predicates of tests/filter_oracle.py, over flushed segments, a merged (trained) segment
and a live memtable, before and after reopen; delete(filters=) as exactly one log record,
decided at its place in the log, durable across a crash; user errors before anything is
written; the async face."""
from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import pytest

from filter_oracle import oracle_match
from conftest import run_then_exit

from lsmvec import AsyncClient, Client, generate_key
from lsmvec.disk.records import KIND_DELETE, KIND_UPSERT
from lsmvec.disk.store import Store
from lsmvec.errors import FilterError, InvalidArgumentError, InvalidTypeError
from lsmvec.wal import LogWriter

DIM = 4
KINDS = ("a", "b", "c")
SPECS = [
    {"kind": "a"},
    {"n": {"$gte": 5}},
    {"$or": [{"kind": "b"}, {"n": {"$lt": 2}}]},
    {"kind": {"$ne": "a"}},
    {"kind": {"$in": ["a", "c"]}, "n": {"$lte": 6}},
    {"tags": {"$contains": "x"}},  # no exact term plan: the metadata fallback
    {"$nor": [{"kind": "a"}, {"n": 3}]},
]


def _meta(i: int, gen: int) -> dict:
    return {"kind": KINDS[(i + gen) % 3], "n": (i * 7 + gen) % 10,
            "tags": ["x"] if (i + gen) % 4 == 0 else ["y"]}


class Layout:
    """An index with a merged segment, a flushed segment and a memtable, and its dict model."""

    def __init__(self, folder: Path, key: bytes):
        self.folder, self.key = folder, key
        self.model: dict[str, dict] = {}
        self.rng = np.random.default_rng(4)
        self.client = Client(folder)
        self.index = self.client.create_index("gd", key, dimension=DIM,
                                              background_compaction=False)
        self.put(range(0, 60), 0)
        self.index.flush()
        self.put(range(40, 100), 1)
        self.index.delete([str(i) for i in range(0, 100, 11)])
        for i in range(0, 100, 11):
            self.model.pop(str(i), None)
        self.index.flush()
        self.index.train()  # merges every segment into one
        self.put(range(90, 130), 2)
        self.index.flush()
        self.put(range(0, 140, 3), 3)  # newer versions in the memtable shadow segment rows

    def put(self, ids, gen: int) -> None:
        items = []
        for i in ids:
            meta = _meta(i, gen)
            self.model[str(i)] = meta
            items.append({"id": str(i), "vector": self.rng.standard_normal(DIM).tolist(),
                          "metadata": meta})
        self.index.upsert(items)

    def reopen(self) -> None:
        self.client.close()
        self.client = Client(self.folder)
        self.index = self.client.load_index("gd", self.key)

    def expected(self, spec: dict) -> set[str]:
        return {i for i, meta in self.model.items() if oracle_match(spec, meta)}


@pytest.fixture
def layout(tmp_path: Path):
    built = Layout(tmp_path / "data", generate_key())
    stats = built.index.stats()
    assert len(stats["segments"]) >= 2 and stats["memtable_live"] > 0, stats
    try:
        yield built
    finally:
        built.client.close()


def check_get(lay: Layout) -> None:
    for spec in SPECS:
        got = lay.index.get(filters=spec, include=["metadata"])
        ids = [g["id"] for g in got]
        assert len(ids) == len(set(ids)), spec
        assert set(ids) == lay.expected(spec), spec
        assert all(g["metadata"] == lay.model[g["id"]] for g in got), spec
        asked = ["5", "nope", "7", "5", "120", "0", "3", "11"]
        want = [i for i in asked if i in lay.model and oracle_match(spec, lay.model[i])]
        assert [g["id"] for g in lay.index.get(asked, include=[], filters=spec)] == want, spec


def test_get_by_filter_matches_oracle(layout: Layout) -> None:
    check_get(layout)
    layout.reopen()
    check_get(layout)


def test_get_by_planned_filter_reads_no_item(layout: Layout, monkeypatch) -> None:
    """An exact term plan, and every operator the term index decides (filter_masks.py),
    answers from the index: no store body is read (after a reopen, with a cold item cache); a
    part it cannot decide (a whole-list equality) reads only its candidates' bodies."""
    layout.reopen()
    reads: list[int] = []
    original = Store.get_bodies

    def counting(self, ids):
        reads.append(len(ids))
        return original(self, ids)

    monkeypatch.setattr(Store, "get_bodies", counting)
    got = layout.index.get(filters={"kind": "a", "n": {"$gte": 2}}, include=[])
    assert {g["id"] for g in got} == layout.expected({"kind": "a", "n": {"$gte": 2}})
    assert reads == []
    for spec in ({"tags": {"$contains": "x"}}, {"$nor": [{"kind": "a"}, {"n": {"$lt": 3}}]},
                 {"tags": {"$exists": False}}, {"kind": {"$regex": "^[ab]"}}):
        got = layout.index.get(filters=spec, include=[])
        assert {g["id"] for g in got} == layout.expected(spec), spec
    assert reads == []
    flushed = sum(int((~s.dead).sum()) for s in layout.index._core.segments)
    spec = {"kind": "a", "tags": ["x"]}  # whole-list equality: checked on kind "a" rows only
    got = layout.index.get(filters=spec, include=[])
    assert got and {g["id"] for g in got} == layout.expected(spec)
    assert 0 < sum(reads) <= len(layout.expected({"kind": "a"})) < flushed


def _check_all(lay: Layout) -> None:
    assert sorted(lay.index.list_ids()) == sorted(lay.model)
    assert lay.index.get_num_vectors() == len(lay.model)
    got = lay.index.get(sorted(lay.model), include=["metadata"])
    assert {g["id"]: g["metadata"] for g in got} == lay.model


def _count_records(monkeypatch) -> list[list[int]]:
    groups: list[list[int]] = []
    original = LogWriter.append_group

    def counting(self, records, *args, **kwargs):
        groups.append([kind for kind, _parts in records])
        return original(self, records, *args, **kwargs)

    monkeypatch.setattr(LogWriter, "append_group", counting)
    return groups


def test_delete_by_filter_is_one_record_and_matches_oracle(layout: Layout, monkeypatch) -> None:
    groups = _count_records(monkeypatch)
    for n, spec in enumerate([{"kind": "b"}, {"tags": {"$contains": "x"}}, {"n": {"$gt": 7}}]):
        doomed = layout.expected(spec)
        assert doomed
        before = len(groups)
        layout.index.delete(filters=spec)
        assert groups[before:] == [[KIND_DELETE]]  # one record, one group
        for i in doomed:
            del layout.model[i]
        _check_all(layout)
        assert layout.index.get(filters=spec) == []
        if n == 1:
            layout.index.flush()
    layout.reopen()
    _check_all(layout)
    layout.index.train()  # the deletes survive a merge of every segment
    _check_all(layout)


def test_delete_ids_and_filters_deletes_the_matching_ids(layout: Layout) -> None:
    asked = [str(i) for i in range(0, 140, 2)] + ["missing"]
    spec = {"kind": "a"}
    doomed = [i for i in asked if i in layout.model and oracle_match(spec, layout.model[i])]
    assert doomed and len(doomed) < len([i for i in asked if i in layout.model])
    layout.index.delete(asked, filters=spec)
    for i in doomed:
        del layout.model[i]
    _check_all(layout)
    layout.reopen()
    _check_all(layout)


def test_delete_by_filter_is_decided_at_its_log_position(layout: Layout, monkeypatch) -> None:
    """Writes batched with it (AsyncIndex's path): the upsert logged before the delete is
    judged and deleted; the one logged after it survives -- in one write_many call."""
    groups = _count_records(monkeypatch)
    vec = [0.5] * DIM
    layout.model = {i: m for i, m in layout.model.items() if m["kind"] != "c"}
    outcomes = layout.index.write_many([
        ("upsert", ([{"id": "before", "vector": vec, "metadata": {"kind": "c"}}],), {}),
        ("delete", (), {"filters": {"kind": "c"}}),
        ("upsert", ([{"id": "after", "vector": vec, "metadata": {"kind": "c"}}],), {}),
    ])
    assert outcomes == [None, None, None]
    # the delete heads its group: the write before it is applied when its ids are decided
    assert groups == [[KIND_UPSERT], [KIND_DELETE, KIND_UPSERT]]
    layout.model["after"] = {"kind": "c"}
    _check_all(layout)
    layout.reopen()
    _check_all(layout)


def test_user_errors_write_nothing(layout: Layout, monkeypatch) -> None:
    groups = _count_records(monkeypatch)
    index = layout.index
    with pytest.raises(InvalidArgumentError, match="ids or filters"):
        index.get()
    with pytest.raises(InvalidArgumentError, match="ids or filters"):
        index.delete()
    with pytest.raises(InvalidArgumentError, match="every item"):
        index.delete(filters={})
    for bad in ({"$bogus": 1}, "kind", {"n": {"$gt": [1]}}):
        with pytest.raises(FilterError):
            index.delete(filters=bad)
        with pytest.raises(FilterError):
            index.get(filters=bad)
    with pytest.raises(InvalidTypeError):
        index.delete(3.5, filters={"kind": "a"})
    with pytest.raises(InvalidArgumentError):
        index.get(filters={"kind": "a"}, include=["nope"])
    assert groups == []
    assert index.get(filters={}, include=[]) and len(index.get(filters={})) == len(layout.model)
    _check_all(layout)


_CRASH = """
    import numpy as np
    rng = np.random.default_rng(1)
    index.upsert([{"id": str(i), "vector": rng.standard_normal(4).tolist(),
                   "metadata": {"odd": i % 2}} for i in range(300)])
    index.flush()
    index.upsert([{"id": str(i), "vector": rng.standard_normal(4).tolist(),
                   "metadata": {"odd": i % 2}} for i in range(300, 400)])
    index.delete(filters={"odd": 1})
    os._exit(0)  # killed right after the call returned: no close, no flush
"""


def test_delete_by_filter_survives_a_crash(tmp_path: Path) -> None:
    key = generate_key()
    folder = tmp_path / "data"
    run_then_exit(_CRASH, folder, key)
    with Client(folder) as client:
        index = client.load_index("crash", key)
        assert sorted(index.list_ids(), key=int) == [str(i) for i in range(0, 400, 2)]
        assert index.get(filters={"odd": 1}) == []


@pytest.mark.anyio
async def test_async_get_and_delete_by_filter(tmp_path: Path) -> None:
    key = generate_key()
    rng = np.random.default_rng(2)
    model = {str(i): {"g": i % 5} for i in range(200)}
    async with AsyncClient(tmp_path / "data") as client:
        index = await client.create_index("aio", key, dimension=DIM, background_compaction=False)
        await index.upsert([{"id": i, "vector": rng.standard_normal(DIM).tolist(), "metadata": m}
                            for i, m in model.items()])
        await index.flush()
        got = await index.get(filters={"g": {"$in": [1, 2]}}, include=["metadata"])
        assert {g["id"] for g in got} == {i for i, m in model.items() if m["g"] in (1, 2)}

        async def drop(g: int) -> None:
            await index.delete(filters={"g": g})

        async with anyio.create_task_group() as tg:  # batched together by the WriteBatcher
            for g in (0, 3):
                tg.start_soon(drop, g)
        with pytest.raises(InvalidArgumentError):
            await index.delete()
        with pytest.raises(FilterError):
            await index.delete(filters={"$bad": 1})
        left = {i for i, m in model.items() if m["g"] not in (0, 3)}
        assert set(await index.list_ids()) == left
        assert {g["id"] for g in await index.get(filters={"g": {"$gte": 0}}, include=[])} == left
