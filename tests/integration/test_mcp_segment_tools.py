"""segment_customers (every action), segment_by_value_tier, and the segment / health filters of
list_clients and get_client_overview, through the official MCP client on both backends."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from mcp import Client

from events.commands import CommandMeta
from events.settings import Settings
from mcp_server.server import build_server
from mcp_server.services import open_services

pytestmark = pytest.mark.anyio
META = CommandMeta(actor="test", source="test")
TIER_NAMES = ("starter", "growth", "enterprise", "strategic")

# key, arr, renewal in days (None: no date), industry, tier. With no other signal the health
# model has only its financial component: renewal > 90 days away 100 (green), 31-90 days 75
# (green), <= 30 days 50 (yellow), passed 20 (red); no ARR and no renewal date: unknown.
BOOK: list[tuple[str, float | None, int | None, str, str]] = [
    ("globex", 180000, 200, "manufacturing", "enterprise"),
    ("stark", 150000, 20, "manufacturing", "enterprise"),
    ("umbrella", 75000, 60, "pharma", "enterprise"),
    ("acme", 42000, 20, "retail", "growth"),
    ("wayne", 10000, -5, "retail", "growth"),
    ("initech", 9000, -10, "software", "starter"),
    ("hooli", None, None, "software", "starter"),
    ("churnco", 60000, 100, "retail", "growth"),
]


def _load(settings: Settings, extra: int = 0) -> None:
    """The book (plus ``extra`` generated accounts), churnco churned, and NPS answers, through
    the same command and file-import paths a user takes."""
    today = datetime.now(UTC).date()
    rows = list(BOOK) + [(f"c{i:02d}", 5000.0 * i, (-5, 20, 200)[i % 3], "retail", "growth") for i in range(extra)]
    with open_services(settings) as svc:
        for key, arr, renewal, industry, tier in rows:
            data = {"external_key": key, "name": key.title(), "arr": arr, "industry": industry, "tier": tier,
                    "renewal_date": (today + timedelta(days=renewal)).isoformat() if renewal is not None else None}  # fmt: skip
            svc.app.register_customer(data, META)
        svc.app.churn_customer("churnco", {"churned_on": today.isoformat(), "reason": "budget"}, META)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["response_id", "customer", "email", "score", "comment", "responded_at"])
        for rid, key, score, days in (("r1", "umbrella", 9, 40), ("r2", "umbrella", 3, 5), ("r3", "acme", 10, 3)):
            when = datetime.combine(today - timedelta(days=days), datetime.min.time(), UTC)
            writer.writerow([rid, key, f"ops@{key}.example", score, "", when.isoformat()])
        report = svc.ingestion(actor="test").import_file("nps", io.StringIO(out.getvalue()), "nps.csv")
        assert not report.rejected and report.recorded == 3, report.as_dict()


def log_position(settings: Settings) -> int:
    with open_services(settings, run_projections=False) as svc:
        return svc.app.last_position()


async def call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def error(client: Client, tool: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error, result.structured_content
    return " ".join(getattr(block, "text", "") for block in result.content)


async def all_pages(client: Client, tool: str, args: dict[str, Any], key: str = "items") -> list[dict[str, Any]]:
    items, cursor, pages = [], None, 0
    while True:
        page = await call(client, tool, {**args, **({"cursor": cursor} if cursor else {})})
        items += page[key]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return items
        assert pages < 100


async def health_by_key(client: Client) -> dict[str, dict[str, Any]]:
    """Independent of the segment code: the health tool's own answer for every customer."""
    book = await all_pages(client, "calculate_health_score", {"include_churned": True, "limit": 200})
    return {h["client_id"]: h for h in book}


