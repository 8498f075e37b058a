"""track_adoption_milestones through the MCP client on SQLite and PostgreSQL: definitions as
events, reached dates computed from usage that arrives through the Mixpanel file import."""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from mcp import Client

from events.commands import CommandMeta
from events.settings import Settings
from mcp_server.server import build_server
from mcp_server.services import open_services
from projections.milestones import progress

pytestmark = pytest.mark.anyio

D0 = date(2026, 3, 1)


def line(account: str, user: str, event: str, day: date, n: int) -> str:
    when = datetime(day.year, day.month, day.day, 9, tzinfo=UTC) + timedelta(minutes=n)
    return json.dumps({"event": event, "properties": {"time": int(when.timestamp()), "distinct_id": user,
                                                      "$insert_id": f"{account}-{day}-{user}-{event}-{n}",
                                                      "account_id": account}})  # fmt: skip


def acme_usage() -> list[str]:
    """20 days; on day k, min(k+1, 6) users each start a session and view the dashboard; from
    day 3 one report a day is created."""
    lines = []
    for k in range(20):
        day = D0 + timedelta(days=k)
        for u in range(min(k + 1, 6)):
            lines += [line("mp-acme", f"u{u}", "$session_start", day, 2 * u), line("mp-acme", f"u{u}", "Viewed Dashboard", day, 2 * u + 1)]
        if k >= 3:
            lines.append(line("mp-acme", "u0", "Created Report", day, 50))
    return lines


def beta_usage() -> list[str]:
    """Three users in January, three others on 1 March, two more on 10 March: five distinct
    users within 30 days only on 10 March (eight ever by 1 March)."""
    lines = [line("mp-beta", f"jan{u}", "Viewed Dashboard", date(2026, 1, 1), u) for u in range(3)]
    lines += [line("mp-beta", f"mar{u}", "Viewed Dashboard", date(2026, 3, 1), u) for u in range(3)]
    lines += [line("mp-beta", f"late{u}", "Viewed Dashboard", date(2026, 3, 10), u) for u in range(2)]
    # Mixpanel's own page views: activity, but no second feature ("Two features" stays unreached).
    lines += [line("mp-beta", f"late{u}", "$mp_web_page_view", date(2026, 3, 10), 10 + u) for u in range(2)]
    return lines


MILESTONES = {
    "5 active users": ({"metric": "active_users_30d", "op": ">=", "value": 5}, "2026-03-05", "2026-03-10"),
    "Used reports": ({"feature": "Created Report"}, "2026-03-04", None),
    "10 reports": ({"feature": "Created Report", "min_uses": 10}, "2026-03-13", None),
    "100 events": ({"metric": "events_30d", "op": ">=", "value": 100}, "2026-03-11", None),
    "15 active days": ({"metric": "active_days_30d", "op": ">=", "value": 15}, "2026-03-15", None),
    "Two features": ({"metric": "distinct_features_30d", "op": ">", "value": 1}, "2026-03-04", None),
}


def load_usage(settings: Settings) -> None:
    with open_services(settings) as svc:
        for key, mp in (("acme", "mp-acme"), ("beta", "mp-beta"), ("idle", "mp-idle")):
            svc.app.register_customer({"external_key": key, "name": key.title(), "contract_start": "2025-06-01",
                                       "mixpanel_account_id": mp}, CommandMeta(actor="test", source="test"))  # fmt: skip
        svc.engine.ensure_current()
        text = "\n".join(acme_usage() + beta_usage()) + "\n"
        report = svc.ingestion(actor="test").import_file("mixpanel", io.StringIO(text), "t.jsonl")
        assert not report.rejected and report.unmatched == 0, report.as_dict()


