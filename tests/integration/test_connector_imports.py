"""Vendor file imports (`Ingestion.import_file`, the path of `cs import SOURCE FILE`) on both backends:
idempotent (a second import records nothing), records of unknown customers kept and counted,
bad records rejected with where / field / reason while the rest goes in."""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.service import Ingestion
from events.settings import Settings
from mcp_server.services import open_services
from projections.profile import CustomerDirectory
from projections.usage import DAYS, FEATURES
from tests.support.connectors import ACME, GLOBEX, INITECH, another_store, register_customers, sync_row
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
         "SELECT day || ':' || account || ':' || events AS k, customer_id FROM cs_usage_days_v6",
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


# ------------------------------------------------ a large Mixpanel file, chunk by chunk
SESSIONS = {"$session_start", "session_start", "Session Start", "$ae_session", "App Open"}  # as events.ingest


def _big_mixpanel_lines() -> list[str]:
    """About 2,400 export lines over three UTC days: known and unknown accounts, events
    without an account, repeated ``$insert_id`` (within a chunk and across chunks), events
    without ``$insert_id``, times as unix seconds, milliseconds and ISO text, a user id that
    is a number, blank and bad lines. Deterministic."""
    rng = random.Random(7)
    accounts = ["acct-acme", "acct-globex", "acct-ghost", "acct-nobody", ""]
    names = ["$session_start", "Report Viewed", "Export", "Search", "Invite Sent"]
    lines: list[str] = []
    for i in range(2_400):
        ts = T0 + timedelta(seconds=rng.randrange(3 * 86_400))
        event = mixpanel_event(rng.choice(names), rng.choice(accounts), f"u{rng.randrange(12)}", ts, f"ins-{i}")
        props = event["properties"]
        roll = rng.random()
        if roll < 0.05:
            props["time"] = props["time"] * 1000  # milliseconds
        elif roll < 0.08:
            props["time"] = ts.isoformat()
        elif roll < 0.11:
            del props["$insert_id"]
        elif roll < 0.13:
            props["distinct_id"] = rng.randrange(5)
        lines.append(json.dumps(event))
        if rng.random() < 0.04:
            lines.append(rng.choice(lines))  # the export repeats an event now and then
        if rng.random() < 0.01:
            lines.append(rng.choice(["", '{"event":"x","properties":{"ti', '{"event":"x","properties":{"time":1}}']))
    return lines


def _usage_expected(lines: list[str]) -> tuple[set[tuple[Any, ...]], int, int, set[int]]:
    """Per customer-day (independently of the import code): events, sessions, distinct users,
    uses per feature; an ``$insert_id`` counted once. Also the duplicates, the unmatched
    events and the numbers of the lines that must be rejected."""
    by_account = {"acct-acme": ACME, "acct-globex": GLOBEX}
    days: dict[tuple[Any, str, str], dict[str, Any]] = {}
    seen: set[tuple[Any, str, str, str]] = set()
    duplicates = unmatched = 0
    rejected: set[int] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            props = json.loads(line)["properties"]
            user, name = str(props["distinct_id"]), json.loads(line)["event"]
        except (ValueError, KeyError):
            rejected.add(number)
            continue
        raw = props["time"]
        when = (datetime.fromisoformat(raw) if isinstance(raw, str)
                else datetime.fromtimestamp(raw / 1000 if raw > 10**12 else raw, UTC))  # fmt: skip
        account = props.get("account_id") or ""
        customer = by_account.get(account)
        key = (customer, "" if customer else account, when.astimezone(UTC).date().isoformat())
        insert = props.get("$insert_id") or f"{name}|{user}|{raw}"
        if (*key, insert) in seen:
            duplicates += 1
            continue
        seen.add((*key, insert))
        unmatched += customer is None
        day = days.setdefault(key, {"events": 0, "sessions": 0, "users": set(), "features": Counter()})
        day["events"] += 1
        day["users"].add(user)
        if name in SESSIONS:
            day["sessions"] += 1
        else:
            day["features"][name] += 1
    rows = {(c, a, d, v["events"], v["sessions"], len(v["users"]),
             tuple(sorted(v["features"].items())) if c else ())  # unmatched usage is not broken down
            for (c, a, d), v in days.items()}  # fmt: skip
    return rows, duplicates, unmatched, rejected


def _usage_rows(svc: Any) -> set[tuple[Any, ...]]:
    svc.engine.ensure_current()
    with svc.store.snapshot() as tx:
        days = tx.fetchall(f"SELECT customer_id, account, day, events, sessions, active_users FROM {DAYS}")
        features: dict[tuple[Any, str], list[tuple[str, int]]] = {}
        for r in tx.fetchall(f"SELECT customer_id, day, feature, uses FROM {FEATURES}"):
            features.setdefault((r["customer_id"], r["day"]), []).append((r["feature"], r["uses"]))
    key = {None: "unmatched:"}
    return {(r["customer_id"], r["account"], r["day"], r["events"], r["sessions"], r["active_users"],
             tuple(sorted(features.get((r["customer_id"] or key[None] + r["account"], r["day"]), []))))
            for r in days}  # fmt: skip


def test_large_mixpanel_file_in_chunks_matches_an_independent_count(
    settings: Settings, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The import of a file in many chunks (a worker process parses the next one while one is
    committed) ends in the usage the raw lines hold; read again it records nothing; stopped
    between chunks and run again, it ends in the same state; in one chunk, the same usage."""
    lines = _big_mixpanel_lines()
    text = "\n".join(lines) + "\n"
    expected, duplicates, unmatched, rejected = _usage_expected(lines)
    with open_services(settings) as svc:
        register_customers(svc)
        chunked = Ingestion(svc.app, CustomerDirectory(svc.store), settings, actor="test", usage_chunk=300)
        first = chunked.import_file("mixpanel", io.StringIO(text), "big.jsonl")
        assert {int(r["where"].removeprefix("line ")) for r in first.rejected} == rejected
        assert (first.recorded, first.duplicates, first.unmatched) == (
            sum(r[3] for r in expected), duplicates, unmatched)  # fmt: skip
        assert first.received == len([line for line in lines if line.strip()])
        assert _usage_rows(svc) == expected
        position = svc.app.last_position()
        again = chunked.import_file("mixpanel", io.StringIO(text), "big.jsonl")
        assert (again.recorded, again.duplicates, again.rejected) == (0, first.recorded + duplicates, first.rejected)
        assert svc.app.last_position() == position

    with another_store(settings, request, tmp_path / "stopped") as fresh, open_services(fresh) as svc:
        register_customers(svc)
        chunked = Ingestion(svc.app, CustomerDirectory(svc.store), fresh, actor="test", usage_chunk=300)

        def stop_after_three_chunks(_: int, calls: list[int] = []) -> None:  # noqa: B006
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt  # killed between two commits

        with pytest.raises(KeyboardInterrupt):
            chunked.import_file("mixpanel", io.StringIO(text), "big.jsonl", stop_after_three_chunks)
        assert _usage_rows(svc) != expected
        chunked.import_file("mixpanel", io.StringIO(text), "big.jsonl")
        assert _usage_rows(svc) == expected

    with another_store(settings, request, tmp_path / "whole") as fresh, open_services(fresh) as svc:
        register_customers(svc)
        whole = Ingestion(svc.app, CustomerDirectory(svc.store), fresh, actor="test", usage_chunk=100_000)
        report = whole.import_file("mixpanel", io.StringIO(text), "big.jsonl")
        assert (report.recorded, report.duplicates, report.unmatched) == (first.recorded, duplicates, unmatched)
        assert _usage_rows(svc) == expected
