"""The audit hash chain on both backends: a clean log verifies; a stored event changed,
deleted or inserted behind the application's back (plain SQL on the event table) is
reported at its position; unlinked events are unverified, not broken; `cs rebuild` never
re-links a broken chain."""

from __future__ import annotations

import hashlib
import sqlite3
import struct
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.persistence import Notification

from events.commands import CommandMeta
from events.settings import Settings
from mcp_server.services import open_services
from tests.conftest import MASTER_KEY
from mcp_server.cli_governance import AuditChainBrokenError, rebuild_guard
from mcp_server.services import Services
from projections.audit import CHAIN, GENESIS, NAME, catch_up_chain, link, verify_chain

META = CommandMeta(actor="test", source="test")


def populate(services: Services, customers: int = 4) -> None:
    app = services.app
    for i in range(customers):
        app.register_customer(
            {"external_key": f"c{i}", "name": f"Customer {i}", "arr": 1000 + i, "contact_email": f"p{i}@c{i}.example"},
            META,
        )
    app.update_customer("c1", {"arr": 5000, "tier": "growth"}, META)
    app.churn_customer("c2", {"churned_on": "2026-10-01", "reason": "budget"}, META)
    services.engine.ensure_current()


def on_event_table(settings: Settings, sql: str, params: tuple[Any, ...] = ()) -> int:
    """Run SQL directly on the event table, as an intruder with database access would.
    ``{table}`` and ``{position}`` name the table and its position column; ``?`` placeholders."""
    if settings.database_url:
        import psycopg

        statement = sql.format(table="customersuccess_events", position="notification_id").replace("?", "%s")
        with psycopg.connect(settings.postgres.conninfo(), autocommit=True) as conn:
            return conn.execute(statement, params).rowcount
    db = sqlite3.connect(settings.events_sqlite_path)
    try:
        with db:
            return db.execute(sql.format(table="stored_events", position="rowid"), params).rowcount
    finally:
        db.close()


def stored(services: Services, position: int) -> Notification:
    (notification,) = services.app.recorder.select_notifications(start=position, limit=1)
    assert notification.id == position
    return notification


def forge_row(settings: Settings, position: int) -> None:
    """Insert a made-up stored event at an explicit position."""
    originator = uuid4()
    on_event_table(
        settings,
        "INSERT INTO {table} ({position}, originator_id, originator_version, topic, state) VALUES (?, ?, 1, ?, ?)",
        (position, originator if settings.database_url else originator.hex, "events.domain:Customer.Forged", b"{}"),
    )


def test_link_format_is_the_documented_one() -> None:
    n = Notification(id=7, originator_id=uuid4(), originator_version=2, topic="t:T", state=b'{"a":1}')
    fields = [struct.pack(">Q", 7), str(n.originator_id).encode(), struct.pack(">Q", 2), b"t:T", b'{"a":1}']
    payload = b"".join(struct.pack(">Q", len(f)) + f for f in fields)
    assert link(GENESIS, n) == hashlib.sha256(bytes(32) + payload).hexdigest()
    assert link(link(GENESIS, n), n) != link(GENESIS, n)  # each link depends on the one before


def test_untouched_log_verifies_clean(services: Services) -> None:
    populate(services)
    head = services.app.last_position()
    for batch in (1, 2, 1000):  # batch boundaries change nothing
        report = verify_chain(services.store, services.app.recorder, batch=batch)
        assert report.ok and report.first_broken is None and report.reason is None
        assert report.checked == report.head == report.linked == head
        assert report.unverified == 0
    with services.store.snapshot() as tx:
        hashes = tx.fetchall(f"SELECT hash FROM {CHAIN} ORDER BY position")
    assert len({r["hash"] for r in hashes}) == head and all(len(r["hash"]) == 64 for r in hashes)


def test_changed_event_is_reported_at_its_position(services: Services, settings: Settings) -> None:
    populate(services)
    target = 5  # c2's registration
    original = stored(services, target).state
    assert b"Customer 2" in original
    tampered = original.replace(b"Customer 2", b"Customer 9")  # still valid JSON: only the hash can tell
    assert on_event_table(settings, "UPDATE {table} SET state = ? WHERE {position} = ?", (tampered, target)) == 1
    services.app.register_customer({"external_key": "later", "name": "Later"}, META)  # the log goes on
    services.engine.ensure_current()

    report = verify_chain(services.store, services.app.recorder, batch=2)
    assert report.first_broken == target and not report.ok
    assert report.reason is not None and "differs" in report.reason
    assert report.checked == target - 1
    assert report.summary().startswith(f"broken at position {target}: ")

    # Putting the bytes back restores the chain: the links were never rewritten.
    on_event_table(settings, "UPDATE {table} SET state = ? WHERE {position} = ?", (original, target))
    assert verify_chain(services.store, services.app.recorder).ok


