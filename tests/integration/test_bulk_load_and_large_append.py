"""The event store under import-sized work, on both backends: one append of tens of MB completes
(PostgreSQL used to hang in psycopg's pipeline mode, see events/pgrecorder.py), and
an append stores exactly the mapped events under consecutive notification ids, atomically, and
refuses a version conflict; ``load_many`` folds exactly what ``repository.get`` folds, leaving absent ids out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.persistence import IntegrityError

from events.pgrecorder import COPY_FROM
from events.signals import UsageDay
from mcp_server.services import Services

KW: dict[str, Any] = {"actor": "test", "source": "test", "source_id": "t",
                      "occurred_at": datetime(2026, 3, 2, tzinfo=UTC)}  # fmt: skip


def _usage_day(customer: str, day: str, inserts: list[str]) -> UsageDay:
    usage = UsageDay(customer_id=customer, account="", day=day, **KW)
    usage.count(events=len(inserts), sessions=0, users=["u1"], features={"Report Viewed": len(inserts)},
                insert_ids=inserts, **KW)  # fmt: skip
    return usage


@pytest.mark.timeout(120)
def test_one_append_of_tens_of_megabytes_completes(services: Services) -> None:
    inserts = [f"{i:016x}" for i in range(1_200_000)]  # about 24 MB of JSON in one event
    usage = _usage_day(str(uuid4()), "2026-03-02", inserts)
    position = services.app.save(usage)[-1].notification.id
    assert position == services.app.last_position()
    again: UsageDay = services.app.repository.get(usage.id)
    assert len(again.seen_inserts) == len(inserts) and again.version == 2


def test_load_many_matches_repository_get_and_leaves_absent_ids_out(services: Services) -> None:
    days = [_usage_day(str(uuid4()), f"2026-03-{d:02d}", [f"{d}-{i}" for i in range(d)]) for d in range(1, 8)]
    services.app.save(*days)
    days[0].count(events=1, sessions=1, users=["u2"], features={}, insert_ids=["late"], **KW)
    services.app.save(days[0])
    absent = [UsageDay.create_id(None, "nobody", "2026-03-01"), uuid4()]
    ids = [*(d.id for d in days), *absent]

    loaded = services.app.load_many(ids, batch=3)  # several batches

    assert set(loaded) == {d.id for d in days}
    for day in days:
        expected: UsageDay = services.app.repository.get(day.id)
        got = loaded[day.id]
        assert (got.version, got.day, got.customer_id) == (expected.version, expected.day, expected.customer_id)
        assert (got.seen_inserts, got.seen_users) == (expected.seen_inserts, expected.seen_users)
        assert not got.pending_events
    assert services.app.load_many([]) == {}


# Days per append: a few (PostgreSQL: the append function, binary column arrays) and enough for
# COPY_FROM events (PostgreSQL: COPY in binary). Two events per day.
APPEND_SIZES = [5, COPY_FROM // 2 + 1]


@pytest.mark.parametrize("size", APPEND_SIZES)
def test_append_stores_the_mapped_events_in_order_under_consecutive_ids(services: Services, size: int) -> None:
    """What the recorder writes (PostgreSQL: binary column arrays, or COPY for a large append) is
    byte for byte what the mapper made, in the order given, numbered from the head on with no
    gap; states with quotes, backslashes, braces, commas and non-ASCII text (what a composite
    text literal escapes)."""
    app = services.app
    app.save(_usage_day(str(uuid4()), "2026-02-01", ["before"]))  # the head is not 0: ids continue from it
    awkward = {'Report "Q1", {draft}': 2, "C:\\exports\\x": 1, "Übersicht — 日本": 3, "(a,b)": 1}
    days = [UsageDay(customer_id=str(uuid4()), account="", day=f"2026-03-{d % 28 + 1:02d}", **KW) for d in range(size)]
    for d, day in enumerate(days):
        day.count(events=d + 1, sessions=0, users=[f"u{d}"], features=awkward, insert_ids=[f"{d}-x"], **KW)
    head = app.last_position()
    pending = [e for day in days for e in day.pending_events]
    expected = [app.mapper.to_stored_event(e) for e in pending]

    recordings = app.save(*days)

    assert [r.notification.id for r in recordings] == list(range(head + 1, head + 1 + len(expected)))
    stored = app.recorder.select_notifications(head + 1, limit=len(expected) + 10)
    assert [n.id for n in stored] == list(range(head + 1, head + 1 + len(expected)))
    assert [(n.originator_id, n.originator_version, n.topic, bytes(n.state)) for n in stored] == [
        (e.originator_id, e.originator_version, e.topic, e.state) for e in expected]
    again: UsageDay = app.repository.get(days[2].id)
    assert again.version == 2 and again.seen_users == {"u2"}


@pytest.mark.parametrize("size", APPEND_SIZES)
def test_append_with_a_version_conflict_raises_and_stores_nothing(services: Services, size: int) -> None:
    app = services.app
    first = _usage_day(str(uuid4()), "2026-03-02", ["a"])
    app.save(first)
    rival: UsageDay = app.repository.get(first.id)
    first.count(events=1, sessions=0, users=["u1"], features={}, insert_ids=["b"], **KW)
    rival.count(events=1, sessions=0, users=["u1"], features={}, insert_ids=["c"], **KW)
    app.save(rival)
    head = app.last_position()
    # appended with the conflict (the last event): none of them may be stored
    bystanders = [_usage_day(str(uuid4()), "2026-03-03", ["z"]) for _ in range(size)]

    with pytest.raises(IntegrityError):
        app.save(*bystanders, first)

    assert app.last_position() == head
    assert not any(app.exists(b.id) for b in bystanders)
    assert app.repository.get(first.id).seen_inserts == {"a", "c"}
    assert app.save(_usage_day(str(uuid4()), "2026-03-04", ["y"]))[-1].notification.id > head  # still usable
