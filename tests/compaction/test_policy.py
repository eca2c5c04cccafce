"""Table tests for the size-tiered merge picker (compaction.policy.pick).

The picker is pure: a list of SegmentStat(id, rows, dead) in, the ids to merge (or None) out.
The tables pin the contract: tiers by live rows, MERGE_WIDTH members of the lowest full tier,
smallest first, a dead-heavy segment rewritten alone, and None when nothing is worth doing.
A hypothesis check then runs the picker to a fixed point and checks it always terminates with
every tier below MERGE_WIDTH and no dead-heavy segment left. The size-amplification trigger
(pick's max_dead_ratio) has its own table and a property: what it picks, merged, leaves the
dead rows within half the ratio.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsmvec.compaction.policy import (BASE_ROWS, DEAD_FRACTION, MERGE_WIDTH, TIER_RATIO, SegmentStat,
                                      _space_pick, pick, tier)

S = SegmentStat


def segs(*rows: int) -> list[SegmentStat]:
    """Segments with ids 1.. and no dead rows."""
    return [S(i + 1, r, 0) for i, r in enumerate(rows)]


def test_constants_are_the_documented_ones() -> None:
    # The tables below are written against these values; a change must revisit them.
    assert (TIER_RATIO, MERGE_WIDTH, BASE_ROWS, DEAD_FRACTION) == (4, 4, 1024, 0.5)


@pytest.mark.parametrize("rows, expected", [
    (0, 0), (1, 0), (BASE_ROWS, 0),
    (BASE_ROWS + 1, 1), (2 * BASE_ROWS, 1), (4 * BASE_ROWS - 1, 1),
    (4 * BASE_ROWS + 1, 2), (16 * BASE_ROWS - 1, 2),
    (16 * BASE_ROWS + 1, 3), (64 * BASE_ROWS + 1, 4),
])
def test_tier_of_row_counts(rows: int, expected: int) -> None:
    assert tier(rows) == expected


def test_tiers_never_decrease_with_rows() -> None:
    levels = [tier(r) for r in range(0, 70 * BASE_ROWS, 97)]
    assert levels == sorted(levels)


@pytest.mark.parametrize("segments, expected", [
    # nothing at all / too few per tier
    ([], None),
    (segs(10), None),
    (segs(10, 20, 30), None),
    # three per tier in two tiers: still nothing
    (segs(10, 20, 30, 2000, 3000, 3500), None),
    # MERGE_WIDTH tier-0 segments: merge exactly those
    (segs(10, 20, 30, 40), [1, 2, 3, 4]),
    # more than MERGE_WIDTH in a tier: the MERGE_WIDTH smallest, output sorted by id
    (segs(500, 10, 400, 20, 30, 300), [2, 4, 5, 6]),
    # equal sizes: ties broken by id (oldest first)
    ([S(9, 100, 0), S(3, 100, 0), S(7, 100, 0), S(5, 100, 0), S(1, 100, 0)], [1, 3, 5, 7]),
    # the lowest full tier wins even when a higher tier is full too
    (segs(2000, 2100, 2200, 2300, 10, 20, 30, 40), [5, 6, 7, 8]),
    # only a higher tier is full
    (segs(2000, 2100, 2200, 2300, 10, 20, 30), [1, 2, 3, 4]),
    # four tier-1 segments of different sizes
    (segs(1500, 3000, 1100, 4000), [1, 2, 3, 4]),
    # big tiers: four 5000-row segments (tier 2) plus one huge
    (segs(5000, 6000, 7000, 8000, 1_000_000), [1, 2, 3, 4]),
    # tiers are computed on live rows: four 2000-row segments, one mostly dead (300 live) drops
    # to tier 0, leaving three in tier 1 -> nothing to merge by tier; 1700/2000 dead > 0.5 ->
    # the dead-fraction rule rewrites it alone
    ([S(1, 2000, 0), S(2, 2000, 0), S(3, 2000, 1700), S(4, 2000, 0)], [3]),
    # live rows can put four segments in one tier though their row counts differ
    ([S(1, 5000, 4000), S(2, 100, 0), S(3, 200, 0), S(4, 300, 0)], [1, 2, 3, 4]),
])
def test_pick_table(segments: list[SegmentStat], expected: list[int] | None) -> None:
    assert pick(segments) == expected


@pytest.mark.parametrize("segments, expected", [
    # exactly half dead is not "more than half"
    ([S(1, 100, 50)], None),
    ([S(1, 100, 51)], [1]),
    ([S(1, 10, 10)], [1]),
    # the first dead-heavy segment in list order is rewritten alone
    ([S(1, 100, 0), S(2, 100, 90), S(3, 100, 99)], [2]),
    # a tier merge takes precedence over a dead-fraction rewrite
    ([S(1, 100, 0), S(2, 100, 0), S(3, 100, 0), S(4, 100, 0), S(5, 5000, 4000)], [1, 2, 3, 4]),
    # an empty segment (0 rows) is not a division by zero and is not rewritten for deadness
    ([S(1, 0, 0)], None),
    # dead rows below the fraction do nothing
    ([S(1, 2000, 900), S(2, 3000, 1400)], None),
])
def test_pick_dead_fraction_table(segments: list[SegmentStat], expected: list[int] | None) -> None:
    assert pick(segments) == expected


def test_pick_does_not_mutate_or_depend_on_input_order() -> None:
    segments = segs(40, 10, 30, 20, 5000)
    before = list(segments)
    first = pick(segments)
    assert segments == before
    assert pick(list(reversed(segments))) == first == [1, 2, 3, 4]


def test_merging_a_full_tier_lands_higher() -> None:
    """The docstring's promise: MERGE_WIDTH equal segments of a tier > 0 merge into a higher
    tier, so the same rows are not rewritten again at the same level."""
    for rows in (BASE_ROWS + 1, 2000, 4000, 5000, 20_000, 100_000):
        assert tier(rows * MERGE_WIDTH) > tier(rows), rows


@st.composite
def segment_lists(draw) -> list[SegmentStat]:
    n = draw(st.integers(0, 40))
    out = []
    for i in range(n):
        rows = draw(st.one_of(st.integers(0, 2 * BASE_ROWS), st.integers(0, 200_000)))
        dead = draw(st.integers(0, rows))
        out.append(S(i + 1, rows, dead))
    return out


@settings(max_examples=200, deadline=None, derandomize=True)
@given(segment_lists())
def test_pick_run_to_fixed_point(segments: list[SegmentStat]) -> None:
    """Apply each pick as the compactor does (picked segments replaced by one holding their
    live rows, no dead): it stops, and at the fixed point every tier holds fewer than
    MERGE_WIDTH segments and no segment is more than DEAD_FRACTION dead."""
    live_total = sum(s.rows - s.dead for s in segments)
    next_id = len(segments) + 1
    current = list(segments)
    for _step in range(10 * len(segments) + 2):
        picked = pick(current)
        if picked is None:
            break
        ids = {s.id for s in current}
        assert picked == sorted(set(picked)), picked
        assert set(picked) <= ids, (picked, ids)
        assert len(picked) == 1 or len(picked) == MERGE_WIDTH, picked
        merged_rows = sum(s.rows - s.dead for s in current if s.id in picked)
        current = [s for s in current if s.id not in picked]
        if merged_rows:
            current.append(S(next_id, merged_rows, 0))
            next_id += 1
    else:
        raise AssertionError(f"pick did not reach a fixed point from {segments}")
    assert sum(s.rows - s.dead for s in current) == live_total
    per_tier: dict[int, int] = {}
    for s in current:
        per_tier[tier(s.rows - s.dead)] = per_tier.get(tier(s.rows - s.dead), 0) + 1
        assert not (s.rows and s.dead / s.rows > DEAD_FRACTION), s
    assert all(count < MERGE_WIDTH for count in per_tier.values()), per_tier


# -- the size-amplification trigger (pick(segments, max_dead_ratio)) ---------------------------
# Once the dead rows of all segments together exceed max_dead_ratio x their live rows, the
# most-dead segments (by dead fraction; ties by id) are merged, as many as bring the dead rows
# left under half that ratio (hysteresis). Sizes below keep the tier and dead-fraction rules
# quiet unless a row says otherwise.

@pytest.mark.parametrize("segments, ratio, fired, expected", [
    # no segments, no dead rows, only empty segments: nothing
    ([], 0.5, False, None),
    (segs(5000, 6000), 0.5, False, None),
    ([S(1, 0, 0), S(2, 5000, 0)], 0.01, False, None),
    # below the ratio: 1200 dead <= 0.5 x 2800 live
    ([S(1, 2000, 600), S(2, 2000, 600)], 0.5, False, None),
    # exactly at the ratio (1000 dead = 0.5 x 2000 live) is not above it
    ([S(1, 1500, 500), S(2, 1500, 500)], 0.5, False, None),
    # one dead row above it: 1001 > 0.5 x 1999; the more dead first (501 > 500), and it takes
    # both to get under 0.25 x 1999
    ([S(1, 1500, 501), S(2, 1500, 500)], 0.5, True, [1, 2]),
    # most-dead first, one is enough: 700 dead > 0.2 x 3300; without seg 2 (40% dead) 300
    # are left <= 0.1 x 3300
    ([S(1, 1000, 100), S(2, 1000, 400), S(3, 1000, 200), S(4, 1000, 0)], 0.2, True, [2]),
    # hysteresis: seg 2 alone would leave 450 dead, under 0.2 x 3300 = 660 but not under half
    # of it (330): the next most dead (seg 3, 20%) goes too -- and the trigger beats the tier
    # rule that would merge these four tier-0 segments
    ([S(1, 1000, 100), S(2, 1000, 250), S(3, 1000, 200), S(4, 1000, 150)], 0.2, True, [2, 3]),
    # a fully dead segment goes first (600 dead > 0.1 x 3900; 100 left <= 195); a fully live
    # one is never picked
    ([S(1, 1000, 0), S(2, 500, 500), S(3, 3000, 100)], 0.1, True, [2]),
    ([S(1, 1000, 0), S(2, 500, 500), S(3, 3000, 200)], 0.1, True, [2, 3]),
    # nothing live at all: every segment holding dead rows is picked
    ([S(1, 10, 10), S(2, 20, 20)], 0.5, True, [1, 2]),
    ([S(1, 10, 10), S(2, 0, 0)], 3.0, True, [1]),
    # equal dead fractions: the lower id first (its 1000 dead rows are enough: 100 left)
    ([S(5, 200, 100), S(2, 2000, 1000), S(3, 10_000, 0)], 0.09, True, [2]),
    ([S(2, 200, 100), S(5, 2000, 1000), S(3, 10_000, 0)], 0.09, True, [2, 5]),
    # a huge ratio (A = 1000) does not fire here; the tier rule still applies
    ([S(1, 100, 99), S(2, 100, 0), S(3, 100, 0), S(4, 100, 0)], 249.75, False, [1, 2, 3, 4]),
])
def test_space_trigger_table(segments: list[SegmentStat], ratio: float, fired: bool,
                             expected: list[int] | None) -> None:
    assert _space_pick(segments, ratio) == (expected if fired else None)
    assert pick(segments, ratio) == expected
    assert pick(list(reversed(segments)), ratio) == expected  # list order does not matter


def test_space_trigger_off_is_the_tier_policy() -> None:
    """None (close's quick tidy-up) turns the trigger off: 13,800 dead rows for 116,200 live,
    each segment below DEAD_FRACTION and no tier full, are left alone."""
    heavy = [S(1, 5000, 2400), S(2, 5000, 2400), S(3, 20_000, 9000), S(4, 100_000, 0)]
    assert pick(heavy) is None and pick(heavy, None) is None
    assert pick(heavy, 0.1) == [1, 2, 3]


def _dead_after_merging(segments: list[SegmentStat], picked: list[int]) -> tuple[int, int]:
    """(dead, live) rows once `picked` are merged into one segment of their live rows."""
    dead = sum(s.dead for s in segments if s.id not in picked)
    live = sum(s.rows - s.dead for s in segments)
    return dead, live


@settings(max_examples=200, deadline=None, derandomize=True)
@given(segment_lists(), st.floats(0.001, 250.0))
def test_space_trigger_brings_dead_under_half_the_ratio(segments: list[SegmentStat],
                                                       ratio: float) -> None:
    """After merging what the trigger picks (dead rows dropped), the dead rows left are at most
    half the ratio of the live ones -- or nothing was pickable (the dead rows were within the
    ratio). It picks no fully live segment, and no more than it needs: without its last
    (least dead) pick the dead rows left would still be above half the ratio."""
    dead = sum(s.dead for s in segments)
    live = sum(s.rows - s.dead for s in segments)
    picked = _space_pick(segments, ratio)
    if picked is None:
        assert dead == 0 or dead <= ratio * live
        assert pick(segments, ratio) == pick(segments)  # the tier policy decides
        return
    assert dead > ratio * live
    assert pick(segments, ratio) == picked
    by_id = {s.id: s for s in segments}
    assert picked == sorted(set(picked)) and set(picked) <= set(by_id)
    assert all(by_id[i].dead > 0 for i in picked)
    left, live_after = _dead_after_merging(segments, picked)
    assert live_after == live
    assert left <= ratio / 2 * live
    # greedy and minimal: the picked are the most dead, and the last one was needed
    fraction = {s.id: s.dead / s.rows for s in segments if s.rows}
    others = [fraction[s.id] for s in segments if s.id not in picked and s.rows]
    assert not others or min(fraction[i] for i in picked) >= max(others)
    last = min(picked, key=lambda i: (fraction[i], -i))
    assert _dead_after_merging(segments, [i for i in picked if i != last])[0] > ratio / 2 * live