async def call(client: Client, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool("track_adoption_milestones", args)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def error(client: Client, args: dict[str, Any]) -> str:
    result = await client.call_tool("track_adoption_milestones", args)
    assert result.is_error, result.structured_content
    return " ".join(getattr(block, "text", "") for block in result.content)


async def test_define_list_status_delete(settings: Settings) -> None:
    load_usage(settings)
    async with Client(build_server(settings, background=False)) as client:
        empty = await call(client, {"action": "status"})
        assert empty["items"] == [] and "no milestones defined" in empty["notes"][0]
        for name, (rule, _, _) in MILESTONES.items():
            defined = await call(client, {"action": "define", "name": name, "rule": rule})
            assert defined["status"] == "created" and defined["position"], defined
            assert defined["items"][0]["name"] == name and defined["items"][0]["defined_by"].startswith("mcp:")
        again = await call(client, {"action": "define", "name": "  5 ACTIVE   users ", "rule": MILESTONES["5 active users"][0]})
        assert again["status"] == "updated"  # same milestone (normalised name), new display name
        same = await call(client, {"action": "define", "name": "5 ACTIVE users", "rule": MILESTONES["5 active users"][0]})
        assert same["status"] == "unchanged" and same["position"] is None
        await call(client, {"action": "define", "name": "5 active users", "rule": MILESTONES["5 active users"][0]})

        listed = await call(client, {"action": "list"})
        assert sorted(m["name"] for m in listed["items"]) == sorted(MILESTONES)
        assert {m["name"]: m["description"] for m in listed["items"]}["10 reports"] == "Created Report used 10 times in total"

        acme = await call(client, {"action": "status", "client_id": "acme"})
        reached = {m["name"]: m["reached_on"] for m in acme["items"]}
        assert reached == {name: acme_day for name, (_, acme_day, _) in MILESTONES.items()}, reached
        assert all(m["reached"] for m in acme["items"])
        progress = {m["name"]: m["progress"] for m in acme["items"]}
        assert progress["10 reports"] == {"uses_total": 17}

        beta = await call(client, {"action": "status", "client_id": "beta"})
        reached = {m["name"]: m["reached_on"] for m in beta["items"]}
        assert reached == {name: beta_day for name, (_, _, beta_day) in MILESTONES.items()}, reached

        idle = await call(client, {"action": "status", "client_id": "idle"})
        assert not any(m["reached"] for m in idle["items"]) and "no usage data" in idle["notes"][0]

        book = await call(client, {"action": "status"})
        counts = {m["name"]: (m["reached_count"], m["first_reached_on"]) for m in book["items"]}
        assert book["customers_total"] == 3
        assert counts["5 active users"] == (2, "2026-03-05") and counts["Used reports"] == (1, "2026-03-04")
        one = await call(client, {"action": "status", "name": "used REPORTS"})
        assert [m["name"] for m in one["items"]] == ["Used reports"]

        deleted = await call(client, {"action": "delete", "name": "used reports"})
        assert deleted["status"] == "deleted" and deleted["position"]
        assert "Used reports" not in {m["name"] for m in (await call(client, {"action": "list"}))["items"]}
        gone = await error(client, {"action": "delete", "name": "Used reports"})
        assert gone.startswith("name:") or "name: no milestone" in gone
        revived = await call(client, {"action": "define", "name": "Used reports", "rule": {"feature": "Viewed Dashboard"}})
        assert revived["status"] == "created"
        beta = await call(client, {"action": "status", "client_id": "beta", "name": "Used reports"})
        assert beta["items"][0]["reached_on"] == "2026-01-01"


def test_distinct_features_leave_out_mixpanels_own_events(settings: Settings) -> None:
    """Where a customer stands on distinct_features_30d counts its features, not Mixpanel's own
    events: on 10 March beta's users viewed the dashboard and produced $mp_web_page_view."""
    load_usage(settings)
    rule = {"metric": "distinct_features_30d", "op": ">", "value": 1}
    with open_services(settings) as svc:
        svc.engine.ensure_current()
        beta = str(svc.app.resolve("beta"))
        with svc.store.snapshot() as tx:
            assert progress(tx, rule, beta, date(2026, 3, 10)) == {"distinct_features_30d": 1, "window": "2026-02-09..2026-03-10"}
            assert progress(tx, {"metric": "events_30d", "op": ">=", "value": 1}, beta, date(2026, 3, 10))["events_30d"] == 7


async def test_a_misspelled_feature_is_refused_and_an_unseen_one_warned(settings: Settings) -> None:
    """A milestone on 'created report' would never be reached by anyone: the usage data says
    'Created Report'. Refused with the name to use, recording nothing; a feature never seen at
    all (about to launch) is defined, with a note."""
    load_usage(settings)
    async with Client(build_server(settings, background=False)) as client:
        typo = await error(client, {"action": "define", "name": "Reports", "rule": {"feature": "created report"}})
        assert (await call(client, {"action": "list"}))["items"] == []  # nothing recorded
        ahead = await call(client, {"action": "define", "name": "Teleported", "rule": {"feature": "Teleport", "min_uses": 3}})
    assert "rule.feature: 'created report' was never seen" in typo and "did you mean 'Created Report'?" in typo
    assert ahead["status"] == "created" and ahead["notes"] == [
        "rule.feature: 'Teleport' has not been seen in the usage data yet: every customer counts as not using it until "
        "it appears"]  # fmt: skip


BAD_RULES = [
    (None, "rule"),
    ({"metric": "logins_30d", "op": ">=", "value": 5}, "rule.metric"),
    ({"metric": "events_30d", "op": "<", "value": 5}, "rule.op"),
    ({"metric": "events_30d", "op": ">=", "value": -1}, "rule.value"),
    ({"metric": "events_30d", "op": ">=", "value": "many"}, "rule.value"),
    ({"metric": "events_30d", "op": ">="}, "rule.value"),
    ({"metric": "events_30d", "op": ">=", "value": 5, "colour": "red"}, "rule.colour"),
    ({"feature": ""}, "rule.feature"),
    ({"feature": "Created Report", "min_uses": 0}, "rule.min_uses"),
    ({"feature": "Created Report", "min_uses": 2.5}, "rule.min_uses"),
    ({"feature": "Created Report", "metric": "events_30d"}, "rule"),
    ({}, "rule"),
]


async def test_bad_input_names_the_field_and_records_nothing(settings: Settings) -> None:
    async with Client(build_server(settings, background=False)) as client:
        first = await call(client, {"action": "define", "name": "Used reports", "rule": {"feature": "Created Report"}})
        for rule, field in BAD_RULES:
            message = await error(client, {"action": "define", "name": "Broken", "rule": rule})
            assert f"{field}:" in message, (rule, message)
        assert "name:" in await error(client, {"action": "define", "rule": {"feature": "X"}})
        assert "name:" in await error(client, {"action": "define", "name": "   ", "rule": {"feature": "X"}})
        assert "name:" in await error(client, {"action": "delete", "name": "never defined"})
        assert "name:" in await error(client, {"action": "status", "name": "never defined"})
        assert "client_id" in await error(client, {"action": "status", "client_id": "nobody"})
        listed = await call(client, {"action": "list"})
        assert [m["name"] for m in listed["items"]] == ["Used reports"]
    with open_services(settings) as svc:
        assert svc.app.last_position() == first["position"]
