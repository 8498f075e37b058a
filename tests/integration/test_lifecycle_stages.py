"""manage_lifecycle_stages and the stage in get_client_overview, through the MCP client, on
SQLite and PostgreSQL. Accounts arrive through the customers CSV, tickets and NPS answers
through the vendors' file formats (``Ingestion.import_file``); as_of moves in time."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest
from mcp import Client

from connectors.customers import import_customers, read_rows
from events.settings import Settings
from mcp_server.server import build_server
from mcp_server.services import Services, open_services
from projections.health_history import update_history
from projections.health_inputs_query import SESSION_LIKE, book_feature_first_days, gather
from projections.lifecycle_query import stage_history

pytestmark = pytest.mark.anyio

CSV_HEADER = ("external_key", "name", "domain", "industry", "tier", "arr", "seats", "contract_start", "renewal_date",
              "owner", "contact_name", "contact_email", "zendesk_org_id", "intercom_company_id",
              "mixpanel_account_id", "churned_at", "churn_reason")  # fmt: skip


def account(key: str, start: str, *, arr: float | None = 20_000, renewal: str | None = None,
            churned_at: str | None = None) -> dict[str, Any]:  # fmt: skip
    return {"external_key": key, "name": key.title(), "tier": "growth", "arr": arr, "seats": 10, "contract_start": start,
            "renewal_date": renewal, "owner": "dana", "zendesk_org_id": f"org-{key}", "mixpanel_account_id": f"mp-{key}",
            "churned_at": churned_at, "churn_reason": "budget" if churned_at else None}  # fmt: skip


BOOK = [
    account("fresh", "2025-01-01", renewal=None),  # onboarding -> adoption -> mature
    account("renewing", "2024-01-01", renewal="2025-03-01"),  # renewal, then red once the date passes unrenewed
    account("sour", "2024-01-01", arr=None),  # red from a detractor NPS answer and an urgent open ticket
    account("gone", "2024-01-01", churned_at="2025-02-01"),
]


def at(day: str, clock: str = "12:00") -> str:
    return datetime.combine(date.fromisoformat(day), time.fromisoformat(clock), UTC).isoformat()


def customers_csv(rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_HEADER, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_HEADER})
    return out.getvalue()


def load(svc: Services, source: str, text: str) -> None:
    report = svc.ingestion(actor="test").import_file(source, io.StringIO(text), f"{source}.file")
    assert not report.rejected and report.recorded, report.as_dict()
    svc.engine.ensure_current()


def load_book(settings: Settings) -> None:
    with open_services(settings) as svc:
        report = import_customers(svc.app, read_rows(io.StringIO(customers_csv(BOOK))), actor="test", source_name="c.csv")
        assert not report.rejected, report.as_dict()
        svc.engine.ensure_current()
        ticket = {"id": 501, "subject": "Everything is down", "status": "open", "priority": "urgent",
                  "organization_id": "org-sour", "created_at": "2025-05-01T09:00:00Z", "updated_at": "2025-05-01T09:00:00Z",
                  "via": {"channel": "email", "source": {"from": {"address": "ops@sour.example"}}}}  # fmt: skip
        load(svc, "zendesk", json.dumps({"tickets": [ticket], "after_cursor": None, "end_of_stream": True}))
        nps = "response_id,customer,email,score,comment,responded_at\nr1,sour,ops@sour.example,0,awful,2025-05-01T10:00:00Z\n"
        load(svc, "nps", nps)


async def call(client: Client, args: dict[str, Any], tool: str = "manage_lifecycle_stages") -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def error(client: Client, args: dict[str, Any]) -> str:
    result = await client.call_tool("manage_lifecycle_stages", args)
    assert result.is_error, result.structured_content
    return " ".join(getattr(block, "text", "") for block in result.content)


async def stage_of(client: Client, key: str, as_of: str) -> dict[str, Any]:
    return (await call(client, {"action": "get", "client_id": key, "as_of": as_of}))["customer"]


async def test_each_rule_as_of_different_instants(settings: Settings) -> None:
    load_book(settings)
    expected = [
        ("fresh", at("2025-02-15"), "onboarding", "within 90 days of contract_start 2025-01-01"),
        ("fresh", at("2025-03-31", "23:59"), "onboarding", "within 90 days of contract_start 2025-01-01"),
        ("fresh", at("2025-04-01", "00:01"), "adoption", "first year since contract_start 2025-01-01"),
        ("fresh", at("2026-03-01"), "mature", "more than a year since contract_start 2025-01-01"),
        ("renewing", at("2024-11-15"), "adoption", "first year since contract_start 2024-01-01"),
        ("renewing", at("2024-12-01"), "renewal", "renewal_date 2025-03-01 within 90 days"),
        ("renewing", at("2025-03-01"), "renewal", "renewal_date 2025-03-01 within 90 days"),
        # The renewal date passed with no renewal recorded: the financial component turns red.
        ("renewing", at("2025-03-10"), "at_risk", "health band red"),
        ("sour", at("2025-04-15"), "mature", "more than a year since contract_start 2024-01-01"),
        ("sour", at("2025-06-01"), "at_risk", "health band red"),
        ("gone", at("2025-01-31"), "mature", "more than a year since contract_start 2024-01-01"),
        ("gone", at("2025-02-01", "00:01"), "churned", "churned on 2025-02-01"),
    ]
    async with Client(build_server(settings, background=False)) as client:
        for key, as_of, stage, because in expected:
            got = await stage_of(client, key, as_of)
            assert (got["stage"], got["rule"], got["because"]) == (stage, stage, because), (key, as_of, got)
            assert got["override"] is None and got["derived_stage"] == stage
        sour_health = await call(client, {"client_id": "sour", "as_of": at("2025-06-01")}, "calculate_health_score")
        assert sour_health["customer"]["band"] == "red"
        got = await call(client, {"action": "get", "client_id": "fresh", "as_of": at("2025-02-15")})
        assert any("expansion" in note and "Opportunity" in note for note in got["notes"]), got["notes"]
        early = await error(client, {"action": "get", "client_id": "fresh", "as_of": at("2024-06-01")})
        assert "as_of" in early and "not registered" in early
        missing = await error(client, {"action": "get"})
        assert "client_id" in missing and "required" in missing


async def test_an_overdue_renewal_stays_in_renewal(settings: Settings) -> None:
    """A renewal date that passed with no renewal or churn recorded, health not red (a promoter's
    NPS answer holds it yellow): the renewal is overdue, not a "mature" account."""
    with open_services(settings) as svc:
        report = import_customers(svc.app, read_rows(io.StringIO(customers_csv([account("lapsed", "2024-01-01",
                                  renewal="2025-03-01")]))), actor="test", source_name="c.csv")  # fmt: skip
        assert not report.rejected, report.as_dict()
        svc.engine.ensure_current()
        load(svc, "nps", "response_id,customer,email,score,comment,responded_at\n"
                         "r1,lapsed,ops@lapsed.example,10,love it,2025-02-01T10:00:00Z\n")  # fmt: skip
    async with Client(build_server(settings, background=False)) as client:
        due = await stage_of(client, "lapsed", at("2025-02-15"))
        overdue = await stage_of(client, "lapsed", at("2025-03-10"))
        health = await call(client, {"client_id": "lapsed", "as_of": at("2025-03-10")}, "calculate_health_score")
        listed = await call(client, {"action": "list", "as_of": at("2025-03-10"), "stage": "renewal"})
    assert (due["stage"], due["because"]) == ("renewal", "renewal_date 2025-03-01 within 90 days")
    assert health["customer"]["band"] == "yellow"
    assert (overdue["stage"], overdue["rule"]) == ("renewal", "renewal")
    assert overdue["because"] == "renewal_date 2025-03-01 passed 9 days ago with no renewal or churn recorded"
    assert overdue["since"].startswith("2024-12-01")  # one renewal period, due then overdue
    assert [m["client_id"] for m in listed["items"]] == ["lapsed"]


async def test_history_periods_and_time_in_stage(settings: Settings) -> None:
    load_book(settings)
    async with Client(build_server(settings, background=False)) as client:
        history = await call(client, {"action": "history", "client_id": "renewing", "as_of": at("2025-03-10", "00:00")})
        gone = await call(client, {"action": "history", "client_id": "gone", "as_of": at("2025-03-01", "00:00")})
        paged = await call(client, {"action": "history", "client_id": "renewing", "as_of": at("2025-03-10", "00:00"),
                                    "limit": 3})  # fmt: skip
        rest = await call(client, {"action": "history", "client_id": "renewing", "as_of": at("2025-03-10", "00:00"),
                                   "limit": 3, "cursor": paged["next_cursor"]})  # fmt: skip
        got = await stage_of(client, "renewing", at("2025-03-10", "00:00"))

    periods = [(p["stage"], p["from"][:10], p["to"][:10], p["days"], p["because"], p["ongoing"]) for p in history["items"]]
    assert periods == [
        ("onboarding", "2024-01-01", "2024-03-31", 90.0, "within 90 days of contract_start 2024-01-01", False),
        ("adoption", "2024-03-31", "2024-12-01", 245.0, "first year since contract_start 2024-01-01", False),
        ("renewal", "2024-12-01", "2025-03-02", 91.0, "renewal_date 2025-03-01 within 90 days", False),
        ("at_risk", "2025-03-02", "2025-03-10", 8.0, "health band red", True),
    ], periods  # fmt: skip
    assert history["time_in_stage"] == {"onboarding": 90.0, "adoption": 245.0, "renewal": 91.0, "at_risk": 8.0}
    assert all(p["from"].endswith("T00:00:00Z") or p["from"].endswith("+00:00") for p in history["items"])
    assert [p["stage"] for p in paged["items"]] == ["onboarding", "adoption", "renewal"] and paged["next_cursor"]
    assert [p["stage"] for p in rest["items"]] == ["at_risk"] and rest["next_cursor"] is None

    # get: the stage, since when (the start of the ongoing period) and the time in it.
    assert got["stage"] == "at_risk" and got["since"].startswith("2025-03-02") and got["days_in_stage"] == 8.0

    # A churn recorded for midnight of its day starts the churned period at that midnight.
    assert [(p["stage"], p["from"][:10], p["because"]) for p in gone["items"]][-2:] == [
        ("mature", "2025-01-01", "more than a year since contract_start 2024-01-01"),
        ("churned", "2025-02-01", "churned on 2025-02-01")]  # fmt: skip


async def test_history_reads_stored_daily_bands_when_present(settings: Settings) -> None:
    load_book(settings)
    until = datetime(2025, 6, 1, tzinfo=UTC)
    with open_services(settings) as svc:
        cid = svc.app.resolve("sour")
        computed = stage_history(svc.store, cid, until)
        update_history(svc.store, date(2025, 5, 31), start=date(2025, 1, 1))
        stored = stage_history(svc.store, cid, until)
    assert computed is not None and stored is not None
    assert computed.bands_computed > 300 and computed.bands_stored == 0
    assert stored.bands_stored >= 150 and stored.bands_computed < computed.bands_computed
    assert stored.periods == computed.periods
    assert [(p.stage, p.start.date().isoformat()) for p in stored.periods][-2:] == [("mature", "2025-01-01"),
                                                                                   ("at_risk", "2025-05-02")]  # fmt: skip


async def test_override_precedence_expiry_and_bad_input(settings: Settings) -> None:
    load_book(settings)
    now = datetime.now(UTC)
    with open_services(settings) as svc:  # the book's detractor answer is from 2025: too old to score now
        recent = (now - timedelta(days=5)).isoformat().replace("+00:00", "Z")
        load(svc, "nps", f"response_id,customer,email,score,comment,responded_at\nr2,sour,ops@sour.example,1,still down,{recent}\n")
    expires = (now + timedelta(days=10)).replace(microsecond=0)
    async with Client(build_server(settings, background=False)) as client:
        before = await stage_of(client, "sour", now.isoformat())
        assert before["stage"] == "at_risk"
        first = await call(client, {"action": "override", "client_id": "sour", "stage": "renewal",
                                    "reason": "renewal call booked with the new sponsor", "expires_at": expires.isoformat()})  # fmt: skip
        overridden = first["customer"]
        assert (overridden["stage"], overridden["rule"], overridden["derived_stage"]) == ("renewal", "override", "at_risk")
        assert overridden["because"].startswith("override by mcp:") and "renewal call booked" in overridden["because"]
        assert first["position"] and first["recorded"]["replaces"] is None
        assert first["recorded"]["author"].startswith("mcp:")

        during = await call(client, {"action": "get", "client_id": "sour"})
        o = during["customer"]["override"]
        assert o["stage"] == "renewal" and o["reason"] == "renewal call booked with the new sponsor"
        assert o["author"].startswith("mcp:") and o["expires_at"].startswith(expires.strftime("%Y-%m-%dT%H:%M:%S"))
        assert during["customer"]["since"] == o["set_at"]  # the override started the current period
        overview = await call(client, {"client_id": "sour"}, "get_client_overview")
        assert overview["stage"] == "renewal"

        # A later override replaces it and says so; it outranks a churn too.
        second = await call(client, {"action": "override", "client_id": "sour", "stage": "expansion",
                                     "reason": "expansion signed", "expires_at": expires.isoformat()})  # fmt: skip
        assert second["recorded"]["replaces"]["stage"] == "renewal"
        gone = await call(client, {"action": "override", "client_id": "gone", "stage": "renewal",
                                   "reason": "win-back talks", "expires_at": expires.isoformat()})  # fmt: skip
        assert (gone["customer"]["stage"], gone["customer"]["derived_stage"]) == ("renewal", "churned")

        # Expiry: just before it the override holds, after it the derived stage is back.
        just_before = await stage_of(client, "sour", (expires - timedelta(minutes=1)).isoformat())
        after = await stage_of(client, "sour", (expires + timedelta(seconds=1)).isoformat())
        assert just_before["stage"] == "expansion"
        assert (after["stage"], after["rule"], after["override"]) == ("at_risk", "at_risk", None)
        history = await call(client, {"action": "history", "client_id": "sour",
                                      "as_of": (expires + timedelta(days=2)).isoformat()})  # fmt: skip
        tail = [(p["stage"], p["because"]) for p in history["items"]][-4:]
        assert tail[0] == ("at_risk", "health band red")
        assert tail[1][0] == "renewal" and tail[1][1].endswith("renewal call booked with the new sponsor")
        assert tail[2][0] == "expansion" and tail[2][1].endswith("expansion signed")
        assert tail[3] == ("at_risk", "health band red")
        assert history["items"][-1]["from"] == history["items"][-2]["to"] and history["items"][-1]["from"].startswith(
            expires.strftime("%Y-%m-%dT%H:%M:%S"))  # fmt: skip

        # Bad input records nothing: an expiry in the past, a missing reason, an unknown stage.
        past = await error(client, {"action": "override", "client_id": "fresh", "stage": "mature",
                                    "reason": "looks mature", "expires_at": (now - timedelta(hours=1)).isoformat()})  # fmt: skip
        assert "expires_at" in past and "past" in past
        no_reason = await error(client, {"action": "override", "client_id": "fresh", "stage": "mature",
                                         "expires_at": expires.isoformat()})  # fmt: skip
        assert "reason" in no_reason and "required" in no_reason
        unknown = await error(client, {"action": "override", "client_id": "fresh", "stage": "dormant",
                                       "reason": "quiet", "expires_at": expires.isoformat()})  # fmt: skip
        assert "stage" in unknown
        fresh = await stage_of(client, "fresh", now.isoformat())
        assert fresh["override"] is None and fresh["rule"] == "mature"
    with open_services(settings) as svc:
        assert svc.app.last_position() == gone["position"]


async def test_list_counts_and_members_per_stage(settings: Settings) -> None:
    load_book(settings)
    as_of = at("2025-02-15")
    async with Client(build_server(settings, background=False)) as client:
        everyone = await call(client, {"action": "list", "as_of": as_of})
        page1 = await call(client, {"action": "list", "as_of": as_of, "limit": 2})
        page2 = await call(client, {"action": "list", "as_of": as_of, "limit": 2, "cursor": page1["next_cursor"]})
        churned = await call(client, {"action": "list", "as_of": as_of, "stage": "churned"})
        later = await call(client, {"action": "list", "as_of": at("2025-06-01")})
        bad_cursor = await error(client, {"action": "list", "cursor": "nope"})
    assert everyone["counts"] == {"onboarding": 1, "adoption": 0, "expansion": 0, "mature": 1, "renewal": 1,
                                  "at_risk": 0, "churned": 1}  # fmt: skip
    members = [(m["client_id"], m["stage"]) for m in everyone["items"]]
    assert members == [("fresh", "onboarding"), ("sour", "mature"), ("renewing", "renewal"), ("gone", "churned")]
    assert everyone["next_cursor"] is None and everyone["items"][2]["because"] == "renewal_date 2025-03-01 within 90 days"
    assert [m["client_id"] for m in page1["items"] + page2["items"]] == [c for c, _ in members]
    assert page1["next_cursor"] and page2["next_cursor"] is None
    assert [m["client_id"] for m in churned["items"]] == ["gone"] and churned["counts"] == everyone["counts"]
    assert later["counts"]["at_risk"] == 2 and later["counts"]["adoption"] == 1  # sour red, renewing unrenewed
    assert "cursor" in bad_cursor


def test_book_features_follow_the_first_days_kept_with_the_feature_bits(settings: Settings) -> None:
    """The book's features at an instant (adoption's default key features, what a stage history
    samples every day) are those first used before it, sessions aside, from the first days kept."""
    def usage(account: str, event: str, day: str) -> str:
        when = int(datetime.fromisoformat(f"{day}T10:00:00+00:00").timestamp())
        return json.dumps({"event": event, "properties": {"time": when, "distinct_id": "u1", "account_id": account,
                                                          "$insert_id": f"{account}-{event}-{day}"}})  # fmt: skip

    load_book(settings)
    with open_services(settings) as svc:
        lines = [usage("mp-fresh", "Report Created", "2025-02-03"), usage("mp-sour", "Export CSV", "2025-02-05"),
                 usage("mp-fresh", "$session_start", "2025-02-05"), usage("mp-gone", "Invite Sent", "2025-03-01")]  # fmt: skip
        load(svc, "mixpanel", "\n".join(lines))
        with svc.store.snapshot() as tx:
            first_days = book_feature_first_days(tx)
            for day in ("2025-02-03", "2025-02-04", "2025-02-06", "2025-03-02"):
                moment = datetime.fromisoformat(f"{day}T00:00:00+00:00")
                expected = {f for f, first in first_days.items() if first < day} - SESSION_LIKE
                assert gather(tx, moment).book_features == expected, day
        assert first_days == {"Report Created": "2025-02-03", "Export CSV": "2025-02-05", "Invite Sent": "2025-03-01"}
