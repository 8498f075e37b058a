"""The usage tools (track_usage_engagement, track_feature_adoption, analyze_engagement_patterns)
through the official MCP client, on both backends. Usage enters through the real Mixpanel file
import; every expected number is computed here, independently, from the raw events written."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from statistics import linear_regression
from typing import Any

import pytest
from mcp import Client

from events.commands import CommandMeta
from events.settings import Settings
from mcp_server.server import build_server
from mcp_server.services import Services

pytestmark = pytest.mark.anyio

AS_OF = "2026-03-02T12:00:00Z"  # counted days end at 2026-03-02 (exclusive), a Monday
STOP = date(2026, 3, 2)
SETUP = CommandMeta(actor="test", source="test.setup", occurred_at=datetime(2026, 1, 1, tzinfo=UTC))
SESSION = "$session_start"


@dataclass(frozen=True)
class Use:
    account: str
    user: str
    day: date
    name: str = "Created Report"
    second: int = 0  # distinguishes events of one user on one day


def jsonl(uses: Iterable[Use]) -> str:
    lines = []
    for u in uses:
        at = datetime(u.day.year, u.day.month, u.day.day, 9, tzinfo=UTC) + timedelta(seconds=u.second)
        props = {"time": int(at.timestamp()), "distinct_id": u.user, "account_id": u.account,
                 "$insert_id": f"{u.account}-{u.user}-{u.day}-{u.name}-{u.second}"}  # fmt: skip
        lines.append(json.dumps({"event": u.name, "properties": props}))
    return "\n".join(lines) + "\n"


def register(svc: Services, key: str, account: str | None, seats: int | None = None, start: date = date(2025, 6, 1)) -> None:
    """A customer that exists from ``start`` (registration is backdated to the contract start)."""
    data = {"external_key": key, "name": key.title(), "seats": seats, "contract_start": start.isoformat(),
            "mixpanel_account_id": account}  # fmt: skip
    meta = SETUP.model_copy(update={"occurred_at": max(SETUP.occurred_at, datetime.combine(start, datetime.min.time(), UTC))})
    assert svc.app.register_customer(data, meta).status == "created"


def ingest(svc: Services, uses: list[Use]) -> None:
    report = svc.ingestion(actor="test").import_file("mixpanel", io.StringIO(jsonl(uses)), "t.jsonl")
    assert report.rejected == [] and report.recorded == len(uses), report
    svc.engine.ensure_current()  # folded here: the server process then finds the views at the head


async def call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


def days(start: date, stop: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((stop - start).days)]


# --------------------------------------------------------------------------- engagement
def acme_usage() -> list[Use]:
    """Varying users and events from 2026-01-01 to 2026-03-05, nothing in ISO week 2026-W07."""
    uses = []
    names = ["Created Report", "Exported CSV", SESSION, "Viewed Dashboard"]
    for i, d in enumerate(days(date(2026, 1, 1), date(2026, 3, 6))):
        if date(2026, 2, 9) <= d <= date(2026, 2, 15):
            continue
        for k in range(1 + i % 4):
            uses.append(Use("acct-acme", f"u{(i * 7 + k) % 12}", d, names[(i + k) % 4], k))
    return uses


def expected_buckets(uses: list[Use], bounds: list[tuple[date, date]], seats: int) -> list[dict[str, Any]]:
    out = []
    for start, end in bounds:
        inside = [u for u in uses if start <= u.day < end]
        users = len({u.user for u in inside})
        out.append({"start": start.isoformat(), "end": end.isoformat(), "active_users": users, "events": len(inside),
                    "sessions": sum(u.name == SESSION for u in inside), "active_days": len({u.day for u in inside}),
                    "active_users_per_seat": round(users / seats, 3)})  # fmt: skip
    return out


async def test_engagement_per_week_and_month_with_zero_buckets_and_trend(settings: Settings, services: Services) -> None:
    register(services, "acme", "acct-acme", seats=20)
    uses = acme_usage()
    ingest(services, uses)
    start, previous = STOP - timedelta(days=30), STOP - timedelta(days=60)  # 2026-01-31, 2026-01-01
    async with Client(build_server(settings, background=False)) as client:
        weekly = await call(client, "track_usage_engagement", {"client_id": "acme", "days": 30, "granularity": "week",
                                                                 "as_of": AS_OF})  # fmt: skip
        monthly = await call(client, "track_usage_engagement", {"client_id": "acme", "days": 30, "granularity": "month",
                                                                  "as_of": AS_OF})  # fmt: skip
        daily = await call(client, "track_usage_engagement", {"client_id": "acme", "days": 10, "granularity": "day",
                                                                "as_of": AS_OF})  # fmt: skip
        zoned = await call(client, "track_usage_engagement", {"client_id": "acme", "as_of": "2026-03-02T03:00:00+05:00"})

    # ISO weeks (Monday first) clipped to [2026-01-31, 2026-03-02): W05 holds two days, W07 is empty.
    weeks = [(start, date(2026, 2, 2))] + [(date(2026, 2, 2) + timedelta(days=7 * i), date(2026, 2, 9) + timedelta(days=7 * i))
                                           for i in range(4)]  # fmt: skip
    got = [{k: b[k] for k in ("start", "end", "active_users", "events", "sessions", "active_days", "active_users_per_seat")}
           for b in weekly["buckets"]]  # fmt: skip
    assert got == expected_buckets(uses, weeks, 20)
    assert [b["label"] for b in weekly["buckets"]] == ["2026-W05", "2026-W06", "2026-W07", "2026-W08", "2026-W09"]
    assert [b["partial"] for b in weekly["buckets"]] == [True, False, False, False, False]
    assert weekly["buckets"][2]["active_users"] == 0 and weekly["buckets"][2]["events"] == 0  # shown, not omitted

    now = [u for u in uses if start <= u.day < STOP]
    before = [u for u in uses if previous <= u.day < start]
    active, active_before = len({u.user for u in now}), len({u.user for u in before})
    assert weekly["period"] == {"start": "2026-01-31", "end": "2026-03-02", "days": 30}
    assert (weekly["seats"], weekly["active_users"], weekly["events"]) == (20, active, len(now))
    assert weekly["sessions"] == sum(u.name == SESSION for u in now)
    assert weekly["active_users_per_seat"] == round(active / 20, 3)
    assert weekly["avg_daily_active_users"] == round(sum(len({u.user for u in now if u.day == d}) for d in days(start, STOP)) / 30, 2)
    trend = weekly["trend"]
    assert trend["previous_period"] == {"start": "2026-01-01", "end": "2026-01-31", "days": 30}
    assert (trend["active_users_previous"], trend["events_previous"]) == (active_before, len(before))
    assert trend["active_users_delta"] == active - active_before
    assert trend["events_relative_change"] == round((len(now) - len(before)) / len(before), 3)
    assert "previous period" in trend["method"]
    assert weekly["last_usage_day"] == "2026-03-01"  # usage on and after as_of's date is not counted

    months = [(start, date(2026, 2, 1)), (date(2026, 2, 1), date(2026, 3, 1)), (date(2026, 3, 1), STOP)]
    assert [{k: b[k] for k in got[0]} for b in monthly["buckets"]] == expected_buckets(uses, months, 20)
    assert [b["label"] for b in monthly["buckets"]] == ["2026-01", "2026-02", "2026-03"]
    assert [b["partial"] for b in monthly["buckets"]] == [True, False, True]
    assert monthly["active_users"] == weekly["active_users"] and monthly["trend"] == weekly["trend"]

    assert daily["as_of"] == "2026-03-02T12:00:00Z"
    assert zoned["as_of"] == "2026-03-01T22:00:00Z" and zoned["period"]["end"] == "2026-03-01"  # UTC days
    last10 = [(d, d + timedelta(days=1)) for d in days(STOP - timedelta(days=10), STOP)]
    assert [{k: b[k] for k in got[0]} for b in daily["buckets"]] == expected_buckets(uses, last10, 20)


async def test_no_usage_is_a_note_not_zeros(settings: Settings, services: Services) -> None:
    register(services, "quiet", None, seats=5)
    register(services, "lapsed", "acct-lapsed", seats=5)
    ingest(services, [Use("acct-lapsed", "u1", date(2025, 12, 1))])
    async with Client(build_server(settings, background=False)) as client:
        quiet = await call(client, "track_usage_engagement", {"client_id": "quiet", "as_of": AS_OF})
        lapsed = await call(client, "track_usage_engagement", {"client_id": "lapsed", "as_of": AS_OF, "days": 14})
        unknown = await client.call_tool("track_usage_engagement", {"client_id": "nobody"})
        bad_days = await client.call_tool("track_usage_engagement", {"client_id": "quiet", "days": 400})
        adoption = await call(client, "track_feature_adoption", {"client_id": "quiet", "as_of": AS_OF})
        book = await call(client, "analyze_engagement_patterns", {"as_of": "2025-11-01T00:00:00Z"})
    assert quiet["note"].startswith("no usage data for quiet before 2026-03-02; is its mixpanel_account_id set?")
    assert quiet["active_users"] is None and quiet["events"] is None and quiet["buckets"] == [] and quiet["trend"] is None
    assert quiet["seats"] == 5
    # Usage before the period: real zeros, every bucket shown, and a note saying when it stopped.
    assert lapsed["active_users"] == 0 and lapsed["events"] == 0 and len(lapsed["buckets"]) == 2
    # ... and, as nobody else in the book has usage after it either, where the book's usage data ends.
    assert lapsed["note"].startswith("no usage in this period; the last usage was on 2025-12-01; the book's usage data "
                                     "ends 2025-12-01, 90 days before 2026-03-02: no account has usage recorded since")  # fmt: skip
    assert unknown.is_error and "nobody" in unknown.content[0].text  # type: ignore[union-attr]
    assert bad_days.is_error
    assert adoption["note"].startswith("no usage data for quiet before 2026-03-02")
    assert adoption["customer"]["breadth"] is None and adoption["customer"]["features"] == []
    assert book["note"].startswith("no usage data for any customer before 2025-11-01") and book["dormant_accounts"] == []


# ----------------------------------------------------------------------------- adoption
ADOPTION = [
    Use("acct-acme", "a1", date(2026, 1, 3), "Created Report"),
    Use("acct-acme", "a1", date(2026, 2, 20), "Created Report"),
    Use("acct-acme", "a2", date(2026, 1, 10), "Exported CSV"),  # lapsed: before the 30-day window only
    Use("acct-acme", "a2", date(2026, 2, 21), SESSION),
    Use("acct-globex", "g1", date(2026, 2, 10), "Created Report"),
    Use("acct-globex", "g1", date(2026, 2, 11), "Created Report"),
    Use("acct-globex", "g2", date(2026, 2, 25), "Viewed Dashboard"),
    Use("acct-globex", "g2", date(2026, 2, 26), "$mp_web_page_view"),  # Mixpanel's own: activity, no key feature
    Use("acct-initech", "i1", date(2025, 11, 5), "Created Report"),  # used long ago, not in the window
    Use("acct-acme", "a1", date(2026, 3, 3), "Shared Dashboard"),  # after as_of: never counted for it
]


async def test_feature_adoption_first_use_and_key_features_not_adopted(settings: Settings, services: Services) -> None:
    for key in ("acme", "globex", "initech"):
        register(services, key, f"acct-{key}")
    ingest(services, ADOPTION)
    async with Client(build_server(settings, background=False)) as client:
        book = await call(client, "track_feature_adoption", {"as_of": AS_OF})
        acme_default = await call(client, "track_feature_adoption", {"client_id": "acme", "as_of": AS_OF})
        globex_health = await call(client, "calculate_health_score", {"client_id": "globex", "as_of": AS_OF})
        meta = CommandMeta(actor="test", source="test", occurred_at=datetime(2026, 2, 1, tzinfo=UTC))
        services.app.configure_scorecard({"key_features": ["Created Report", "Exported CSV", "Shared Dashboard"]}, meta)
        services.engine.ensure_current()
        acme = await call(client, "track_feature_adoption", {"client_id": "acme", "as_of": AS_OF})
        before_card = await call(client, "track_feature_adoption", {"client_id": "acme", "as_of": "2026-01-20T00:00:00Z"})
        one = await call(client, "track_feature_adoption", {"feature": "created report", "as_of": AS_OF, "limit": 1})
        missing = await call(client, "track_feature_adoption", {"feature": "Teleport", "as_of": AS_OF})

    default = "every feature the book used in the 90 days before as_of except Mixpanel's own $ events"
    assert book["key_features_source"] == default
    # Neither sessions nor Mixpanel's own events are key features by default.
    assert book["key_features"] == ["Created Report", "Exported CSV", "Viewed Dashboard"]
    assert book["window"] == {"start": "2026-01-31", "end": "2026-03-02", "days": 30}
    assert (book["customers"], book["active_customers"]) == (3, 2)
    report = {f["feature"]: f for f in book["features"]}
    created = report["Created Report"]
    assert (created["adopting_customers"], created["customers_ever"], created["uses_in_window"]) == (2, 3, 3)
    assert created["share_of_active_customers"] == 1.0 and created["first_use"] == "2025-11-05"
    assert [(a["client_id"], a["first_use"], a["uses_in_window"]) for a in created["adopters"]] == [
        ("acme", "2026-01-03", 1), ("globex", "2026-02-10", 2)]  # fmt: skip
    over_time = {p["month"]: p["customers"] for p in created["adoption_over_time"]}
    assert over_time == {"2025-11": 1, "2025-12": 1, "2026-01": 2, "2026-02": 3, "2026-03": 3}
    assert created["adoption_over_time"][-1]["through"] == "2026-03-01"
    csv = report["Exported CSV"]
    assert (csv["adopting_customers"], csv["customers_ever"], csv["share_of_active_customers"]) == (0, 1, 0.0)
    assert report["Viewed Dashboard"]["adopting_customers"] == 1 and report["Viewed Dashboard"]["first_use"] == "2026-02-25"
    assert "Shared Dashboard" not in report  # first used after as_of
    page_views = report["$mp_web_page_view"]  # listed as used, but not key
    assert (page_views["key"], page_views["adopting_customers"]) == (False, 1) and report["Viewed Dashboard"]["key"]
    adoption = next(c for c in globex_health["customer"]["components"] if c["name"] == "adoption")
    assert adoption["inputs"]["key_features_source"] == default
    assert adoption["inputs"]["key_features"] == ["Created Report", "Exported CSV", "Viewed Dashboard"]
    assert adoption["inputs"]["used_30d"] == ["Created Report", "Viewed Dashboard"]
    assert adoption["reason"].startswith("2 of 3 key features used")

    assert acme_default["key_features_source"] == default
    c = acme["customer"]
    assert acme["key_features_source"] == "scorecard" and acme["scorecard_at"].startswith("2026-02-01")
    assert {f["feature"]: f["first_use"] for f in c["features"]} == {"Created Report": "2026-01-03", "Exported CSV": "2026-01-10"}
    assert (c["key_features_used_in_window"], c["key_features_total"], c["breadth"]) == (1, 3, 0.333)
    assert c["not_adopted"] == [
        {"feature": "Exported CSV", "ever_used": True, "first_use": "2026-01-10", "last_use": "2026-01-10"},
        {"feature": "Shared Dashboard", "ever_used": False, "first_use": None, "last_use": None},
    ]
    assert before_card["key_features_source"] == default  # the scorecard came later

    assert [f["feature"] for f in one["features"]] == ["Created Report"]
    assert len(one["features"][0]["adopters"]) == 1 and one["features"][0]["adopters_truncated"] == 1
    assert missing["features"] == [] and "no use of feature 'Teleport'" in missing["note"]
    seen = missing["note"].split("features seen: ")[1].split(", ")  # used before as_of, from the first days kept
    assert {"Created Report", "Exported CSV", "Viewed Dashboard"} <= set(seen) and "Shared Dashboard" not in seen
    assert seen == sorted(seen)


async def test_key_features_are_checked_against_the_usage_data(settings: Settings, services: Services) -> None:
    """A key feature spelled otherwise than the usage data spells it would mark every customer
    down without a word: refused with the seen name, recording nothing. One never seen at all
    (a feature about to launch) is recorded with a warning."""
    for key in ("acme", "globex", "initech"):
        register(services, key, f"acct-{key}")
    ingest(services, ADOPTION)
    head = services.app.last_position()
    async with Client(build_server(settings, background=False)) as client:
        cased = await client.call_tool("configure_health_scorecard", {"key_features": ["Exported CSV", "created  report"]})
        close = await client.call_tool("configure_health_scorecard", {"key_features": ["Viewed Dashbord"]})
        assert services.app.last_position() == head  # nothing recorded
        fine = await call(client, "configure_health_scorecard", {"key_features": ["Created Report", "Exported CSV"]})
        services.engine.ensure_current()  # this test's process runs the views (the server only reads them)
        ahead = await call(client, "configure_health_scorecard", {"key_features": ["Created Report", "Teleport"]})
    text = " ".join(getattr(b, "text", "") for b in cased.content)
    assert cased.is_error and "key_features[1]: 'created  report' was never seen" in text and "'Created Report'?" in text
    assert close.is_error and "did you mean 'Viewed Dashboard'?" in " ".join(getattr(b, "text", "") for b in close.content)
    assert fine["status"] == "updated" and "warnings" not in fine
    assert ahead["status"] == "updated" and ahead["scorecard"]["key_features"] == ["Created Report", "Teleport"]
    assert ahead["warnings"] == ["key_features[1]: 'Teleport' has not been seen in the usage data yet: every customer "
                                 "counts as not using it until it appears"]  # fmt: skip


# ----------------------------------------------------------------------------- patterns
def weekly_users(account: str, per_week: list[int], first: date) -> list[Use]:
    """``per_week[i]`` distinct users, each active once on the Tuesday of week i after ``first``."""
    return [Use(account, f"{account}-u{k}", first + timedelta(days=7 * i + 1)) for i, n in enumerate(per_week) for k in range(n)]


PATTERN_START = STOP - timedelta(days=56)  # eight weeks: four in the previous window, four in this one
PATTERNS = {
    "falling": [10, 10, 10, 10, 4, 4, 4, 4],
    "rising": [2, 2, 2, 2, 5, 5, 5, 5],
    "silent": [5, 5, 5, 5, 0, 0, 0, 0],
    "steady": [6, 6, 6, 6, 6, 6, 6, 6],
    "newbie": [0, 0, 0, 0, 3, 3, 3, 3],
    "gone": [8, 8, 8, 8, 1, 1, 1, 1],  # churned before as_of: left out
}


async def test_drops_spikes_dormant_and_declining(settings: Settings, services: Services) -> None:
    uses = []
    for key, per_week in PATTERNS.items():
        register(services, key, f"acct-{key}", seats=10)
        uses += weekly_users(f"acct-{key}", per_week, PATTERN_START)
    ingest(services, uses)
    churned = CommandMeta(actor="test", source="test", occurred_at=datetime(2026, 2, 20, tzinfo=UTC))
    services.app.churn_customer("gone", {"churned_on": "2026-02-20"}, churned)
    services.engine.ensure_current()
    async with Client(build_server(settings, background=False)) as client:
        out = await call(client, "analyze_engagement_patterns", {"days": 28, "threshold": 0.3, "as_of": AS_OF})
        strict = await call(client, "analyze_engagement_patterns", {"days": 28, "threshold": 2.0, "as_of": AS_OF, "limit": 1})

    window = {"start": "2026-02-02", "end": "2026-03-02", "days": 28}
    assert out["window"] == window and out["previous_window"] == {"start": "2026-01-05", "end": "2026-02-02", "days": 28}
    assert out["customers_considered"] == 5 and out["customers_with_usage_in_window"] == 4
    assert [d["client_id"] for d in out["drops"]] == ["falling"]
    drop = out["drops"][0]
    assert (drop["active_users_previous"], drop["active_users"], drop["active_users_relative_change"]) == (10, 4, -0.6)
    assert (drop["events_previous"], drop["events"], drop["events_relative_change"]) == (40, 16, -0.6)
    assert drop["name"] == "Falling" and drop["window"] == window and drop["reasons"][0] == "active users -60% (10 -> 4)"
    assert [(s["client_id"], s["active_users_relative_change"]) for s in out["spikes"]] == [("rising", 1.5), ("newbie", None)]
    assert out["spikes"][0]["reasons"] == ["active users +150% (2 -> 5)", "events +150% (8 -> 20)"]
    assert "none in the previous one" in out["spikes"][1]["reasons"][0]
    assert [(d["client_id"], d["last_usage_day"], d["days_since_last_usage"]) for d in out["dormant_accounts"]] == [
        ("silent", "2026-01-27", 34)]  # fmt: skip
    assert {d["client_id"]: (d["dormant_users"], d["share_of_previous"]) for d in out["dormant_users"]} == {
        "silent": (5, 1.0), "falling": (6, 0.6)}  # fmt: skip
    assert [d["dormant_users"] for d in out["dormant_users"]] == [6, 5]  # most first

    declining = {d["client_id"]: d for d in out["declining"]}
    assert set(declining) == {"falling", "silent"}
    for key in declining:
        series = PATTERNS[key]
        expected_slope = linear_regression(range(8), series).slope
        assert declining[key]["slope_per_week"] == round(expected_slope, 3)
        assert [w["active_users"] for w in declining[key]["weeks"]] == series
    assert declining["falling"]["weeks"][0] == {"start": "2026-01-05", "end": "2026-01-12", "active_users": 10}
    assert [d["client_id"] for d in out["declining"]] == ["silent", "falling"]  # steepest relative decline first
    assert "least squares" in out["method"]["declining"]
    assert out["counts"] == {"drops": 1, "spikes": 2, "dormant_accounts": 1, "dormant_users": 2, "declining": 2}

    assert strict["drops"] == []  # -60% and +150% are within +-200%; usage from none is still a spike
    assert [s["client_id"] for s in strict["spikes"]] == ["newbie"]
    assert len(strict["declining"]) == 1 and strict["counts"]["declining"] == 2


async def test_answers_for_a_past_instant_do_not_change_when_later_usage_arrives(settings: Settings, services: Services) -> None:
    register(services, "acme", "acct-acme", seats=20)
    register(services, "globex", "acct-globex", seats=5)
    ingest(services, acme_usage() + weekly_users("acct-globex", [3, 3, 1, 0, 2, 2, 0, 1], PATTERN_START))
    calls: list[tuple[str, dict[str, Any]]] = [("track_usage_engagement", {"client_id": "acme", "granularity": "week"}),
             ("track_usage_engagement", {"client_id": "globex", "granularity": "day", "days": 14}),
             ("track_feature_adoption", {}), ("track_feature_adoption", {"client_id": "acme"}),
             ("analyze_engagement_patterns", {"days": 14})]  # fmt: skip

    async def answers(as_of: str) -> list[dict[str, Any]]:
        async with Client(build_server(settings, background=False)) as client:
            return [await call(client, tool, args | {"as_of": as_of}) for tool, args in calls]

    first = await answers(AS_OF)
    # Later facts: usage on as_of's own date and after it, a customer registered later, a new scorecard, more seats.
    later = datetime(2026, 3, 10, tzinfo=UTC)
    register(services, "late", "acct-late", start=date(2026, 3, 5))
    ingest(services, [Use("acct-acme", "new-user", STOP, "Shared Dashboard"), Use("acct-globex", "g9", date(2026, 3, 9)),
                      Use("acct-late", "l1", date(2026, 3, 5))])  # fmt: skip
    services.app.configure_scorecard({"key_features": ["Shared Dashboard"]}, CommandMeta(actor="t", source="t", occurred_at=later))
    services.app.update_customer("acme", {"seats": 50}, CommandMeta(actor="t", source="t", occurred_at=later))
    services.engine.ensure_current()
    assert await answers(AS_OF) == first
    moved = await answers("2026-03-11T00:00:00Z")
    assert moved[3]["key_features_source"] == "scorecard" and moved[0]["last_usage_day"] == "2026-03-05"
    assert (first[0]["seats"], moved[0]["seats"]) == (20, 50)
