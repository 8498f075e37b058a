"""Acceptance tests of the health model (DESIGN §6, TOOLS "Health & segmentation"), same bodies on
SQLite and PostgreSQL.

Every signal reaches the store the way a user's data would: accounts through the customers CSV
(`cs import customers`), usage, tickets, NPS answers and e-mail events through the vendors' file
formats and ``Ingestion.import_file`` (`cs import SOURCE FILE`), contract changes, churns,
overrides and scorecard changes through the application's commands or the MCP tools. Where a
tool is the subject it is driven through ``mcp.Client(build_server(...))``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings as hyp_settings, strategies as st
from mcp import Client

from connectors.customers import import_customers, read_rows
from events.commands import CommandMeta
from events.domain import Customer, customer_id_for
from events.settings import Settings
from mcp_server.server import build_server
from mcp_server.services import Services, open_services
from projections.health import health_as_of, health_at
from projections.health_history import HISTORY_AT, history_rows, late_markers, rebuild_history, update_history
from projections.health_inputs_query import SESSION_LIKE, gather_at
from projections.usage import DAYS as USAGE_DAYS, FEATURES as FEATURE_ROWS, usage_window
from tests.conftest import MASTER_KEY
from tests.support.postgres import create_database, drop_database

FEATURES = ("Dashboard Viewed", "Report Created", "Export CSV", "Invite Sent", "Integration Synced")
SESSION = "$session_start"
CSV_HEADER = ("external_key", "name", "domain", "industry", "tier", "arr", "seats", "contract_start", "renewal_date",
              "owner", "contact_name", "contact_email", "zendesk_org_id", "intercom_company_id",
              "mixpanel_account_id", "churned_at", "churn_reason")  # fmt: skip


# ----------------------------------------------------------------------------------- vendor files
def at(day: date, hour: int = 12, minute: int = 0, second: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute, second), UTC)


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def customers_csv(rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_HEADER, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_HEADER})
    return out.getvalue()


def account(key: str, *, arr: float | None = 48_000, seats: int | None = 10, start: str | None = "2026-01-05",
            renewal: str | None = "2027-06-30", zendesk: bool = True, mixpanel: bool = True,
            churned_at: str | None = None) -> dict[str, Any]:  # fmt: skip
    """A customers-CSV row; its Zendesk org id and Mixpanel account derive from the key."""
    return {
        "external_key": key, "name": key.replace("-", " ").title(), "domain": f"{key}.example",
        "industry": "software", "tier": "growth", "arr": arr, "seats": seats, "contract_start": start,
        "renewal_date": renewal, "owner": "dana@vendor.example", "contact_name": f"Contact {key}",
        "contact_email": f"ops@{key}.example", "zendesk_org_id": org_id(key) if zendesk else None,
        "mixpanel_account_id": f"mp-{key}" if mixpanel else None, "churned_at": churned_at,
        "churn_reason": "budget" if churned_at else None,
    }  # fmt: skip


def org_id(key: str) -> int:
    return 100_000 + int(hashlib.sha256(key.encode()).hexdigest()[:6], 16)


def usage_line(key: str, user: int, name: str, when: datetime) -> str:
    """One raw Mixpanel export line; the same (account, user, event, second) is the same event."""
    ts = int(when.timestamp())
    insert_id = hashlib.sha256(f"{key}|{user}|{name}|{ts}".encode()).hexdigest()[:24]
    return json.dumps({"event": name, "properties": {
        "time": ts, "distinct_id": f"{key}-user-{user}", "$insert_id": insert_id, "account_id": f"mp-{key}",
        "mp_processing_time_ms": ts * 1000 + 7, "$browser": "Chrome", "mp_lib": "web"}})  # fmt: skip


def daily_usage(key: str, first: date, last: date, users: int | Callable[[date], int],
                features: Sequence[str] | Callable[[date], Sequence[str]] = FEATURES) -> list[str]:  # fmt: skip
    """Every day from ``first`` to ``last`` inclusive, each active user starts a session and uses
    each of ``features`` once (both may depend on the day)."""
    lines, day = [], first
    while day <= last:
        n = users(day) if callable(users) else users
        names = features(day) if callable(features) else features
        for u in range(n):
            for i, name in enumerate((SESSION, *names)):
                lines.append(usage_line(key, u, name, at(day, 9 + u % 8, i, u % 60)))
        day += timedelta(days=1)
    return lines


@dataclass
class ZTicket:
    """A Zendesk ticket as the incremental export shows it at one moment."""

    id: int
    key: str
    created: datetime
    updated: datetime
    status: str = "open"
    priority: str | None = "normal"
    rating: str | None = None  # "good" / "bad"

    def export(self) -> dict[str, Any]:
        return {
            "id": self.id, "url": f"https://acme.zendesk.com/api/v2/tickets/{self.id}.json", "type": "question",
            "subject": f"Question {self.id}", "status": self.status, "priority": self.priority,
            "requester_id": 9_000 + self.id, "organization_id": org_id(self.key),
            "created_at": self.created.isoformat().replace("+00:00", "Z"),
            "updated_at": self.updated.isoformat().replace("+00:00", "Z"),
            "generated_timestamp": int(self.updated.timestamp()),
            "satisfaction_rating": {"id": self.id, "score": self.rating, "comment": None} if self.rating else None,
            "via": {"channel": "email", "source": {"from": {"address": f"ops@{self.key}.example"}}},
        }  # fmt: skip


def zendesk_json(tickets: Sequence[ZTicket]) -> str:
    ordered = sorted(tickets, key=lambda t: (t.updated, t.id))
    return json.dumps({"tickets": [t.export() for t in ordered], "after_cursor": None, "end_of_stream": True})


def nps_csv(answers: Sequence[tuple[str, str, int, datetime]]) -> str:
    """(response_id, customer key, score, responded_at) rows."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["response_id", "customer", "email", "score", "comment", "responded_at"])
    for rid, key, score, when in answers:
        writer.writerow([rid, key, f"ops@{key}.example", score, "fine" if score >= 7 else "slow", when.isoformat()])
    return out.getvalue()


def sendgrid_json(events: Sequence[tuple[str, str, str, datetime]]) -> str:
    """(event id, customer key, kind, when) rows as the Event Webhook posts them."""
    return json.dumps([{
        "email": f"ops@{key}.example", "timestamp": int(when.timestamp()), "event": kind, "sg_event_id": eid,
        "sg_message_id": f"msg-{eid[:8]}.filter0001", **({"url": "https://app.example/r"} if kind == "click" else {}),
    } for eid, key, kind, when in events])  # fmt: skip


def load_customers(svc: Services, rows: Sequence[dict[str, Any]]) -> None:
    report = import_customers(svc.app, read_rows(io.StringIO(customers_csv(rows))), actor="test", source_name="customers.csv")
    assert not report.rejected, report.as_dict()
    svc.engine.ensure_current()


def load(svc: Services, source: str, text: str, name: str = "file") -> dict[str, Any]:
    """``cs import SOURCE FILE``: the connectors' file path, then the views brought current."""
    report = svc.ingestion(actor="test").import_file(source, io.StringIO(text), name)
    assert not report.rejected, report.as_dict()
    svc.engine.ensure_current()
    return report.as_dict()


