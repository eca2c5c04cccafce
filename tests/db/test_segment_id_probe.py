"""SegmentSource.rows_of: the rows of a segment holding given ids, found through the sorted
in-process hashes of its ids -- with the caller's probe (the ids hashed and sorted once for
every segment) or without, and through hash collisions, equal to a list-scan oracle."""
from __future__ import annotations

import random

import pytest

from lsmvec.db import segments
from lsmvec.db.segments import SegmentSource, id_index_of


class _Ids:
    """What rows_of reads of a segment: its ids and its id index."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self._index = id_index_of(ids)

    def id_index(self):
        return self._index


def _oracle(held: list[str], ids: list[str]) -> list[int]:
    return sorted(held.index(i) for i in set(ids) if i in held)


@pytest.mark.parametrize("collide", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_rows_of_equals_a_scan_with_or_without_a_probe(monkeypatch, collide: bool,
                                                       seed: int) -> None:
    rng = random.Random(seed)
    if collide:  # a handful of hash values for everything: runs of equal hashes
        monkeypatch.setattr(segments, "hash", lambda s: len(s) % 4, raising=False)
    held = [f"id{rng.randrange(10_000)}-{i}" for i in range(rng.randrange(1, 400))]
    asked = rng.sample(held, rng.randrange(0, len(held) + 1)) + \
        [f"new{i}" for i in range(rng.randrange(0, 300))]
    rng.shuffle(asked)
    segment = _Ids(held)
    expected = _oracle(held, asked)
    assert sorted(SegmentSource.rows_of(segment, asked)) == expected
    assert sorted(SegmentSource.rows_of(segment, asked, id_index_of(asked))) == expected


def test_no_ids_and_an_empty_segment_find_nothing() -> None:
    assert SegmentSource.rows_of(_Ids(["a"]), []) == []
    assert SegmentSource.rows_of(_Ids([]), ["a"], id_index_of(["a"])) == []
