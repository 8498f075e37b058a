"""The PostgreSQL append (events/pgrecorder.py): one statement, its own transaction, that takes
the events table's EXCLUSIVE lock, notifies the table's channel and inserts. What it stores
(the mapped events, consecutive ids, nothing on a version conflict) is checked on both backends
in test_bulk_load_and_large_append.py; here what only PostgreSQL shows: the lock, the NOTIFY,
and the function's creation by every process that opens the store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql

from events.application import CustomerSuccess
from events.personal import build_codec
from events.pgrecorder import COPY_FROM
from events.settings import Settings
from events.signals import UsageDay
from mcp_server.services import Services, open_services

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("settings", ["postgres"], indirect=True)]

KW: dict[str, Any] = {"actor": "test", "source": "test", "source_id": "t",
                      "occurred_at": datetime(2026, 3, 2, tzinfo=UTC)}  # fmt: skip
WAIT_S = 30.0  # bound of every wait below


@pytest.fixture
def pg(settings: Settings) -> Iterator[Services]:
    with open_services(settings) as svc:
        yield svc


def _day() -> UsageDay:
    usage = UsageDay(customer_id=str(uuid4()), account="", day="2026-03-02", **KW)
    usage.count(events=1, sessions=0, users=["u1"], features={"Report Viewed": 1}, insert_ids=["a"], **KW)
    return usage


def _waiting_on_a_lock(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity"
                           " WHERE datname = current_database() AND wait_event_type = 'Lock'").fetchone()  # fmt: skip
    return bool(row and row[0])


# Days (two events each) per append: one (the append function) and enough for COPY_FROM events (COPY).
DAYS = [1, COPY_FROM // 2]


@pytest.mark.parametrize("days", DAYS)
def test_an_append_waits_for_the_tables_exclusive_lock(pg: Services, days: int) -> None:
    """While another transaction holds the events table in EXCLUSIVE mode (as an append does
    until it commits), an append waits and stores nothing; once that transaction ends it
    stores its events under the next ids."""
    app, url = pg.app, pg.settings.database_url
    assert url is not None
    table = sql.Identifier(app.recorder.datastore.schema, app.recorder.events_table_name)
    head = app.last_position()
    group = [_day() for _ in range(days)]
    day = group[-1]
    with psycopg.connect(url) as blocker, ThreadPoolExecutor(1) as pool:
        blocker.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(table))
        pending = pool.submit(app.save, *group)
        deadline = time.monotonic() + WAIT_S
        while not _waiting_on_a_lock(url):
            assert not pending.done(), "the append did not wait for the lock"
            assert time.monotonic() < deadline, "the append never waited for the lock"
            time.sleep(0.01)
        assert app.last_position() == head
        blocker.commit()
        recordings = pending.result(timeout=WAIT_S)
    assert [r.notification.id for r in recordings] == list(range(head + 1, head + 1 + 2 * days))
    assert app.repository.get(day.id).version == 2


@pytest.mark.parametrize("days", DAYS)
def test_an_append_notifies_the_tables_channel(pg: Services, days: int) -> None:
    """As the library's append does: listeners of the channel hear of every append, once."""
    recorder, url = pg.app.recorder, pg.settings.database_url
    assert url is not None
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(recorder.channel_name)))
        pg.app.save(*(_day() for _ in range(days)))
        pg.app.save(_day())  # a second append: a second message (and none more for the first)
        heard = list(listener.notifies(timeout=WAIT_S, stop_after=2))
    assert [n.channel for n in heard] == [recorder.channel_name] * 2


def test_opening_the_store_creates_the_append_function_also_on_an_older_database(settings: Settings) -> None:
    """A database made before the function existed (dropped here) gets it when a process opens
    the store; processes opening it at the same time all succeed."""
    with open_services(settings) as svc:
        recorder = svc.app.recorder
        name = sql.Identifier(recorder.datastore.schema, recorder.append_function_name)
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP FUNCTION {}").format(name))

    def open_app(_: int) -> int:
        codec = build_codec(settings)
        app = CustomerSuccess(settings, codec)  # creates the tables and functions
        try:
            return app.save(_day())[-1].notification.id
        finally:
            app.close()
            codec.close()

    with ThreadPoolExecutor(4) as pool:
        positions = list(pool.map(open_app, range(4)))
    assert sorted(positions) == [2, 4, 6, 8]  # two events each, one append after the other
