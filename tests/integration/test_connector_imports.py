"""Vendor file imports (`Ingestion.import_file`, the path of `cs import SOURCE FILE`) on both backends:
idempotent (a second import records nothing), records of unknown customers kept and counted,
bad records rejected with where / field / reason while the rest goes in."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from events.settings import Settings
from mcp_server.services import open_services
from tests.support.connectors import ACME, GLOBEX, INITECH, register_customers, sync_row
from tests.support.vendors import intercom_conversation, mixpanel_event, sendgrid_event, zendesk_ticket

T0 = datetime(2026, 2, 2, 10, 0, tzinfo=UTC)
MISSING = "missing; the vendor payload must carry it"
NPS_HEADER = "response_id,customer,email,score,comment,responded_at\n"


def _zendesk_file() -> str:
    initech_ticket = zendesk_ticket(3, None, requester_id=42, updated_at=T0 + timedelta(hours=2), status="solved")
    no_created_at = {k: v for k, v in zendesk_ticket(4, 509974, updated_at=T0).items() if k != "created_at"}
    pages = [
        {"tickets": [zendesk_ticket(1, 509974, updated_at=T0, csat="good"), zendesk_ticket(2, 999999, updated_at=T0)],
         "after_cursor": "c1", "end_of_stream": False},
        {"tickets": [initech_ticket, no_created_at], "users": [{"id": 42, "email": "bo@initech.example"}],
         "after_cursor": "c2", "end_of_stream": True},
    ]  # fmt: skip
    return json.dumps(pages)


def _intercom_file() -> str:
    conversations: list[Any] = [
        intercom_conversation("9001", "pat@gmail.example", company_id="ic-acme", updated_at=T0),
        intercom_conversation("9002", "ann@globex.example", updated_at=T0, rating=4),
        intercom_conversation("9003", "who@nowhere.example", updated_at=T0),
        {k: v for k, v in intercom_conversation("9004", "ann@globex.example").items() if k != "id"},
    ]
    return json.dumps(conversations)


def _mixpanel_file() -> str:
    events = [
        mixpanel_event("$session_start", "acct-acme", "u1", T0),
        mixpanel_event("Report Viewed", "acct-acme", "u1", T0 + timedelta(minutes=1)),
        mixpanel_event("Report Viewed", "acct-acme", "u2", T0 + timedelta(minutes=2)),
        mixpanel_event("Export", "acct-ghost", "g1", T0),  # nobody we know
        mixpanel_event("Export", "acct-globex", "x1", T0 + timedelta(days=1)),
    ]
    no_user = mixpanel_event("Export", "acct-acme", "u9", T0)
    del no_user["properties"]["distinct_id"]
    lines = [json.dumps(e) for e in events[:3]] + [json.dumps(no_user), json.dumps(events[1])]  # line 5: a repeat
    lines += ["", *(json.dumps(e) for e in events[3:])]
    return "\n".join(lines) + "\n"


def _sendgrid_file() -> str:
    events = [
        sendgrid_event("delivered", "ann@acme.example", "m1", timestamp=T0),
        sendgrid_event("click", "ann@acme.example", "m1", timestamp=T0 + timedelta(minutes=5)),
        sendgrid_event("bounce", "who@nowhere.example", "m2", timestamp=T0),
    ]
    no_id = sendgrid_event("open", "ann@acme.example", "m1", timestamp=T0)
    del no_id["sg_event_id"]
    return json.dumps([*events, no_id])


def _nps_file() -> str:
    return NPS_HEADER + (
        "r1,acme,ann@acme.example,9,Great product,2026-02-01T10:00:00Z\n"
        'r2,,bo@initech.example,3,"Slow, buggy exports",2026-02-01T11:00:00Z\n'
        "r3,nobody,x@nowhere.example,7,,2026-02-01T12:00:00Z\n"
        "r4,globex,ann@globex.example,11,Off the scale,2026-02-01T13:00:00Z\n"
    )


@dataclass
class Case:
    source: str
    text: str
    recorded: int
    unmatched: int
    duplicates: int  # within the file itself
    rejected: list[dict[str, str]]
    view: str  # SQL: (key, customer_id) of what the import put in the views
    expected: set[tuple[Any, ...]]

    def __str__(self) -> str:
        return self.source


CASES = [
    Case("zendesk", _zendesk_file(), 3, 1, 0, [{"where": "page 2 ticket 2", "field": "ticket.created_at", "reason": MISSING}],
         "SELECT vendor_id AS k, customer_id FROM cs_tickets_v1", {("1", ACME), ("2", None), ("3", INITECH)}),
    Case("intercom", _intercom_file(), 3, 1, 0, [{"where": "conversation 4", "field": "conversation.id", "reason": MISSING}],
         "SELECT vendor_id AS k, customer_id FROM cs_tickets_v1", {("9001", ACME), ("9002", GLOBEX), ("9003", None)}),
    Case("mixpanel", _mixpanel_file(), 5, 1, 1, [{"where": "line 4", "field": "properties.distinct_id", "reason": "missing"}],
         "SELECT day || ':' || account || ':' || events AS k, customer_id FROM cs_usage_days_v3",
         {("2026-02-02::3", ACME), ("2026-02-02:acct-ghost:1", None), ("2026-02-03::1", GLOBEX)}),
    Case("sendgrid", _sendgrid_file(), 3, 1, 0, [{"where": "event 4", "field": "event.sg_event_id", "reason": MISSING}],
         "SELECT kind AS k, customer_id FROM cs_email_events_v1", {("delivered", ACME), ("click", ACME), ("bounce", None)}),
    Case("nps", _nps_file(), 3, 1, 0,
         [{"where": "line 5", "field": "score", "reason": "'11' is not an integer from 0 to 10"}],
         "SELECT response_id || ':' || score AS k, customer_id FROM cs_survey_responses_v1",
         {("r1:9", ACME), ("r2:3", INITECH), ("r3:7", None)}),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=str)
def test_import_file_is_idempotent_keeps_unmatched_and_rejects_bad_records(settings: Settings, case: Case) -> None:
    with open_services(settings) as svc:
        register_customers(svc)
        ingestion = svc.ingestion("test")
        first = ingestion.import_file(case.source, io.StringIO(case.text), f"{case.source}-export")
        assert first.rejected == case.rejected  # where, field, reason; the rest of the file went in
        assert (first.recorded, first.unmatched, first.duplicates) == (case.recorded, case.unmatched, case.duplicates)
        assert first.received == case.recorded + case.duplicates + len(case.rejected)
        position = svc.app.last_position()

        svc.engine.ensure_current()
        with svc.store.snapshot() as tx:
            found = {(r["k"], r["customer_id"]) for r in tx.fetchall(case.view)}
        assert found == case.expected  # the record of nobody is kept, with no customer
        status = sync_row(svc, case.source)
        assert (status["last_channel"], status["cursor"]) == ("import", None)
        assert (status["recorded"], status["unmatched"], status["rejected"]) == (
            case.recorded, case.unmatched, len(case.rejected))  # fmt: skip

        second = svc.ingestion("test").import_file(case.source, io.StringIO(case.text), f"{case.source}-export")
        assert second.recorded == 0 and second.unmatched == 0
        assert second.duplicates == case.recorded + case.duplicates  # every good record: a duplicate
        assert second.rejected == case.rejected
        assert svc.app.last_position() == position  # nothing at all was appended
