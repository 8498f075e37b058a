"""projections.health_history.first_stale_day: which recorded day a late event changed, from the
late-event markers (day, position of its latest late event) and the log position each recorded
day was computed at."""

from __future__ import annotations

from datetime import date

from projections.health_history import first_stale_day

LAST = date(2026, 10, 6)
RECORDED = {f"2026-10-0{n}": 100 * n for n in range(1, 7)}  # day n computed at position 100 n


def test_a_marker_counted_by_every_day_from_its_own_changes_nothing() -> None:
    assert first_stale_day([], RECORDED, LAST) is None
    assert first_stale_day([("2026-10-02", 150)], RECORDED, LAST) is None  # days 2-6 computed at 200 and later
    assert first_stale_day([("2026-10-02", 200)], RECORDED, LAST) is None  # computed at its very event: counted
    assert first_stale_day([("2026-10-02", 201)], RECORDED, LAST) == date(2026, 10, 2)


def test_a_marker_changes_every_later_day_computed_before_its_event() -> None:
    # The event occurred on day 2 and was folded at 350: days 2 and 3 were computed before it.
    assert first_stale_day([("2026-10-02", 350)], RECORDED, LAST) == date(2026, 10, 2)
    # Occurred on day 1, folded at 450 (after days 1-4 were computed): from day 1 on.
    assert first_stale_day([("2026-10-01", 450)], RECORDED, LAST) == date(2026, 10, 1)


def test_markers_in_any_order_and_the_newest_position_so_far_counts() -> None:
    # Day 1's event was folded at 550 (day 1 was computed at 100): stale from day 1, whatever
    # order the markers come in.
    markers = [("2026-10-03", 120), ("2026-10-01", 550)]
    assert first_stale_day(markers, RECORDED, LAST) == date(2026, 10, 1)
    assert first_stale_day(list(reversed(markers)), RECORDED, LAST) == date(2026, 10, 1)
    # Day 1's event (90) is counted everywhere; day 2's (250) is not counted by day 2 (200).
    assert first_stale_day([("2026-10-01", 90), ("2026-10-02", 250)], RECORDED, LAST) == date(2026, 10, 2)
    # Day 2 was recorded again at 400, so it counts day 2's event (350); day 3 (computed at 300)
    # does not, though the marker of day 3 itself (120) is older: day 2's event changes day 3 too.
    recorded_again = {**RECORDED, "2026-10-02": 400}
    assert first_stale_day([("2026-10-02", 350), ("2026-10-03", 120)], recorded_again, LAST) == date(2026, 10, 3)


def test_days_without_a_position_count_as_zero_and_last_bounds_the_walk() -> None:
    legacy = {day: position for day, position in RECORDED.items() if day != "2026-10-04"}
    assert first_stale_day([("2026-10-03", 300)], legacy, LAST) == date(2026, 10, 4)
    assert first_stale_day([("2026-10-03", 300)], legacy, date(2026, 10, 3)) is None
    assert first_stale_day([("2026-10-06", 650)], RECORDED, LAST) == LAST  # the last day itself
    assert first_stale_day([("2026-10-07", 10)], RECORDED, LAST) is None  # after the last recorded day
