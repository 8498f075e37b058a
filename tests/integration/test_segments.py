"""Segment commands, the segments_v1 view and read-time membership, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from events.commands import CommandMeta
from events.errors import InvalidInputError
from events.segments import Segment, SegmentNotFoundError, segment_id
from mcp_server.services import Services
from projections.segment_members import book_rows, members, segments_of
from projections.segments import SegmentsView

META = CommandMeta(actor="test:alice", source="test.segments", source_id="req-1")
BIG = {"field": "arr", "op": ">=", "value": 50000}


def _customers(services: Services) -> None:
    for key, arr in (("small", 9000), ("mid", 42000), ("big", 180000)):
        services.app.register_customer({"external_key": key, "name": key.title(), "arr": arr, "industry": "Retail"}, META)
    services.engine.ensure_current()


def test_define_update_delete_are_events_with_provenance(services: Services) -> None:
    app = services.app
    defined = app.define_segment("  Big   accounts ", BIG, "worth a named CSM", META)
    assert (defined.name, defined.status, defined.rules) == ("Big accounts", "defined", BIG)
    updated = app.update_segment("BIG ACCOUNTS", {"rules": "arr >= 100000 and industry = retail"}, META)
    assert updated.status == "updated" and updated.changes == ["rules"]
    assert defined.position is not None and updated.position == defined.position + 1
    same = app.update_segment("big accounts", {"rules": updated.rules, "description": "worth a named CSM"}, META)
    assert same.status == "unchanged" and same.position is None
    deleted = app.delete_segment("big accounts", META)
    assert deleted.status == "deleted"

    stored = app.repository.get(segment_id("big accounts"))
    assert isinstance(stored, Segment) and stored.deleted
    events = list(app.events.get(segment_id("Big accounts")))
    assert [type(e).__name__ for e in events] == ["Defined", "Updated", "Deleted"]
    assert all((e.actor, e.source, e.source_id) == ("test:alice", "test.segments", "req-1") for e in events)
    assert events[1].old_rules == BIG and events[1].rules == {
        "all": [{"field": "arr", "op": ">=", "value": 100000}, {"field": "industry", "op": "=", "value": "retail"}]}
    assert events[2].rules == events[1].rules  # what was deleted stays in the log

    # The name can be defined again: the same stream continues.
    again = app.define_segment("Big accounts", BIG, None, META)
    assert again.status == "defined"
    assert [type(e).__name__ for e in app.events.get(segment_id("big accounts"))][-1] == "Redefined"
    services.engine.ensure_current()
    view = SegmentsView(services.store)
    assert [(s["name"], s["rules"], s["description"], s["defined_by"]) for s in view.all()] == [
        ("Big accounts", BIG, None, "test:alice")]


@pytest.mark.parametrize(
    ("name", "rules", "field"),
    [
        ("x", {"field": "revenue", "op": ">", "value": 1}, "rules.field"),
        ("x", {"all": [BIG, {"field": "arr", "op": ">=", "value": "lots"}]}, "rules.all[1].value"),
        ("x", "arr >= and", "rules"),
        ("", BIG, "name"),
        ("x;drop", BIG, "name"),
    ],
)
def test_bad_definitions_are_named_and_record_nothing(services: Services, name: str, rules: Any, field: str) -> None:
    head = services.app.last_position()
    with pytest.raises(InvalidInputError) as caught:
        services.app.define_segment(name, rules, None, META)
    assert caught.value.field == field
    assert services.app.last_position() == head


def test_existing_and_unknown_names(services: Services) -> None:
    app = services.app
    app.define_segment("Big", BIG, None, META)
    head = app.last_position()
    with pytest.raises(InvalidInputError, match=r"^name: a segment named 'Big' already exists; .*update"):
        app.define_segment("big", {"field": "arr", "op": ">", "value": 1}, None, META)
    for command in (lambda: app.update_segment("Huge", {"rules": BIG}, META), lambda: app.delete_segment("Huge", META)):
        with pytest.raises(SegmentNotFoundError, match="^name: no segment named 'Huge'"):
            command()
    with pytest.raises(InvalidInputError, match=r"^changes\.colour: "):
        app.update_segment("Big", {"colour": "red"}, META)
    with pytest.raises(InvalidInputError, match=r"^rules\.op: "):
        app.update_segment("Big", {"rules": {"field": "arr", "op": "~", "value": 1}}, META)
    assert app.last_position() == head


def test_membership_is_read_from_the_current_views(services: Services) -> None:
    _customers(services)
    services.app.define_segment("Big", BIG, None, META)
    services.engine.ensure_current()
    now = datetime.now(timezone.utc)
    assert [r["client_id"] for r in members(book_rows(services.store, now), BIG)] == ["big"]

    services.app.update_customer("mid", {"arr": 60000}, META)
    services.engine.ensure_current()
    rows = book_rows(services.store, datetime.now(timezone.utc))
    assert sorted(r["client_id"] for r in members(rows, BIG)) == ["big", "mid"]
    mid = services.app.resolve("mid")
    assert segments_of(services.store, mid, datetime.now(timezone.utc)) == ["Big"]

    services.app.churn_customer("mid", {"churned_on": "2026-11-01"}, META)
    services.engine.ensure_current()
    assert segments_of(services.store, mid, datetime.now(timezone.utc)) == []  # active customers only...
    lost = {"all": [BIG, {"field": "status", "op": "=", "value": "churned"}]}
    assert [r["client_id"] for r in members(book_rows(services.store, datetime.now(timezone.utc)), lost)] == ["mid"]


def test_rebuild_reproduces_the_segments_view(services: Services) -> None:
    app = services.app
    app.define_segment("A", BIG, "first", META)
    app.define_segment("B", "industry in [retail, finance]", None, META)
    app.update_segment("A", {"description": None}, META)
    app.delete_segment("B", META)
    app.define_segment("B", "seats > 5", None, META)
    services.engine.ensure_current()
    before = SegmentsView(services.store).all()
    services.engine.rebuild(["segments_v1"])
    assert SegmentsView(services.store).all() == before
    assert [(s["name"], s["description"]) for s in before] == [("A", None), ("B", None)]