async def call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def error(client: Client, tool: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error, result.structured_content
    return " ".join(getattr(block, "text", "") for block in result.content)


def iso(moment: datetime) -> str:
    return moment.isoformat()


def by_name(health: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in health["components"]}


def driver_components(drivers: Sequence[str]) -> list[str]:
    return [d.split(":", 1)[0] for d in drivers]


# ----------------------------------------------------------------------------- a: no invented data
@pytest.mark.anyio
async def test_no_data_is_said_and_never_scored(settings: Settings) -> None:
    today = datetime.now(UTC).date()
    async with Client(build_server(settings, background=False)) as client:
        await call(client, "register_client", {"client_id": "bare", "client_name": "Bare"})
        alone = (await call(client, "calculate_health_score", {"client_id": "bare"}))["customer"]
    assert alone["score"] is None and alone["computed_score"] is None and alone["band"] == "unknown"
    assert alone["confidence"] == 0.0 and alone["note"] and "null" in alone["note"]
    assert alone["drivers"] == [] and alone["trend"]["delta_30d"] is None
    for component in alone["components"]:
        assert component["score"] is None and component["has_data"] is False and component["reason"], component

    # The same customer in a book where every signal exists for others: still nothing about it.
    with open_services(settings) as svc:
        load_customers(svc, [account("busy"), account("npsonly", arr=None, renewal=None, zendesk=False, mixpanel=False)])
        load(svc, "mixpanel", "\n".join(daily_usage("busy", today - timedelta(days=60), today - timedelta(days=1), 6)))
        load(svc, "zendesk", zendesk_json([ZTicket(1, "busy", at(today - timedelta(days=20)), at(today - timedelta(days=19)),
                                                   status="solved", rating="good")]))  # fmt: skip
        load(svc, "nps", nps_csv([("r1", "busy", 9, at(today - timedelta(days=9))),
                                  ("r2", "npsonly", 9, at(today - timedelta(days=9)))]))  # fmt: skip
        load(svc, "sendgrid", sendgrid_json([("e1", "busy", "delivered", at(today - timedelta(days=3))),
                                             ("e2", "busy", "open", at(today - timedelta(days=2)))]))  # fmt: skip
    async with Client(build_server(settings, background=False)) as client:
        bare = (await call(client, "calculate_health_score", {"client_id": "bare"}))["customer"]
        busy = (await call(client, "calculate_health_score", {"client_id": "busy"}))["customer"]
        partial = (await call(client, "calculate_health_score", {"client_id": "npsonly"}))["customer"]
        book = await call(client, "calculate_health_score", {})
        lean = await call(client, "calculate_health_score", {"include_components": False})
        early = await call(client, "calculate_health_score", {"as_of": "2000-01-01T00:00:00Z"})

    assert bare["score"] is None and bare["band"] == "unknown" and bare["confidence"] == 0.0, bare
    assert early["items"] == [] and early["note"] == "no customer was registered before 2000-01-01T00:00:00+00:00: nothing to score"
    # Without components: the same customers, scores, bands, drivers and trends, in a fraction of the text.
    same = ("client_id", "score", "band", "confidence", "drivers", "trend", "override")
    assert [{k: i[k] for k in same} for i in lean["items"]] == [{k: i[k] for k in same} for i in book["items"]]
    assert all(i["components"] is None and i["scorecard"] is None for i in lean["items"])
    assert len(json.dumps(lean)) < len(json.dumps(book)) / 3 and lean["summary"] == book["summary"]
    for component in bare["components"]:
        assert component["score"] is None and component["has_data"] is False and component["reason"], component
    assert "no usage data" in by_name(bare)["usage"]["reason"]
    assert "no NPS" in by_name(bare)["sentiment"]["reason"]
    assert "ticket" in by_name(bare)["support"]["reason"]

    assert busy["confidence"] == 1.0 and all(c["has_data"] for c in busy["components"])
    assert busy["band"] == "green" and busy["score"] is not None

    # One component with data: the score is that component's, the confidence is its weight's share.
    present = [c["name"] for c in partial["components"] if c["has_data"]]
    assert present == ["sentiment"], partial["components"]
    assert partial["score"] == by_name(partial)["sentiment"]["score"]
    assert partial["confidence"] == pytest.approx(15 / 100) and partial["confidence"] < busy["confidence"]
    # ... and the score says what it rests on: a green 90 from one answer is not a healthy account.
    assert partial["note"] == ("the score rests on sentiment alone (15% of the scorecard's weight has data): read it with "
                               "its confidence") and busy["note"] is None  # fmt: skip
    for name in ("usage", "adoption", "support", "engagement", "financial"):
        assert by_name(partial)[name]["score"] is None and by_name(partial)[name]["reason"]

    listed = {i["client_id"]: i for i in book["items"]}
    assert listed["bare"]["score"] is None and book["items"][-1]["client_id"] == "bare"  # unknown sorts last
    assert book["summary"] == {"green": 2, "unknown": 1}, book["summary"]


@pytest.mark.anyio
async def test_machine_opens_are_no_engagement_and_a_message_is_sent_once(settings: Settings) -> None:
    """An open SendGrid flags sg_machine_open (Apple Mail Privacy Protection fetched the pixel, read
    or not) is recorded apart and never counts as a person's touch; a conventional open does. A
    message counts as one e-mail sent whether its processed event, its delivered event or both arrive."""
    today = datetime.now(UTC).date()
    with open_services(settings) as svc:
        load_customers(svc, [account("apple"), account("reader"), account("moved")])
        # One message each, posted as SendGrid does: processed, then delivered, then opened; moved's
        # next message bounced the day after it was opened.
        events = [("p1", "apple", "processed", 3, None), ("d1", "apple", "delivered", 3, None),
                  ("o1", "apple", "open", 2, True), ("d2", "reader", "delivered", 3, None),
                  ("o2", "reader", "open", 2, False), ("d3", "moved", "delivered", 3, None),
                  ("o3", "moved", "open", 2, False), ("b3", "moved", "bounce", 1, None)]  # fmt: skip
        load(svc, "sendgrid", json.dumps([{
            "email": f"ops@{key}.example", "timestamp": int(at(today - timedelta(days=ago)).timestamp()), "event": kind,
            "sg_event_id": eid, "sg_message_id": f"msg-{key}.filter0001",
            **({"sg_machine_open": machine, "useragent": "Mozilla/5.0"} if machine is not None else {}),
        } for eid, key, kind, ago, machine in events]))  # fmt: skip
    async with Client(build_server(settings, background=False)) as client:
        apple = by_name((await call(client, "calculate_health_score", {"client_id": "apple"}))["customer"])["engagement"]
        reader = by_name((await call(client, "calculate_health_score", {"client_id": "reader"}))["customer"])["engagement"]
        moved = by_name((await call(client, "calculate_health_score", {"client_id": "moved"}))["customer"])["engagement"]
        overview = await call(client, "get_client_overview", {"client_id": "apple"})
        timeline = await call(client, "get_client_timeline", {"client_id": "apple"})

    assert apple["has_data"] and apple["score"] == 0.0 and apple["inputs"]["last_two_way_touch"] is None
    assert apple["inputs"]["machine_opens"] == 1 and apple["inputs"]["emails_sent"] == 1  # one message, two events
    assert apple["reason"] == "no open, click or reply on record (1 e-mail sent; 1 machine open by Apple Mail Privacy Protection left out)"
    assert reader["score"] == 100.0 and reader["reason"] == "last e-mail open 2 days ago"
    assert "machine_opens" not in reader["inputs"]
    bounced = (today - timedelta(days=1)).isoformat()
    assert moved["score"] == 100.0 and moved["reason"] == (
        f"last e-mail open 2 days ago; an e-mail bounced since, on {bounced} (is the contact still there?)")
    email = overview["signals"]["email"]
    assert (email["opens"], email["machine_opens"], email["last_engaged_at"]) == (0, 1, None)
    assert any("Apple Mail Privacy Protection" in item["summary"] for item in timeline["items"]), timeline["items"]


@pytest.mark.anyio
async def test_the_usage_reason_says_when_usage_stopped(settings: Settings) -> None:
    """Users active early in the 30 days count as much as today's: a customer silent for 12 days
    reads like a steady one in the counts, so the reason names the last day used."""
    today = datetime.now(UTC).date()
    with open_services(settings) as svc:
        load_customers(svc, [account("quiet"), account("steady")])
        load(svc, "mixpanel", "\n".join(daily_usage("quiet", today - timedelta(days=40), today - timedelta(days=12), 4)
                                         + daily_usage("steady", today - timedelta(days=40), today - timedelta(days=1), 4)))
    async with Client(build_server(settings, background=False)) as client:
        quiet = by_name((await call(client, "calculate_health_score", {"client_id": "quiet"}))["customer"])["usage"]
        steady = by_name((await call(client, "calculate_health_score", {"client_id": "steady"}))["customer"])["usage"]
    last = (today - timedelta(days=12)).isoformat()
    assert quiet["inputs"]["active_users_30d"] == steady["inputs"]["active_users_30d"] == 4
    assert quiet["inputs"]["last_usage_day"] == last and f"; last used 12 days ago ({last})" in quiet["reason"]
    assert steady["inputs"]["last_usage_day"] == (today - timedelta(days=1)).isoformat() and "last used" not in steady["reason"]


@pytest.mark.anyio
async def test_a_renamed_event_is_no_key_feature_once_nobody_used_it_for_90_days(settings: Settings) -> None:
    """The product's tracking plan renamed "Created Report" to "Report Created" 100 days ago:
    nobody produces the old name any more, so it is no default key feature and nobody loses
    adoption for it; a feature some customer used within 90 days still is one."""
    today = datetime.now(UTC).date()
    renamed = today - timedelta(days=100)

    def plan(day: date) -> list[str]:
        return ["Created Report" if day < renamed else "Report Created", "Exported CSV"]

    with open_services(settings) as svc:
        load_customers(svc, [account("early"), account("later")])
        load(svc, "mixpanel", "\n".join(daily_usage("early", today - timedelta(days=200), today - timedelta(days=1), 3, plan)
                                         + daily_usage("later", today - timedelta(days=60), today - timedelta(days=1), 3, plan)))
    async with Client(build_server(settings, background=False)) as client:
        adoption = by_name((await call(client, "calculate_health_score", {"client_id": "early"}))["customer"])["adoption"]
        report = await call(client, "track_feature_adoption", {"client_id": "early"})
        before = by_name((await call(client, "calculate_health_score",
                                     {"client_id": "early", "as_of": iso(midnight(renamed + timedelta(days=30)))}))["customer"])["adoption"]
    assert adoption["inputs"]["key_features"] == ["Exported CSV", "Report Created"]
    assert adoption["score"] == 100.0 and adoption["inputs"]["not_used_30d"] == []
    assert report["key_features"] == ["Exported CSV", "Report Created"] and report["customer"]["not_adopted"] == []
    # 30 days after the rename both names were in use within 90 days: both key, the old one not used lately.
    assert before["inputs"]["key_features"] == ["Created Report", "Exported CSV", "Report Created"]
    assert before["inputs"]["not_used_30d"] == ["Created Report"]


@pytest.mark.anyio
async def test_a_year_old_nps_answer_is_said_not_scored(settings: Settings) -> None:
    """NPS surveys run once or twice a year: the latest answer of a customer asked 100 days ago is
    still its sentiment (the reason says when it came); one asked more than a year ago is not a
    reading of today (the champion who answered may have left), so sentiment has no data."""
    today = datetime.now(UTC).date()
    with open_services(settings) as svc:
        load_customers(svc, [account("lapsed-survey"), account("asked-lately")])
        load(svc, "nps", nps_csv([("s1", "lapsed-survey", 10, at(today - timedelta(days=400))),
                                  ("s2", "asked-lately", 10, at(today - timedelta(days=100)))]))  # fmt: skip
    async with Client(build_server(settings, background=False)) as client:
        old, fresh = [(await call(client, "calculate_health_score", {"client_id": key}))["customer"]
                      for key in ("lapsed-survey", "asked-lately")]  # fmt: skip
    stale, counted_ = by_name(old)["sentiment"], by_name(fresh)["sentiment"]
    assert stale["has_data"] is False and stale["score"] is None
    assert stale["reason"] == (f"no NPS answer in the last 365 days (the latest, 10 (promoter), 400 days ago on "
                               f"{(today - timedelta(days=400)).isoformat()}, is not scored)")  # fmt: skip
    assert counted_["score"] == 100.0
    assert counted_["reason"] == (f"latest NPS answer 10 (promoter) 100 days ago ({(today - timedelta(days=100)).isoformat()}), "
                                  "NPS +100 over 180 days")  # fmt: skip
    assert old["confidence"] < fresh["confidence"]


@pytest.mark.anyio
async def test_where_the_books_usage_data_stops_the_usage_windows_end(settings: Settings) -> None:
    """Nobody in the book has usage after day D (a Mixpanel sync that stopped): those days are
    missing data, not every customer going quiet at once. Usage and adoption are scored over the
    30 days to D, exactly as they were scored the day after D, and the answer says where the data
    ends; once no one has usage in the 30 days before as_of, they are not scored at all."""
    today = datetime.now(UTC).date()
    last = today - timedelta(days=12)  # the book's last usage day: 11 whole days before today without any
    first = last - timedelta(days=70)

    def growing(day: date) -> int:  # users join over time: the windows' distinct users depend on where they end
        return 1 + (day - first).days // 7

    with open_services(settings) as svc:
        load_customers(svc, [account("alpha"), account("beta", seats=20)])
        load(svc, "mixpanel", "\n".join(daily_usage("alpha", first, last, growing)
                                         + daily_usage("beta", first, last, lambda d: growing(d) // 2 + 1, FEATURES[:3])))
    then = midnight(last + timedelta(days=1))  # the day after D: the data was current
    stale = midnight(last + timedelta(days=31))  # 30 days without any usage before it
    async with Client(build_server(settings, background=False)) as client:
        book = await call(client, "calculate_health_score", {})
        at_then = await call(client, "calculate_health_score", {"as_of": iso(then)})
        one = (await call(client, "calculate_health_score", {"client_id": "alpha"}))["customer"]
        gone = await call(client, "calculate_health_score", {"as_of": iso(stale)})
        overview = await call(client, "get_client_overview", {"client_id": "beta"})
        reports = [await call(client, "track_usage_engagement", {"client_id": "alpha"}),
                   await call(client, "analyze_engagement_patterns", {})]  # fmt: skip
        reports_then = [await call(client, "track_usage_engagement", {"client_id": "alpha", "as_of": iso(then)}),
                        await call(client, "analyze_engagement_patterns", {"as_of": iso(then)})]  # fmt: skip
    assert at_then["note"] is None  # current then
    # The usage reports keep the window asked for, and say its last days have no data for anyone.
    for report, report_then in zip(reports, reports_then, strict=True):
        assert report["note"].startswith(f"the book's usage data ends {last.isoformat()}, 11 days before {today.isoformat()}")
        assert report_then["note"] is None
    now_items, then_items = ({i["client_id"]: by_name(i) for i in r["items"]} for r in (book, at_then))
    confidence_then = {i["client_id"]: i["confidence"] for i in at_then["items"]}
    assert set(now_items) == {"alpha", "beta"}
    for key in ("alpha", "beta"):
        for name in ("usage", "adoption"):
            now_c, then_c = now_items[key][name], then_items[key][name]
            assert now_c["score"] == then_c["score"] is not None, (key, name)
            assert {k: v for k, v in now_c["inputs"].items() if k != "usage_data_through"} == then_c["inputs"]
            assert now_c["inputs"]["usage_data_through"] == last.isoformat()
            assert f"(the book's usage data ends {last.isoformat()}, 11 days before as_of's date)" in now_c["reason"]
            assert "usage_data_through" not in then_c["inputs"]
    usage = by_name(one)["usage"]
    assert usage["inputs"]["active_users_prev_30d"] > 0 and "vs the previous 30 days" in usage["reason"]
    assert f"in the 30 days to {last.isoformat()}" in usage["reason"] and "last used" not in usage["reason"]
    for note in (book["note"], overview["health"]["note"]):
        assert note.startswith(f"the book's usage data ends {last.isoformat()}, 11 days before {today.isoformat()}")
        assert "get_sync_status" in note
    # A whole window without anyone's usage: not scored, said, and the confidence drops.
    for item in gone["items"]:
        components = by_name(item)
        assert components["usage"]["score"] is None and components["adoption"]["score"] is None
        assert components["usage"]["reason"].startswith("no account of the book has usage recorded in the 30 days")
        assert item["confidence"] < confidence_then[item["client_id"]]
    assert "usage and adoption are left out of every score" in gone["note"]


# ------------------------------------------------------------- b: the past does not see the future
@contextmanager
def fresh_services(settings: Settings, admin_url: Callable[[], str]) -> Iterator[Services]:
    """A brand-new store on the same backend as ``settings`` (one per hypothesis example)."""
    with tempfile.TemporaryDirectory(prefix="cs-health-prop-") as tmp:
        if settings.database_url is None:
            with open_services(Settings(data_dir=Path(tmp), master_key=MASTER_KEY)) as svc:
                yield svc
            return
        admin = admin_url()
        url = create_database(admin)
        try:
            with open_services(Settings(data_dir=Path(tmp), database_url=url, master_key=MASTER_KEY)) as svc:
                yield svc
        finally:
            drop_database(admin, url)


KEYS = ("alpha", "bravo", "charlie")
STATUSES = ("new", "open", "pending", "hold", "solved", "closed")
PRIORITIES = ("low", "normal", "high", "urgent", None)
SECONDS_PER_DAY = 86_400


def _ops(offset: st.SearchStrategy[int]) -> st.SearchStrategy[tuple[Any, ...]]:
    key = st.sampled_from(KEYS)
    return st.one_of(
        st.tuples(st.just("usage"), key, offset, st.integers(0, 7), st.sampled_from((SESSION, *FEATURES))),
        st.tuples(st.just("ticket"), key, offset, st.integers(0, 5), st.sampled_from(STATUSES), st.sampled_from(PRIORITIES),
                  st.sampled_from((None, "good", "bad"))),
        st.tuples(st.just("nps"), key, offset, st.integers(0, 10)),
        st.tuples(st.just("email"), key, offset, st.sampled_from(("processed", "delivered", "open", "click", "bounce"))),
        st.tuples(st.just("contract"), key, offset, st.sampled_from(("arr", "seats", "renewal_date")), st.integers(1, 400)),
        st.tuples(st.just("churn"), key, offset, st.integers(-90, 30)),
        st.tuples(st.just("override"), key, offset, st.sampled_from(("green", "yellow", "red")), st.integers(1, 40 * 24)),
        st.tuples(st.just("scorecard"), st.just("-"), offset, st.sampled_from(("usage", "support", "sentiment")), st.integers(0, 60)),
        st.tuples(st.just("register"), st.sampled_from(("delta", "echo")), offset),
    )  # fmt: skip


BEFORE_OR_AROUND = st.integers(-60 * SECONDS_PER_DAY, 3 * SECONDS_PER_DAY)  # relative to T, seconds
AFTER = st.integers(0, 45 * SECONDS_PER_DAY)  # at or after T: "occurred before T" excludes T itself


@dataclass
class World:
    """Applies generated operations to a store through the real import paths and commands."""

    svc: Services
    t: datetime
    tickets: dict[int, ZTicket] = field(default_factory=dict)
    counter: int = 0

    @classmethod
    def of_three(cls, svc: Services, t: datetime) -> World:
        """The three customers of KEYS, registered 90 days before ``t``, renewing 0, 40 and 80 days after it."""
        start = (t - timedelta(days=90)).date().isoformat()
        load_customers(svc, [account(k, start=start, renewal=(t + timedelta(days=40 * i)).date().isoformat())
                             for i, k in enumerate(KEYS)])  # fmt: skip
        return cls(svc, t)

    def apply(self, ops: Sequence[tuple[Any, ...]]) -> None:
        usage: list[str] = []
        tickets: list[ZTicket] = []
        answers: list[tuple[str, str, int, datetime]] = []
        emails: list[tuple[str, str, str, datetime]] = []
        commands: list[tuple[datetime, tuple[Any, ...]]] = []
        for op in ops:
            kind, key, offset = op[0], op[1], op[2]
            when = self.t + timedelta(seconds=offset)
            self.counter += 1
            n = self.counter
            if kind == "usage":
                usage.append(usage_line(key, op[3], op[4], when))
            elif kind == "ticket":
                tickets.append(self._ticket(key, when, *op[3:]))
            elif kind == "nps":
                answers.append((f"nps-{n}", key, op[3], when))
            elif kind == "email":
                emails.append((f"sg-{n}", key, op[3], when))
            else:
                commands.append((when, op))
        if usage:
            load(self.svc, "mixpanel", "\n".join(usage) + "\n")
        if tickets:
            load(self.svc, "zendesk", zendesk_json(tickets))
        if answers:
            load(self.svc, "nps", nps_csv(answers))
        if emails:
            load(self.svc, "sendgrid", sendgrid_json(emails))
        for when, op in sorted(commands, key=lambda c: c[0]):
            self._command(when, op)
        self.svc.engine.ensure_current()

    def _ticket(self, key: str, when: datetime, slot: int, status: str, priority: str | None, rating: str | None) -> ZTicket:
        """A new ticket opened at ``when``, or (when this customer's ticket ``slot`` exists) its
        next snapshot at ``when``: status, priority or rating changed."""
        tid = 1000 * (KEYS.index(key) + 1) + slot
        known = self.tickets.get(tid)
        if known is None or when <= known.updated:
            if known is not None:  # an older snapshot than the one we have: another ticket
                tid += 100 + self.counter
            snap = ZTicket(tid, key, when, when, status, priority, rating if status in ("solved", "closed") else None)
        else:
            snap = ZTicket(tid, key, known.created, when, status, priority, rating)
        self.tickets[tid] = snap
        return snap

    def _command(self, when: datetime, op: tuple[Any, ...]) -> None:
        app, kind, key = self.svc.app, op[0], op[1]
        meta = CommandMeta(actor="test", source="test.property", occurred_at=when)
        if kind == "contract":
            field_name, amount = op[3], op[4]
            value: Any = {"arr": 1000.0 * amount, "seats": amount,
                          "renewal_date": (self.t.date() + timedelta(days=amount - 120)).isoformat()}[field_name]  # fmt: skip
            if field_name == "renewal_date":
                current = app.get_customer(key).profile.get("contract_start")
                if current and value < current:
                    value = current
            app.update_customer(key, {field_name: value}, meta)
        elif kind == "churn":
            app.churn_customer(key, {"churned_on": (self.t.date() + timedelta(days=op[3])).isoformat(), "reason": "x"}, meta)
        elif kind == "override":
            app.override_health(key, {"band": op[3], "reason": "property test", "expires_at": when + timedelta(hours=op[4])},
                                "test", meta)  # fmt: skip
        elif kind == "scorecard":
            app.configure_scorecard({"weights": {op[3]: float(op[4])}, "key_features": list(FEATURES[: 2 + op[4] % 4])}, meta)
        elif kind == "register":
            app.register_customer({"external_key": key, "name": key.title(), "arr": 5000, "seats": 3,
                                   "mixpanel_account_id": f"mp-{key}"}, meta)  # fmt: skip


def _as_of_t(svc: Services, instants: Sequence[datetime]) -> list[dict[str, Any]]:
    svc.engine.ensure_current()
    return [{cid: h.as_dict() for cid, h in sorted(health_as_of(svc.store, moment).items())} for moment in instants]


PROPERTY_EXAMPLES = int(os.environ.get("CS_HEALTH_PROPERTY_EXAMPLES", "12"))


def _property(examples: int) -> Any:
    """Hypothesis settings for the properties below (each example builds a fresh store)."""
    return hyp_settings(max_examples=examples, deadline=None, derandomize=True,
                        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                               HealthCheck.data_too_large])  # fmt: skip


def test_score_as_of_t_ignores_events_that_occurred_after_t(settings: Settings, request: pytest.FixtureRequest) -> None:
    """Hypothesis: for a random history, appending any mix of events that occurred at or after
    T (usage, tickets new and changed, NPS, e-mail events, contract changes, churns, overrides,
    scorecard changes, new customers) leaves every customer's full health as of T unchanged."""

    @_property(PROPERTY_EXAMPLES)
    @given(day=st.integers(0, 200), second=st.integers(0, SECONDS_PER_DAY - 1),
           before=st.lists(_ops(BEFORE_OR_AROUND), min_size=4, max_size=25),
           after=st.lists(_ops(AFTER), min_size=1, max_size=25))  # fmt: skip
    def check(day: int, second: int, before: list[tuple[Any, ...]], after: list[tuple[Any, ...]]) -> None:
        t = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(days=day, seconds=second)
        with fresh_services(settings, lambda: request.getfixturevalue("pg_admin_url")) as svc:
            world = World.of_three(svc, t)
            world.apply(before)
            instants = [t, t - timedelta(days=3, seconds=1)]
            expected = _as_of_t(svc, instants)
            later = _as_of_t(svc, [t + timedelta(days=46)])
            world.apply(after)
            assert _as_of_t(svc, instants) == expected
            seen["examples"] += 1
            seen["scored"] += sum(1 for h in expected[0].values() if h["score"] is not None)
            seen["later_changed"] += _as_of_t(svc, [t + timedelta(days=46)]) != later

    seen = {"examples": 0, "scored": 0, "later_changed": 0}
    check()
    # Not vacuous: customers had scores at T, and the appended events did change later scores.
    assert seen["scored"] >= seen["examples"] and seen["later_changed"] >= seen["examples"] // 2, seen


def test_one_pass_at_several_instants_equals_each_instant_alone(settings: Settings, request: pytest.FixtureRequest) -> None:
    """Hypothesis: ``health_at`` (one set of queries for several instants: a score with its 30-day
    trend, a comparison) gives at every instant exactly what that instant alone gives, for the
    whole book and for a few customers, including an instant before anyone was registered, one
    where the windows of the instants overlap and one where they do not."""

    @_property(max(4, PROPERTY_EXAMPLES // 2))
    @given(day=st.integers(0, 200), second=st.integers(0, SECONDS_PER_DAY - 1),
           ops=st.lists(_ops(BEFORE_OR_AROUND), min_size=4, max_size=30),
           later=st.lists(_ops(AFTER), max_size=10))  # fmt: skip
    def check(day: int, second: int, ops: list[tuple[Any, ...]], later: list[tuple[Any, ...]]) -> None:
        t = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(days=day, seconds=second)
        with fresh_services(settings, lambda: request.getfixturevalue("pg_admin_url")) as svc:
            world = World.of_three(svc, t)
            world.apply(ops)
            world.apply(later)
            svc.engine.ensure_current()
            instants = [t, t - timedelta(days=30), t - timedelta(days=3, seconds=1), t + timedelta(days=46),
                        t - timedelta(days=400)]  # fmt: skip
            some = [customer_id_for(k) for k in ("bravo", "delta")]
            with svc.store.snapshot() as tx:
                for ids in (None, some):
                    together = [_dicts(h) for h in health_at(tx, instants, ids)]
                    alone = [_dicts(health_at(tx, [moment], ids)[0]) for moment in instants]
                    assert together == alone
                    seen["scored"] += sum(1 for h in together[0].values() if h["score"] is not None)
            assert together[-1] == {}  # before the first registration
            seen["examples"] += 1

    seen = {"examples": 0, "scored": 0}
    check()
    assert seen["scored"] >= seen["examples"], seen  # not vacuous: customers had scores


USAGE_OFFSET = st.integers(-100 * SECONDS_PER_DAY, 50 * SECONDS_PER_DAY)  # relative to T: every window of the instants below


def _usage_op(offset: st.SearchStrategy[int]) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.tuples(st.just("usage"), st.sampled_from((*KEYS, "delta")), offset, st.integers(0, 7),
                     st.sampled_from((SESSION, *FEATURES)))  # fmt: skip


def _window_end(tx: Any, as_of: datetime) -> tuple[str | None, date]:
    """The book's last usage day before as_of's date (a plain MAX over every account's days) and
    where the usage windows end: the day after it when nobody has usage on the days just before
    as_of's date, unless that leaves the 30 days before as_of without any (then as_of's date)."""
    stop = as_of.date()
    through = tx.fetchone(f"SELECT MAX(day) AS day FROM {USAGE_DAYS} WHERE day < ?", (stop.isoformat(),))["day"]
    if through is None:
        return None, stop
    after = date.fromisoformat(through) + timedelta(days=1)
    return through, after if stop - timedelta(days=30) < after < stop else stop


def _usage_from_rows(tx: Any, customer_id: str, as_of: datetime) -> tuple[Any, ...]:
    """A customer's usage inputs as of ``as_of`` counted from the rows the bit sets summarise, the
    way every other reader counts them: the users view (COUNT DISTINCT), the feature and day rows,
    over the windows ending where the book's usage data ends (:func:`_window_end`)."""
    first = tx.fetchone(f"SELECT MIN(day) AS day FROM {USAGE_DAYS} WHERE customer_id = ? AND day < ?",
                        (customer_id, as_of.date().isoformat()))["day"]  # fmt: skip
    if first is None:
        return None, 0, 0, 0, 0, set()
    _, end = _window_end(tx, as_of)
    now = usage_window(tx, UUID(customer_id), end, 30)
    before = usage_window(tx, UUID(customer_id), end - timedelta(days=30), 30)
    return first, now["active_days"], now["events"], now["active_users"], before["active_users"], set(now["features"])


def test_usage_inputs_from_bit_sets_equal_the_rows_they_summarise(settings: Settings, request: pytest.FixtureRequest) -> None:
    """Hypothesis: the usage inputs ``gather_at`` reads from each customer-day's bit sets (distinct
    users and features over a window as the OR of its days') equal what the rows they summarise
    give to every other reader (``usage_window``: COUNT(DISTINCT) over the users view, the feature
    rows, the day rows), for every customer at several instants read in one pass, for the whole
    book and for one customer, with usage arriving in later imports for days already counted
    (new users and features on them) and for a customer registered after its first usage; and the
    book's features used lately (from the book's days and the feature numbering) equal a plain
    scan of the feature rows."""

    @_property(max(4, PROPERTY_EXAMPLES // 2))
    @given(day=st.integers(0, 200), second=st.integers(0, SECONDS_PER_DAY - 1),
           imports=st.lists(st.lists(st.one_of(_usage_op(USAGE_OFFSET), _usage_op(USAGE_OFFSET),
                                               st.tuples(st.just("register"), st.just("delta"), USAGE_OFFSET)),
                                     min_size=1, max_size=25), min_size=2, max_size=4))  # fmt: skip
    def check(day: int, second: int, imports: list[list[tuple[Any, ...]]]) -> None:
        t = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(days=day, seconds=second)
        with fresh_services(settings, lambda: request.getfixturevalue("pg_admin_url")) as svc:
            world = World.of_three(svc, t)
            for ops in imports:  # each list one import, folded before the next
                world.apply(ops)
            instants = [t, t - timedelta(days=30), t - timedelta(days=3, seconds=1), t + timedelta(days=46)]
            with svc.store.snapshot() as tx:
                first_days = tx.rows(f"SELECT feature, MIN(day) FROM {FEATURE_ROWS} GROUP BY feature")
                for ids in (None, [customer_id_for("bravo")]):
                    for book in gather_at(tx, instants, ids):
                        if book.customers:
                            assert (book.usage_through, book.usage_end) == _window_end(tx, book.as_of)
                            seen["moved"] += book.usage_end != book.as_of.date()
                            # the book's features (adoption's default key features), by a plain scan: those
                            # some customer used in the 90 days before the windows' end
                            lately = tx.rows(f"SELECT DISTINCT feature FROM {FEATURE_ROWS} WHERE day >= ? AND day < ?",
                                             ((book.usage_end - timedelta(days=90)).isoformat(), book.usage_end.isoformat()))
                            assert book.book_features == {f for (f,) in lately} - SESSION_LIKE
                            seen["features"] += bool(book.book_features)
                            stop = book.as_of.date().isoformat()
                            seen["retired"] += bool({f for f, first in first_days if first < stop} - SESSION_LIKE
                                                    - book.book_features)
                        for cid, i in book.customers.items():
                            got = (i.first_usage_day, i.active_days_30d, i.events_30d, i.active_users_30d,
                                   i.active_users_prev_30d, i.features_30d)  # fmt: skip
                            assert got == _usage_from_rows(tx, cid, book.as_of), (cid, book.as_of)
                            seen["users"] += i.active_users_30d > 0
                            seen["previous"] += i.active_users_prev_30d > 0
            seen["examples"] += 1

    seen = {"examples": 0, "users": 0, "previous": 0, "features": 0, "moved": 0, "retired": 0}
    check()
    assert seen["users"] >= seen["examples"] and seen["previous"] >= seen["examples"] // 2, seen  # not vacuous
    assert seen["features"] >= seen["examples"], seen
    assert seen["moved"] >= seen["examples"] // 2, seen  # windows that end where the book's usage data ends
    assert seen["retired"] >= 1, seen  # a feature seen once but unused for 90 days is no key feature


def _dicts(scores: dict[str, Any]) -> dict[str, Any]:
    return {cid: h.as_dict() for cid, h in sorted(scores.items())}


def test_a_churn_imported_with_its_date_keeps_later_changes_out_of_the_past(
    settings: Settings, request: pytest.FixtureRequest
) -> None:
    """The CRM export that reports a churn (dated in the past) also reports today's ARR: the
    upsert records the ARR change now and the churn at its date, in that log order. As of a day
    between the two, the score must be what the events that occurred by then give: the same as
    in a store that never heard of the ARR change."""
    t = datetime(2026, 7, 1, tzinfo=UTC)
    row = account("acme", arr=48_000, start="2026-01-05", renewal="2027-06-30")
    churned = {**row, "churned_at": "2026-06-01", "churn_reason": "budget"}
    with fresh_services(settings, lambda: request.getfixturevalue("pg_admin_url")) as only_before:
        load_customers(only_before, [row])
        load_customers(only_before, [churned])
        expected = {cid: h.as_dict() for cid, h in health_as_of(only_before.store, t).items()}
    with open_services(settings) as svc:
        load_customers(svc, [row])
        load_customers(svc, [{**churned, "arr": 12_000, "seats": 2}])  # changes recorded now, churn at its date
        got = {cid: h.as_dict() for cid, h in health_as_of(svc.store, t).items()}
        now = health_as_of(svc.store, datetime.now(UTC) + timedelta(seconds=1))[str(customer_id_for("acme"))]
    assert got == expected
    (acme,) = got.values()
    assert acme["note"] == "churned on 2026-06-01"
    assert by_name(acme)["financial"]["inputs"]["arr"] == 48_000 and by_name(acme)["usage"]["inputs"]["seats"] == 10
    assert by_name(now.as_dict())["financial"]["inputs"]["arr"] == 12_000  # and it counts from when it was recorded


# --------------------------------------------------------------------- c: history == rebuilt history
def test_rebuild_reproduces_the_stored_history_row_for_row(services: Services) -> None:
    first = date(2026, 10, 1)
    days = [first + timedelta(days=i) for i in range(8)]
    load_customers(services, [account("steady", start=(first - timedelta(days=3)).isoformat()),
                              account("fading", start=(first - timedelta(days=2)).isoformat(), seats=6),
                              account("quiet", start=(first - timedelta(days=1)).isoformat(), arr=None, renewal=None,
                                      zendesk=False, mixpanel=False)])  # fmt: skip
    written = 0
    for i, day in enumerate(days):  # a daily job: that day's data arrives, then the day is recorded
        load(services, "mixpanel", "\n".join(daily_usage("steady", day, day, 5) + daily_usage("fading", day, day, max(0, 5 - i))) + "\n")  # fmt: skip
        if i == 2:
            load(services, "zendesk", zendesk_json([ZTicket(7, "fading", at(day, 8), at(day, 9), "open", "urgent")]))
        if i == 4:
            load(services, "nps", nps_csv([("n1", "fading", 4, at(day, 10)), ("n2", "steady", 10, at(day, 11))]))
            services.app.configure_scorecard({"weights": {"support": 25}}, CommandMeta(actor="t", source="t", occurred_at=at(day, 13)))
            services.engine.ensure_current()
        if i == 5:
            load(services, "sendgrid", sendgrid_json([("m1", "quiet", "delivered", at(day, 9)), ("m2", "quiet", "open", at(day, 10))]))
            load(services, "zendesk", zendesk_json([ZTicket(7, "fading", at(days[2], 8), at(day, 9), "solved", "urgent", "bad")]))
        written += update_history(services.store, day)
    stored = history_rows(services.store)
    assert len(stored) == written > 3 * len(days)
    assert {r["day"] for r in stored} >= {d.isoformat() for d in days}
    assert len({(r["score"], r["components"]) for r in stored if r["customer_id"] == str(customer_id_for("fading"))}) > 3

    services.engine.rebuild()  # every projection dropped and refolded from the log
    rebuilt_count = rebuild_history(services.store, days[-1])
    assert rebuilt_count == written
    assert history_rows(services.store) == stored


def test_late_events_record_the_days_they_changed_again(services: Services) -> None:
    """An NPS answer and a day of usage that arrive after their days were recorded (a late
    export): the next run records those days again, from the earliest one, so the stored history
    equals a recomputation from the log; the days before stay as they were, and a further run
    has nothing left to do."""
    first = date(2026, 10, 1)
    days = [first + timedelta(days=i) for i in range(6)]
    load_customers(services, [account("steady", start=(first - timedelta(days=3)).isoformat()),
                              account("fading", start=(first - timedelta(days=2)).isoformat(), seats=6)])  # fmt: skip
    for day in days:  # each day's usage, then the day recorded
        load(services, "mixpanel", "\n".join(daily_usage("steady", day, day, 5) + daily_usage("fading", day, day, 2)) + "\n")
        update_history(services.store, day)
    before = {(r["customer_id"], r["day"]): r for r in history_rows(services.store)}

    late_day, later_day = days[2], days[4]
    load(services, "mixpanel", "\n".join(daily_usage("fading", later_day, later_day, 6)) + "\n")
    load(services, "nps", nps_csv([("late-1", "fading", 1, at(late_day, 10))]))
    rewritten = update_history(services.store, days[-1])  # nothing new to record: only the late days
    after = {(r["customer_id"], r["day"]): r for r in history_rows(services.store)}
    fading = str(customer_id_for("fading"))

    assert rewritten == 2 * len([d for d in days if d >= late_day])  # both customers, from the late day on
    assert after.keys() == before.keys()
    changed = sorted(day for (cid, day), row in after.items() if row != before[(cid, day)])
    assert changed and changed[0] == late_day.isoformat() and all(cid == fading for cid, day in after
                                                                  if after[(cid, day)] != before[(cid, day)])  # fmt: skip
    assert all(after[k] == before[k] for k in after if k[1] < late_day.isoformat())
    assert update_history(services.store, days[-1]) == 0  # the markers were taken into account

    services.engine.rebuild()
    rebuild_history(services.store, days[-1])
    assert {(r["customer_id"], r["day"]): r for r in history_rows(services.store)} == after


def test_a_rebuild_does_not_make_the_next_run_record_the_history_again(services: Services) -> None:
    """Every imported day is late (its events occurred before the day they were recorded on), and
    a rebuild folds the late-event markers of the whole log again. The recorded days already count
    those events (each day keeps the log position it was computed at), so the next run records
    nothing again and takes the markers into account; a late event folded afterwards still records
    its days again; and days recorded without a position (before positions were kept) are
    recorded again, as they always were."""
    first = date(2026, 10, 1)
    days = [first + timedelta(days=i) for i in range(6)]
    load_customers(services, [account("steady", start=(first - timedelta(days=3)).isoformat()),
                              account("fading", start=(first - timedelta(days=2)).isoformat(), seats=6)])  # fmt: skip
    for day in days:
        load(services, "mixpanel", "\n".join(daily_usage("steady", day, day, 5) + daily_usage("fading", day, day, 2)) + "\n")
        update_history(services.store, day)
    recorded = history_rows(services.store)

    services.engine.rebuild()
    with services.store.snapshot() as tx:
        assert {day for day, _ in late_markers(tx)} >= {d.isoformat() for d in days}  # marked again
    assert update_history(services.store, days[-1]) == 0
    assert history_rows(services.store) == recorded
    with services.store.snapshot() as tx:
        assert late_markers(tx) == []  # taken into account

    late_day = days[3]  # an NPS answer that arrives now: its days are recorded again
    load(services, "nps", nps_csv([("late-1", "fading", 1, at(late_day, 10))]))
    assert update_history(services.store, days[-1]) == 2 * len([d for d in days if d >= late_day])
    changed = history_rows(services.store)
    assert [r for r in changed if r["day"] < late_day.isoformat()] == [r for r in recorded if r["day"] < late_day.isoformat()]
    assert changed != recorded

    with services.store.transaction() as tx:  # as if recorded before positions were kept
        tx.execute(f"DELETE FROM {HISTORY_AT}")
    services.engine.rebuild()
    assert update_history(services.store, days[-1]) == len(changed)  # every day, from the first registration
    assert history_rows(services.store) == changed


# ---------------------------------------------------------------- d: risky vs healthy, from imports
def _book(today: date) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Customers and their signal files for ``today``: healthy ones, ones in trouble on every
    front, and ones in trouble on one front only."""
    d = lambda n: today - timedelta(days=n)  # noqa: E731
    window, half = (d(60), d(1)), d(30)
    healthy, risky = ["healthy-1", "healthy-2", "healthy-3"], ["risky-1", "risky-2", "risky-3"]
    single = {"fading-usage": "usage", "ticket-pileup": "support", "detractor": "sentiment"}
    usage: list[str] = []
    tickets: list[ZTicket] = []
    answers: list[tuple[str, str, int, datetime]] = []
    emails: list[tuple[str, str, str, datetime]] = []
    next_id = iter(range(50_000, 60_000))
    for n, key in enumerate([*healthy, *risky, *single]):
        falls = key in risky or key == "fading-usage"
        # Usage: 8 of 10 seats every day; falling accounts lose users and the advanced features.
        usage += daily_usage(key, *window, lambda day, f=falls, n=n: (8 if day < half or not f else 2 + n % 2),
                             lambda day, f=falls: FEATURES if day < half or not f else FEATURES[:2])  # fmt: skip
        piles = key in risky or key == "ticket-pileup"
        tickets.append(ZTicket(next(next_id), key, at(d(50)), at(d(49)), "solved", "normal", "bad" if key in risky else "good"))
        if piles:
            for k, priority in enumerate(("urgent", "urgent", "high", "normal")):
                opened = at(d(18 - 3 * k))
                tickets.append(ZTicket(next(next_id), key, opened, opened + timedelta(hours=5), "open", priority))
        sours = key in risky or key == "detractor"
        answers.append((f"{key}-q1", key, 9, at(d(150))))
        answers.append((f"{key}-q3", key, n % 3 if sours else 9 + n % 2, at(d(10))))
        for m in range(3):
            eid = f"{key}-m{m}"
            emails += [(f"{eid}-d", key, "delivered", at(d(2 + 7 * m))), (f"{eid}-o", key, "open", at(d(2 + 7 * m), 15))]
    rows = [account(k, seats=10, renewal=(today + timedelta(days=300)).isoformat()) for k in [*healthy, *risky, *single]]
    files = {"mixpanel": "\n".join(usage) + "\n", "zendesk": zendesk_json(tickets), "nps": nps_csv(answers),
             "sendgrid": sendgrid_json(emails)}  # fmt: skip
    return rows, files


@pytest.mark.anyio
async def test_risky_customers_score_lower_and_their_drivers_say_why(settings: Settings) -> None:
    today = date(2026, 11, 1)
    rows, files = _book(today)
    with open_services(settings) as svc:
        load_customers(svc, rows)
        for source in ("mixpanel", "zendesk", "nps", "sendgrid"):  # `cs import SOURCE FILE`, in that order
            load(svc, source, files[source], f"{source}-export")
    as_of = iso(midnight(today))
    async with Client(build_server(settings, background=False)) as client:
        scores = {r["external_key"]: (await call(client, "calculate_health_score",
                                                 {"client_id": r["external_key"], "as_of": as_of}))["customer"]
                  for r in rows}  # fmt: skip
        book = await call(client, "calculate_health_score", {"as_of": as_of, "limit": 200})

    healthy = {k: v for k, v in scores.items() if k.startswith("healthy")}
    risky = {k: v for k, v in scores.items() if k.startswith("risky")}
    for key, h in healthy.items():
        assert h["band"] == "green" and h["confidence"] == 1.0, (key, h["score"], h["drivers"])
    worst_healthy = min(h["score"] for h in healthy.values())
    for key, h in risky.items():
        assert h["confidence"] == 1.0
        assert h["score"] < worst_healthy - 30, (key, h["score"])
        assert h["band"] in ("red", "yellow"), (key, h["score"])
        named = driver_components(h["drivers"])
        assert {"usage", "support", "sentiment"} <= set(named), (key, h["drivers"])
        parts = by_name(h)
        assert parts["usage"]["inputs"]["trend_30d"] < -0.5 and parts["usage"]["inputs"]["active_users_30d"] <= 3
        assert parts["support"]["inputs"]["open_tickets"] == 4 and parts["support"]["inputs"]["open_high_priority"] == 3
        assert parts["sentiment"]["inputs"]["latest_score"] <= 6 and "detractor" in parts["sentiment"]["reason"]
        for name in ("usage", "support", "sentiment"):
            assert parts[name]["score"] < min(by_name(g)[name]["score"] for g in healthy.values()), (key, name)
    # One problem at a time: still below every healthy account, and that problem is the first driver.
    for key, component in {"fading-usage": "usage", "ticket-pileup": "support", "detractor": "sentiment"}.items():
        h = scores[key]
        assert h["score"] < worst_healthy, (key, h["score"])
        assert driver_components(h["drivers"])[0] == component, (key, h["drivers"])
    # The book, worst first: every account in trouble on every front comes before every healthy one.
    order = [i["client_id"] for i in book["items"]]
    assert max(order.index(k) for k in risky) < min(order.index(k) for k in healthy), order
    assert sum(book["summary"].get(b, 0) for b in ("red", "yellow")) >= len(risky)


# -------------------------------------------------------------------------------- e: overrides
def _stored_overrides(svc: Services, key: str) -> list[Any]:
    cid = customer_id_for(key)
    events = [svc.app.mapper.to_domain_event(s) for s in svc.app.recorder.select_events(cid)]
    return [e for e in events if isinstance(e, Customer.HealthOverridden)]


@pytest.mark.anyio
async def test_overrides_explain_themselves_end_at_expiry_and_are_never_wiped(settings: Settings) -> None:
    today = datetime.now(UTC).date()
    with open_services(settings) as svc:
        load_customers(svc, [account("acme")])
        load(svc, "mixpanel", "\n".join(daily_usage("acme", today - timedelta(days=40), today - timedelta(days=1), 7)))
        load(svc, "nps", nps_csv([("a1", "acme", 10, at(today - timedelta(days=5), 1))]))
    async with Client(build_server(settings, background=False)) as client:
        before_set = datetime.now(UTC)
        computed = (await call(client, "calculate_health_score", {"client_id": "acme"}))["customer"]
        assert computed["override"] is None and computed["band"] == "green"
        expires = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=123456)
        first = await call(client, "override_health_score", {"client_id": "acme", "band": "red", "score": 25,
                                                              "reason": "champion left; renewal at risk",
                                                              "expires_at": iso(expires)})  # fmt: skip
        assert first["status"] == "overridden" and first["position"]

        just_before = (await call(client, "calculate_health_score",
                                  {"client_id": "acme", "as_of": iso(expires - timedelta(microseconds=1))}))["customer"]
        assert just_before["band"] == "red" and just_before["score"] == 25
        assert just_before["computed_score"] == pytest.approx(computed["computed_score"], abs=15)
        assert just_before["override"]["reason"] == "champion left; renewal at risk"
        assert just_before["override"]["author"].startswith("mcp:")
        assert just_before["override"]["expires_at"].startswith(expires.strftime("%Y-%m-%dT%H:%M:%S.123456"))
        assert just_before["drivers"][0].startswith("override by mcp:") and "champion left" in just_before["drivers"][0]
        for moment in (expires, expires + timedelta(microseconds=1)):
            after = (await call(client, "calculate_health_score", {"client_id": "acme", "as_of": iso(moment)}))["customer"]
            assert after["override"] is None and after["band"] == "green", (moment, after["band"])
            assert after["score"] == after["computed_score"]
            assert not any(d.startswith("override") for d in after["drivers"])
        earlier = (await call(client, "calculate_health_score", {"client_id": "acme", "as_of": iso(before_set)}))["customer"]
        assert earlier["override"] is None  # not yet set at that instant

        # Other writes to the customer leave the override in place.
        await call(client, "update_client_info", {"client_id": "acme", "changes": {"seats": 12}})
        await call(client, "configure_health_scorecard", {"weights": {"engagement": 5}})
        still = (await call(client, "calculate_health_score", {"client_id": "acme"}))["customer"]
        assert still["override"] is not None and still["band"] == "red"

        second_expiry = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
        await call(client, "override_health_score", {"client_id": "acme", "band": "yellow", "reason": "exec sponsor re-engaged",
                                                     "expires_at": iso(second_expiry)})  # fmt: skip
        now = (await call(client, "calculate_health_score", {"client_id": "acme"}))["customer"]
        assert now["band"] == "yellow" and now["override"]["reason"] == "exec sponsor re-engaged"
        assert now["score"] == now["computed_score"]  # no score given: the computed one stands beside the band

    with open_services(settings) as svc:
        overrides = _stored_overrides(svc, "acme")
        assert [o.band for o in overrides] == ["red", "yellow"]
        assert overrides[0].replaces is None
        replaced = overrides[1].replaces
        assert replaced is not None, "the new override must record the one it replaced"
        assert replaced["band"] == "red" and replaced["score"] == 25 and replaced["reason"] == "champion left; renewal at risk"
        assert datetime.fromisoformat(replaced["expires_at"]) == expires
        # Expired overrides are not "replaced": the record says so.
        later = overrides[1].occurred_at + timedelta(days=4)
        svc.app.override_health("acme", {"band": "green", "reason": "renewed early", "expires_at": later + timedelta(days=1)},
                                "test", CommandMeta(actor="t", source="t", occurred_at=later))  # fmt: skip
        assert _stored_overrides(svc, "acme")[-1].replaces is None


# ------------------------------------------------------------------------------- f: backtest AUC
def independent_auc(retained: Sequence[float], churned: Sequence[float]) -> float:
    wins = Fraction(0)
    for r in retained:
        for c in churned:
            wins += 1 if r > c else Fraction(1, 2) if r == c else 0
    return float(wins / (len(retained) * len(churned)))


@pytest.mark.anyio
async def test_backtest_auc_matches_an_independent_computation(settings: Settings) -> None:
    as_of = datetime(2026, 11, 1, tzinfo=UTC)
    days_before = 30
    churn_days = {"gone-1": date(2026, 9, 15), "gone-2": date(2026, 10, 1), "gone-3": date(2026, 10, 20)}
    # Retained: (users of 10 seats, features, NPS). stay-4 looks worse than the churners did;
    # stay-echo mirrors gone-1's last months, shifted to end at as_of, so the two tie exactly.
    stay = {"stay-1": (8, FEATURES, 9), "stay-2": (6, FEATURES[:3], 9), "stay-3": (3, FEATURES, 9),
            "stay-4": (1, FEATURES[:1], 2)}  # fmt: skip
    rows = [account(k, start="2026-03-02", churned_at=d.isoformat()) for k, d in churn_days.items()]
    rows += [account(k, start="2026-03-02") for k in [*stay, "stay-echo"]]
    rows += [account("stay-nodata", start="2026-03-02", arr=None, renewal=None, zendesk=False, mixpanel=False)]
    rows += [account("late", start="2026-10-25")]  # registered after the retained customers' instant
    usage: list[str] = []
    answers: list[tuple[str, str, int, datetime]] = []
    first = date(2026, 6, 1)
    fading = lambda end: (lambda day: 6 if (end - day).days > 70 else 1)  # noqa: E731
    for n, (key, gone) in enumerate(churn_days.items()):  # fading for weeks before they left
        usage += daily_usage(key, first, gone - timedelta(days=1), fading(gone), FEATURES[:2])
        answers.append((f"{key}-nps", key, 3 + n, midnight(gone) - timedelta(days=45)))
    for key, (users, features, score) in stay.items():
        usage += daily_usage(key, first, date(2026, 10, 31), users, features)
        answers.append((f"{key}-nps", key, score, datetime(2026, 8, 1, tzinfo=UTC)))
    usage += daily_usage("stay-echo", first, date(2026, 10, 31), fading(as_of.date()), FEATURES[:2])
    answers.append(("stay-echo-nps", "stay-echo", 3, as_of - timedelta(days=45)))
    usage += daily_usage("late", date(2026, 10, 25), date(2026, 10, 31), 4)
    with open_services(settings) as svc:
        load_customers(svc, rows)
        load(svc, "mixpanel", "\n".join(usage) + "\n")
        load(svc, "nps", nps_csv(answers))

    async with Client(build_server(settings, background=False)) as client:
        report = await call(client, "backtest_health_model", {"days_before": days_before, "as_of": iso(as_of)})
        churned_scores, retained_scores, bands, echo = [], [], {}, None
        for key, gone in churn_days.items():
            instant = midnight(gone) - timedelta(days=days_before)
            h = (await call(client, "calculate_health_score", {"client_id": key, "as_of": iso(instant)}))["customer"]
            churned_scores.append(h["score"])
            bands.setdefault(h["band"], []).append(True)
        retained_instant = as_of - timedelta(days=days_before)
        for key in [*stay, "stay-echo", "stay-nodata"]:
            h = (await call(client, "calculate_health_score", {"client_id": key, "as_of": iso(retained_instant)}))["customer"]
            if h["score"] is None:
                assert key == "stay-nodata"
                continue
            retained_scores.append(h["score"])
            echo = h["score"] if key == "stay-echo" else echo
            bands.setdefault(h["band"], []).append(False)
        late = await error(client, "calculate_health_score", {"client_id": "late", "as_of": iso(retained_instant)})
        assert "not registered yet" in late

    assert None not in churned_scores and echo == churned_scores[0]  # a retained and a churned customer tie
    expected = independent_auc(retained_scores, churned_scores)
    assert 0.5 < expected < 1.0  # separates, imperfectly: stay-4 scores below the churners
    assert report["auc"] == pytest.approx(expected, abs=5e-5)
    assert report["churned_scored"] == 3 and report["retained_scored"] == len(retained_scores) == len(stay) + 1
    assert report["days_before"] == days_before and "Mann-Whitney" in report["method"]
    assert report["note"] == ("only 3 churned customers scored: one of them scoring otherwise could move the AUC by up "
                              "to 0.33, so it is indicative only until about 10 churns are on record")  # fmt: skip
    left_out = {(e["customer_id"], e["reason"]) for e in report["left_out"]}
    assert left_out == {(str(customer_id_for("stay-nodata")), "no component had data"),
                        (str(customer_id_for("late")), "not registered yet")}  # fmt: skip
    assert {b: (v["customers"], v["churned"]) for b, v in report["per_band"].items()} == {
        b: (len(v), sum(v)) for b, v in bands.items()
    }
    for entry in report["per_band"].values():
        assert entry["churn_rate"] == round(entry["churned"] / entry["customers"], 3)


# ----------------------------------------------------------------------------------- g: bad input
@pytest.mark.anyio
async def test_bad_input_names_the_field_and_records_nothing(settings: Settings) -> None:
    async with Client(build_server(settings, background=False)) as client:
        registered = await call(client, "register_client", {"client_id": "acme", "client_name": "Acme"})
        head = registered["position"]
        card = (await call(client, "calculate_health_score", {"client_id": "acme"}))["customer"]["scorecard"]
        cases = [
            ("configure_health_scorecard", {"weights": {"usage": -5}}, ["weights.usage", "greater than or equal to 0"]),
            ("configure_health_scorecard", {"weights": {"happiness": 10}}, ["weights.happiness", "unknown component", "usage"]),
            ("configure_health_scorecard", {"bands": {"green": 50, "yellow": 60}}, ["bands", "yellow"]),
            ("configure_health_scorecard", {"bands": {"green": 50, "yellow": 50}}, ["bands", "yellow"]),
            ("configure_health_scorecard", {}, ["weights, bands or key_features"]),
            ("override_health_score", {"client_id": "acme", "band": "red", "reason": "late payer",
                                       "expires_at": iso(datetime.now(UTC) - timedelta(minutes=1))}, ["expires_at", "past"]),
            ("override_health_score", {"client_id": "acme", "band": "purple", "reason": "late payer",
                                       "expires_at": iso(datetime.now(UTC) + timedelta(days=1))}, ["band", "green", "yellow", "red"]),
            ("override_health_score", {"client_id": "nobody", "band": "red", "reason": "late payer",
                                       "expires_at": iso(datetime.now(UTC) + timedelta(days=1))}, ["client_id", "nobody"]),
            ("calculate_health_score", {"client_id": "nobody"}, ["client_id", "no customer 'nobody'"]),
            ("calculate_health_score", {"client_id": "acme", "as_of": "2020-01-01T00:00:00Z"}, ["as_of", "not registered yet"]),
        ]  # fmt: skip
        for tool, args, words in cases:
            message = await error(client, tool, args)
            for word in words:
                assert word in message, (tool, args, message)
        after = (await call(client, "calculate_health_score", {"client_id": "acme"}))["customer"]
        assert after["scorecard"] == card and after["override"] is None
    with open_services(settings) as svc:
        assert svc.app.last_position() == head  # nothing was recorded by any rejected call
        assert _stored_overrides(svc, "acme") == []


# ---------------------------------------------------------------------------- h: why it changed
@pytest.mark.anyio
async def test_compare_to_explains_the_change_component_by_component(settings: Settings) -> None:
    today = date(2026, 11, 1)
    a, b = midnight(today - timedelta(days=14)), midnight(today)
    with open_services(settings) as svc:
        load_customers(svc, [account("acme", renewal="2027-09-30"), account("beta", renewal="2027-09-30", zendesk=False)])
        load(svc, "mixpanel", "\n".join(daily_usage("acme", today - timedelta(days=120), today - timedelta(days=1), 5)))
        load(svc, "mixpanel", "\n".join(daily_usage("beta", today - timedelta(days=120), today - timedelta(days=1), 5)))
        load(svc, "zendesk", zendesk_json([
            ZTicket(1, "acme", at(today - timedelta(days=90)), at(today - timedelta(days=89)), "solved", "normal"),
            ZTicket(2, "acme", at(today - timedelta(days=7)), at(today - timedelta(days=7), 13), "open", "urgent"),
            ZTicket(3, "acme", at(today - timedelta(days=6)), at(today - timedelta(days=6), 13), "open", "urgent"),
        ]))  # fmt: skip
        load(svc, "nps", nps_csv([("n1", "acme", 8, at(today - timedelta(days=60))), ("n2", "acme", 6, at(today - timedelta(days=5))),
                                  ("n3", "beta", 1, at(today - timedelta(days=5)))]))  # beta's first answer: a detractor
    async with Client(build_server(settings, background=False)) as client:
        result = (await call(client, "calculate_health_score", {"client_id": "acme", "as_of": iso(b), "compare_to": iso(a)}))
        beta = (await call(client, "calculate_health_score", {"client_id": "beta", "as_of": iso(b), "compare_to": iso(a)}))
        back = (await call(client, "calculate_health_score", {"client_id": "beta", "as_of": iso(a), "compare_to": iso(b)}))
        then = (await call(client, "calculate_health_score", {"client_id": "acme", "as_of": iso(a)}))["customer"]
    now, comparison = result["customer"], result["customer"]["comparison"]
    assert comparison["from"] == iso(a) and comparison["to"] == iso(b)
    assert comparison["score_from"] == then["score"] and comparison["score_to"] == now["score"]
    assert comparison["delta"] == pytest.approx(now["score"] - then["score"], abs=0.11) and comparison["delta"] < 0
    rows = {r["component"]: r for r in comparison["components"]}
    assert list(rows) == ["usage", "adoption", "support", "sentiment", "engagement", "financial"]
    assert rows["support"]["delta"] < 0 and rows["sentiment"]["delta"] < 0
    for name in ("usage", "adoption", "financial"):
        assert rows[name]["delta"] == 0, rows[name]
    assert rows["engagement"]["from"] is None and rows["engagement"]["delta"] is None
    explanation = comparison["explanation"]
    assert len(explanation) == 2, explanation
    assert explanation[0].startswith("support -") and "2 open tickets (2 high priority)" in explanation[0]
    assert explanation[1].startswith("sentiment -") and "latest NPS answer 6 (detractor)" in explanation[1]
    assert rows["support"]["reason_from"].startswith("0 open tickets")

    # Nothing of beta's moved, but its first NPS answer came in between: that is why it fell.
    beta_change = beta["customer"]["comparison"]
    sentiment = next(c for c in beta["customer"]["components"] if c["name"] == "sentiment")
    assert beta_change["delta"] < -10 and all(r["delta"] in (0, None) for r in beta_change["components"])
    assert beta_change["explanation"] == [
        f"sentiment now counted at {sentiment['score']:.1f} (no data before): latest NPS answer 1 (detractor), NPS -100 over 180 days"]
    assert back["customer"]["comparison"]["explanation"] == [  # the other way round
        f"sentiment no longer counted (it was {sentiment['score']:.1f}): no NPS responses recorded"]