async def test_every_action_of_segment_customers(settings: Settings) -> None:
    _load(settings)
    async with Client(build_server(settings, background=False)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert tools["segment_customers"].annotations.destructive_hint is True  # type: ignore[union-attr]
        assert tools["segment_by_value_tier"].annotations.read_only_hint is True  # type: ignore[union-attr]
        health = await health_by_key(client)

        # define (JSON form): totals over the active members now
        rules = {"all": [{"field": "arr", "op": ">=", "value": 50000}, {"field": "band", "op": "!=", "value": "red"}]}
        defined = await call(client, "segment_customers", {"action": "define", "name": "Large healthy", "rules": rules,
                                                           "description": "named-CSM candidates"})  # fmt: skip
        assert defined["status"] == "defined" and defined["position"]
        seg = defined["segment"]
        assert seg["rules"] == rules and seg["rules_text"] == "arr >= 50000 and band != red"
        assert seg["population"] == "active customers" and seg["description"] == "named-CSM candidates"
        expected = ["globex", "stark", "umbrella"]  # churnco (60k) is churned
        scores = [health[k]["score"] for k in expected]
        assert seg["totals"] == {"count": 3, "arr": 405000.0, "mean_health": round(sum(scores) / 3, 1), "scored": 3,
                                 "bands": {b: sum(health[k]["band"] == b for k in expected)
                                           for b in ("green", "yellow", "red", "unknown")}}  # fmt: skip

        # define (text form), and a segment over every status because its rules test status
        text = await call(client, "segment_customers", {"action": "define", "name": "Detractors",
                                                        "rules": "nps <= 6 or band = red"})  # fmt: skip
        assert text["segment"]["rules"] == {"any": [{"field": "nps", "op": "<=", "value": 6},
                                                    {"field": "band", "op": "=", "value": "red"}]}  # fmt: skip
        lost = await call(client, "segment_customers", {"action": "define", "name": "Lost retail",
                                                        "rules": "status = churned and industry = RETAIL"})  # fmt: skip
        assert lost["segment"]["population"] == "all customers" and lost["segment"]["totals"]["count"] == 1

        # list: every segment by name with its totals, paginated
        listed = await all_pages(client, "segment_customers", {"action": "list", "limit": 2}, key="segments")
        assert [s["name"] for s in listed] == ["Detractors", "Large healthy", "Lost retail"]
        detractors = {k for k, h in health.items() if k != "churnco" and h["band"] == "red"} | {"umbrella"}
        assert listed[0]["totals"]["count"] == len(detractors)
        assert listed[1]["totals"] == seg["totals"]

        # members: largest ARR first, paginated, totals over all members
        first = await call(client, "segment_customers", {"action": "members", "name": "large HEALTHY", "limit": 2})
        assert [m["client_id"] for m in first["members"]] == ["globex", "stark"] and first["next_cursor"]
        assert first["segment"]["totals"]["count"] == 3
        rest = await call(client, "segment_customers", {"action": "members", "name": "Large healthy", "limit": 2,
                                                        "cursor": first["next_cursor"]})  # fmt: skip
        assert [m["client_id"] for m in rest["members"]] == ["umbrella"] and rest["next_cursor"] is None
        umbrella = rest["members"][0]
        assert (umbrella["arr"], umbrella["health"], umbrella["band"], umbrella["nps"]) == (
            75000.0, health["umbrella"]["score"], health["umbrella"]["band"], 3)

        # update: rules (old and new kept in the event), then the description alone
        updated = await call(client, "segment_customers", {"action": "update", "name": "Large healthy",
                                                           "rules": "arr >= 100000"})  # fmt: skip
        assert updated["status"] == "updated" and updated["changes"] == ["rules"]
        assert updated["segment"]["totals"]["count"] == 2 and updated["segment"]["description"] == "named-CSM candidates"
        described = await call(client, "segment_customers", {"action": "update", "name": "Large healthy", "description": ""})
        assert described["changes"] == ["description"] and described["segment"]["description"] is None
        same = await call(client, "segment_customers", {"action": "update", "name": "Large healthy", "rules": "arr >= 100000"})
        assert same["status"] == "unchanged" and same["position"] is None

        # delete: gone from list and members; its name can be defined again
        deleted = await call(client, "segment_customers", {"action": "delete", "name": "Lost retail"})
        assert deleted["status"] == "deleted" and deleted["segment"]["totals"] is None
        names = [s["name"] for s in (await call(client, "segment_customers", {"action": "list"}))["segments"]]
        assert names == ["Detractors", "Large healthy"]
        gone = await error(client, "segment_customers", {"action": "members", "name": "Lost retail"})
        assert "name: no segment named 'Lost retail'" in gone
        again = await call(client, "segment_customers",
                           {"action": "define", "name": "Lost retail", "rules": "status = churned"})  # fmt: skip
        assert again["status"] == "defined"

        overview = await call(client, "get_client_overview", {"client_id": "umbrella"})
        assert overview["segments"] == ["Detractors"]


async def test_values_no_customer_has_are_said(settings: Settings) -> None:
    """A text value in the rules that no customer has ('Manufactoring', an owner's first name)
    would empty (or, with !=, fill) a segment without a word: the result says which, and what
    the book has. The segment is defined all the same (a value may be about to exist)."""
    _load(settings)
    async with Client(build_server(settings, background=False)) as client:
        defined = await call(client, "segment_customers", {"action": "define", "name": "Factories", "rules": {
            "any": [{"field": "industry", "op": "in", "value": ["Manufactoring", "PHARMA"]},
                    {"not": {"field": "tier", "op": "!=", "value": "strategic"}}]}})  # fmt: skip
        listed = await call(client, "segment_customers", {"action": "members", "name": "Factories"})
        fine = await call(client, "segment_customers", {"action": "define", "name": "Makers",
                                                        "rules": "industry = MANUFACTURING"})  # fmt: skip
        typo = await call(client, "list_clients", {"industry": "Manufactoring", "tier": "Enterprise"})
        found = await call(client, "list_clients", {"industry": "Manufacturing", "tier": "Enterprise"})
        none = await call(client, "list_clients", {"industry": "pharma", "tier": "starter"})  # both exist, not together
    expected = ["industry 'Manufactoring': no customer has this industry (industry values now: manufacturing, pharma, "
                "retail, software)",
                "tier 'strategic': no customer has this tier (tier values now: enterprise, growth, starter)"]  # fmt: skip
    assert defined["status"] == "defined" and defined["notes"] == expected
    assert [m["client_id"] for m in listed["members"]] == ["umbrella"] and listed["notes"] == expected
    assert fine["notes"] == [] and fine["segment"]["totals"]["count"] == 2  # case-insensitive, as the rules match
    # list_clients' text filters likewise, when nothing matched.
    assert typo["items"] == [] and typo["notes"] == [expected[0]]
    assert [c["client_id"] for c in found["items"]] == ["globex", "stark"] and found["notes"] == []
    assert none["items"] == [] and none["notes"] == []


async def test_bad_input_is_named_and_records_nothing(settings: Settings) -> None:
    _load(settings)
    async with Client(build_server(settings, background=False)) as client:
        await call(client, "segment_customers", {"action": "define", "name": "Big", "rules": "arr >= 50000"})
        head = log_position(settings)
        cases: list[tuple[dict[str, Any], str]] = [
            ({"action": "define", "name": "X", "rules": {"field": "revenue", "op": ">", "value": 1}},
             "rules.field: unknown field 'revenue'; fields: arr, seats, tier"),
            ({"action": "define", "name": "X", "rules": {"all": [{"field": "arr", "op": ">=", "value": "50k"}]}},
             "rules.all[0].value: arr is a number"),
            ({"action": "define", "name": "X", "rules": {"field": "band", "op": "=", "value": "amber"}},
             "rules.value: band is one of green, yellow, red, unknown"),
            ({"action": "define", "name": "X", "rules": "arr >= 5 and"}, "rules: expected a field name"),
            ({"action": "define", "name": "X"}, "rules: required for action 'define'"),
            ({"action": "define", "rules": "arr > 1"}, "name: required for action 'define'"),
            ({"action": "define", "name": "big", "rules": "arr > 1"}, "name: a segment named 'Big' already exists"),
            ({"action": "update", "name": "Huge", "rules": "arr > 1"}, "name: no segment named 'Huge'"),
            ({"action": "update", "name": "Big"}, "rules or description: give at least one"),
            ({"action": "update", "name": "Big", "rules": {"field": "tier", "op": ">", "value": "a"}},
             "rules.op: '>' does not apply to the text field 'tier'"),
            ({"action": "delete", "name": "Huge"}, "name: no segment named 'Huge'"),
            ({"action": "members", "name": "Huge"}, "name: no segment named 'Huge'"),
            ({"action": "members", "name": "Big", "cursor": "bm90IGEgY3Vyc29y"}, "cursor: not a cursor from this list"),
        ]  # fmt: skip
        for args, message in cases:
            assert message in await error(client, "segment_customers", args), args
        assert "segment: no segment named 'Huge'" in await error(client, "list_clients", {"segment": "Huge"})
        assert "bounds: give exactly 3 ARR thresholds" in await error(client, "segment_by_value_tier", {"bounds": [1, 2]})
        assert "bounds[1]: 1 is not above 5" in await error(client, "segment_by_value_tier", {"bounds": [5, 1, 9]})
    assert log_position(settings) == head


async def test_membership_follows_update_client_info(settings: Settings) -> None:
    _load(settings)
    async with Client(build_server(settings, background=False)) as client:
        await call(client, "segment_customers", {"action": "define", "name": "Big", "rules": "arr >= 50000"})

        async def big() -> list[str]:
            page = await call(client, "segment_customers", {"action": "members", "name": "Big"})
            return [m["client_id"] for m in page["members"]]

        assert await big() == ["globex", "stark", "umbrella"]
        assert (await call(client, "get_client_overview", {"client_id": "acme"}))["segments"] == []
        await call(client, "update_client_info", {"client_id": "acme", "changes": {"arr": 95000}})
        # read-your-writes: the very next read sees the new ARR
        assert await big() == ["globex", "stark", "acme", "umbrella"]
        assert (await call(client, "get_client_overview", {"client_id": "acme"}))["segments"] == ["Big"]
        listed = await call(client, "list_clients", {"segment": "big", "sort": "arr"})
        assert [c["client_id"] for c in listed["items"]] == ["globex", "stark", "acme", "umbrella"]
        await call(client, "update_client_info", {"client_id": "acme", "changes": {"arr": 1000}})
        assert await big() == ["globex", "stark", "umbrella"]


async def test_value_tiers_match_an_independent_computation(settings: Settings) -> None:
    _load(settings, extra=9)
    async with Client(build_server(settings, background=False)) as client:
        customers = await all_pages(client, "list_clients", {"status": "active", "limit": 200})
        health = await health_by_key(client)
        for bounds in (None, [20000, 45000, 150001]):
            report = await call(client, "segment_by_value_tier", {} if bounds is None else {"bounds": bounds})
            cuts = bounds or [10000, 50000, 150000]
            assert report["bounds"] == cuts
            expected: dict[str, list[dict[str, Any]]] = {t: [] for t in TIER_NAMES}
            for c in customers:
                if c["arr"] is not None:
                    index = 0 if c["arr"] < cuts[0] else 1 if c["arr"] < cuts[1] else 2 if c["arr"] < cuts[2] else 3
                    expected[TIER_NAMES[index]].append(c)
            for tier in report["tiers"]:
                group = expected[tier["tier"]]
                scores = [health[c["client_id"]]["score"] for c in group if health[c["client_id"]]["score"] is not None]
                assert tier["count"] == len(group), tier
                assert tier["arr"] == pytest.approx(sum(c["arr"] for c in group))
                assert tier["health_mix"] == {b: sum(health[c["client_id"]]["band"] == b for c in group)
                                              for b in ("green", "yellow", "red", "unknown")}  # fmt: skip
                assert tier["mean_health"] == (pytest.approx(sum(scores) / len(scores), abs=0.05) if scores else None)
                assert tier["service_level"].split(":")[0] in ("tech-touch", "pooled CSM", "named CSM", "executive sponsor")
            assert report["without_arr"] == {"count": 1, "client_ids": ["hooli"]}
            assert report["active_customers"] == len(customers) and "churnco" not in {c["client_id"] for c in customers}
        default = await call(client, "segment_by_value_tier", {})
        assert [t["tier"] for t in default["tiers"]] == list(TIER_NAMES)
        assert [(t["min_arr"], t["max_arr"]) for t in default["tiers"]] == [
            (0, 10000), (10000, 50000), (50000, 150000), (150000, None)]  # fmt: skip
        assert {t["tier"]: t["count"] for t in default["tiers"]}["strategic"] == 2  # globex, and stark at the bound


async def test_list_clients_segment_and_health_filters_paginate(settings: Settings) -> None:
    _load(settings, extra=12)
    async with Client(build_server(settings, background=False)) as client:
        everyone = await all_pages(client, "list_clients", {"limit": 200})
        health = await health_by_key(client)
        arr = {c["client_id"]: c["arr"] for c in everyone}
        status = {c["client_id"]: c["status"] for c in everyone}
        await call(client, "segment_customers", {"action": "define", "name": "Retail not red",
                                                 "rules": "industry = retail and band != red"})  # fmt: skip
        want_segment = {c["client_id"] for c in everyone if status[c["client_id"]] == "active"
                        and c["industry"] == "retail" and health[c["client_id"]]["band"] != "red"}  # fmt: skip
        assert len(want_segment) > 5
        for sort in ("name", "arr", "renewal_date"):
            paged = await all_pages(client, "list_clients", {"segment": "Retail not red", "sort": sort, "limit": 2})
            keys = [c["client_id"] for c in paged]
            assert len(keys) == len(set(keys)) and set(keys) == want_segment, sort
            whole = await call(client, "list_clients", {"segment": "Retail not red", "sort": sort, "limit": 200})
            assert keys == [c["client_id"] for c in whole["items"]]  # pages concatenate to the one-page order

        for band in ("green", "yellow", "red", "unknown"):
            paged = await all_pages(client, "list_clients", {"band": band, "limit": 3})
            assert {c["client_id"] for c in paged} == {k for k, h in health.items() if h["band"] == band}, band
        ranged = await all_pages(client, "list_clients", {"min_health": 40, "max_health": 80, "limit": 2, "sort": "arr"})
        assert {c["client_id"] for c in ranged} == {k for k, h in health.items()
                                                    if h["score"] is not None and 40 <= h["score"] <= 80}  # fmt: skip
        assert [arr[c["client_id"]] or -1 for c in ranged] == sorted((arr[c["client_id"]] or -1 for c in ranged), reverse=True)
        combined = await all_pages(client, "list_clients",
                                   {"segment": "Retail not red", "band": "yellow", "min_arr": 20000, "limit": 2})  # fmt: skip
        assert {c["client_id"] for c in combined} == {k for k in want_segment
                                                      if health[k]["band"] == "yellow" and (arr[k] or 0) >= 20000}  # fmt: skip
        empty = await call(client, "list_clients", {"band": "green", "industry": "nowhere"})
        assert empty["items"] == [] and empty["next_cursor"] is None
        assert empty["notes"] == ["industry 'nowhere': no customer has this industry (industry values now: manufacturing, "
                                  "pharma, retail, software)"]  # fmt: skip


async def test_stage_rules_agree_with_the_overview_stage(settings: Settings) -> None:
    _load(settings)
    async with Client(build_server(settings, background=False)) as client:
        stages = {key: (await call(client, "get_client_overview", {"client_id": key}))["stage"]
                  for key, *_ in BOOK if key != "churnco"}  # fmt: skip
        for stage in sorted(set(stages.values()) - {None}):
            await call(client, "segment_customers", {"action": "define", "name": f"In {stage}", "rules": f"stage = {stage}"})
            page = await call(client, "segment_customers", {"action": "members", "name": f"In {stage}"})
            assert {m["client_id"] for m in page["members"]} == {k for k, s in stages.items() if s == stage}, stage
            overview = await call(client, "get_client_overview", {"client_id": page["members"][0]["client_id"]})
            assert f"In {stage}" in overview["segments"]
