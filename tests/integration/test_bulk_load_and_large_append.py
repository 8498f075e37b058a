"""The event store under import-sized work, on both backends: one append of tens of MB completes
(PostgreSQL used to hang in psycopg's pipeline mode, see events/pgrecorder.py), and
``load_many`` folds exactly what ``repository.get`` folds, leaving absent ids out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest

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
