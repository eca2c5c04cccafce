"""Which segments to merge next: a pure, table-tested picker (LevelDB's PickCompaction).

Size-tiered: segments are grouped into tiers by row count (each tier TIER_RATIO times the one
below); once a tier holds MERGE_WIDTH segments, they are merged into one of the next tier. So
every row is rewritten about log_{TIER_RATIO}(N / smallest) times over its life, and a query
searches at most MERGE_WIDTH - 1 segments per tier. A segment whose rows are mostly dead is
rewritten alone, so deleted data does not hold disk and memory for long.

Before the tiers comes the size-amplification trigger (RocksDB universal compaction's
max_size_amplification_percent): once the dead rows of all segments together exceed
`max_dead_ratio` x their live rows, the most-dead segments are merged -- as many as it takes to
bring the dead rows left elsewhere under half that ratio, so the next trigger is not one
overwrite away. Overwrites spread over every segment are invisible to the tiers (each segment
only a little dead) and to DEAD_FRACTION, yet together they grew a folder to 27x its live data
(engine/db/space.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

TIER_RATIO = 4
"""Rows grow 4x per tier: a merge of 4 equal segments lands in the next tier."""

MERGE_WIDTH = 4
"""Segments of one tier merged at once: fewer means more rewrites, more means more segments
searched per query (each costs a ScaNN call)."""

BASE_ROWS = 1024
"""Everything up to this size is tier 0: tiny flushes merge early."""

DEAD_FRACTION = 0.5
"""A segment with more than half its rows dead is rewritten alone."""


@dataclass(frozen=True)
class SegmentStat:
    id: int
    rows: int
    dead: int


def tier(rows: int) -> int:
    if rows <= BASE_ROWS:
        return 0
    return int(math.log(rows / BASE_ROWS, TIER_RATIO)) + 1


def pick(segments: list[SegmentStat], max_dead_ratio: float | None = None) -> list[int] | None:
    """Ids of the segments to merge next, or None when nothing is worth doing.
    `max_dead_ratio`: the size-amplification trigger (None: off)."""
    if max_dead_ratio is not None and (picked := _space_pick(segments, max_dead_ratio)):
        return picked
    tiers: dict[int, list[SegmentStat]] = {}
    for seg in segments:
        tiers.setdefault(tier(seg.rows - seg.dead), []).append(seg)
    for level in sorted(tiers):
        members = tiers[level]
        if len(members) >= MERGE_WIDTH:
            members = sorted(members, key=lambda s: (s.rows - s.dead, s.id))[:MERGE_WIDTH]
            return sorted(s.id for s in members)
    for seg in segments:
        if seg.rows and seg.dead / seg.rows > DEAD_FRACTION:
            return [seg.id]
    return None


def _space_pick(segments: list[SegmentStat], max_dead_ratio: float) -> list[int] | None:
    dead = sum(s.dead for s in segments)
    live = sum(s.rows - s.dead for s in segments)
    if dead == 0 or dead <= max_dead_ratio * live:
        return None
    allowed = max_dead_ratio / 2 * live
    picked: list[int] = []
    for seg in sorted(segments, key=lambda s: (-(s.dead / s.rows if s.rows else 0), s.id)):
        if dead <= allowed or seg.dead == 0:
            break
        picked.append(seg.id)
        dead -= seg.dead
    return sorted(picked)