def test_deleted_event_is_reported(services: Services, settings: Settings) -> None:
    populate(services)
    target = 3
    assert on_event_table(settings, "DELETE FROM {table} WHERE {position} = ?", (target,)) == 1
    report = verify_chain(services.store, services.app.recorder)
    assert report.first_broken == target and report.reason is not None and "deleted" in report.reason
    assert report.checked == target - 1


def test_deleted_last_event_is_reported(services: Services, settings: Settings) -> None:
    populate(services)
    last = services.app.last_position()
    on_event_table(settings, "DELETE FROM {table} WHERE {position} = ?", (last,))
    report = verify_chain(services.store, services.app.recorder)
    assert report.first_broken == last and report.head == last - 1


def test_inserted_event_is_reported(services: Services, settings: Settings) -> None:
    populate(services)
    head = services.app.last_position()
    forge_row(settings, head + 5)  # leaves a gap, as a failed transaction does on PostgreSQL
    catch_up_chain(services.engine)  # the chain links what it finds at the tail
    assert verify_chain(services.store, services.app.recorder).ok

    forge_row(settings, head + 2)  # slipped in behind the chain
    report = verify_chain(services.store, services.app.recorder)
    assert report.first_broken == head + 2 and report.reason is not None and "no link" in report.reason


def test_unlinked_events_are_unverified_not_broken(services: Services, settings: Settings) -> None:
    populate(services)
    linked = services.app.last_position()
    services.engine.release()  # another process would run the chain; nobody links for now
    services.app.register_customer({"external_key": "x", "name": "X", "contact_email": "x@x.example"}, META)
    report = verify_chain(services.store, services.app.recorder)
    assert report.ok and report.linked == linked and report.checked == linked
    assert report.unverified == services.app.last_position() - linked == 2


def test_altered_or_missing_links_are_reported(services: Services) -> None:
    populate(services)
    head = services.app.last_position()
    with services.store.transaction() as tx:
        tx.execute(f"UPDATE {CHAIN} SET hash = ? WHERE position = ?", ("f" * 64, 2))
    assert verify_chain(services.store, services.app.recorder).first_broken == 2
    with services.store.transaction() as tx:  # truncate the tail of the chain instead
        tx.execute(f"DELETE FROM {CHAIN} WHERE position >= ?", (2,))
    report = verify_chain(services.store, services.app.recorder)
    assert report.first_broken == 2 and report.linked == 1 and head > 2


def test_rebuild_skips_the_chain_and_refuses_a_broken_one(services: Services, settings: Settings) -> None:
    populate(services)
    names, skipped = rebuild_guard(services, None)
    assert NAME not in names and [s["projection"] for s in skipped] == [NAME]
    assert rebuild_guard(services, [NAME]) == ([NAME], [])  # a clean chain may be rebuilt: same links

    on_event_table(settings, "UPDATE {table} SET topic = ? WHERE {position} = ?", ("x:Y", 2))
    with pytest.raises(AuditChainBrokenError, match="broken at position 2"):
        rebuild_guard(services, [NAME])
    # A rebuild through the engine API would re-link the tampered log: that is why the CLI guards it.
    services.engine.rebuild([NAME])
    assert verify_chain(services.store, services.app.recorder).ok


def test_records_of_the_wrong_type_are_reported_not_crashed_on(tmp_path: Path) -> None:
    """SQLite only: PostgreSQL's column types (uuid, bytea) rule this kind of tampering out."""
    settings = Settings(data_dir=tmp_path / "data", master_key=MASTER_KEY)
    with open_services(settings) as services:
        _wrong_types_are_reported(services, settings)


def _wrong_types_are_reported(services: Services, settings: Settings) -> None:
    populate(services)
    # SQLite's replace() on a BLOB stores TEXT: the bytes look the same, the record is not.
    on_event_table(
        settings, "UPDATE {table} SET state = replace(state, 'Customer 2', 'Customer 9') WHERE {position} = 5"
    )
    report = verify_chain(services.store, services.app.recorder, batch=3)
    assert report.first_broken == 5 and report.reason == "stored event is malformed: state is str, not bytes"

    on_event_table(settings, "UPDATE {table} SET originator_id = 'not-a-uuid' WHERE {position} = 4")
    report = verify_chain(services.store, services.app.recorder, batch=3)
    assert report.first_broken == 4 and report.reason is not None and "cannot be read" in report.reason
    assert report.checked == 3
