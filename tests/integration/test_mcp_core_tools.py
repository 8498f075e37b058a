"""The five core tools through the official MCP client, in process, on both backends."""

from __future__ import annotations

from typing import Any

import pytest
from mcp import Client

from events.settings import Settings
from mcp_server.server import build_server

pytestmark = pytest.mark.anyio

CUSTOMERS = [
    {"client_name": "Acme Corp", "arr": 42000, "seats": 50, "tier": "growth", "renewal_date": "2027-03-01",
     "owner": "Dana", "contact_name": "Ann Lee", "contact_email": "ann@acme.example"},
    {"client_id": "globex", "client_name": "Globex", "arr": 180000, "seats": 300, "tier": "enterprise",
     "renewal_date": "2026-12-20", "owner": "Sam"},
    {"client_name": "Initech", "arr": 9000, "seats": 12, "tier": "starter", "owner": "Dana"},
]  # fmt: skip


async def call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def error(client: Client, tool: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error
    return result.content[0].text  # type: ignore[union-attr]


async def test_tools_are_annotated_and_described(settings: Settings) -> None:
    async with Client(build_server(settings, background=False)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) >= {"register_client", "get_client_overview", "update_client_info", "list_clients", "get_client_timeline"}
    for tool in tools.values():
        assert tool.description and tool.annotations is not None and tool.output_schema is not None
    assert tools["list_clients"].annotations.read_only_hint is True  # type: ignore[union-attr]
    assert tools["register_client"].annotations.idempotent_hint is True  # type: ignore[union-attr]


async def test_register_list_update_overview_timeline(settings: Settings) -> None:
    async with Client(build_server(settings, background=False)) as client:
        registered = [await call(client, "register_client", c) for c in CUSTOMERS]
        assert [r["client_id"] for r in registered] == ["acme-corp", "globex", "initech"]
        assert all(r["status"] == "created" and r["position"] for r in registered)

        again = await call(client, "register_client", CUSTOMERS[1])
        assert again["status"] == "existing" and again["position"] is None

        listed = await call(client, "list_clients", {"sort": "arr"})
        assert [c["client_id"] for c in listed["items"]] == ["globex", "acme-corp", "initech"]
        dana = await call(client, "list_clients", {"owner": "dana"})
        assert {c["client_id"] for c in dana["items"]} == {"acme-corp", "initech"}

        updated = await call(client, "update_client_info", {"client_id": "initech", "changes": {"arr": 12000, "seats": 15}})
        assert updated["status"] == "updated"
        assert {(c["field"], c["old"], c["new"]) for c in updated["changes"]} == {("arr", 9000.0, 12000.0), ("seats", 12, 15)}

        # Read-your-writes: the overview right after the update shows it.
        overview = await call(client, "get_client_overview", {"client_id": "initech"})
        assert overview["contract"]["arr"] == 12000 and overview["contract"]["seats"] == 15
        # Its health is the health model's (ARR known, nothing else: the financial component alone).
        health = (await call(client, "calculate_health_score", {"client_id": "initech"}))["customer"]
        assert overview["health"]["score"] == health["score"] is not None
        assert (overview["health"]["band"], overview["health"]["confidence"]) == (health["band"], health["confidence"])
        assert overview["health"]["drivers"] == health["drivers"] and overview["health"]["trend"] == health["trend"]
        assert [(c["name"], c["score"], c["reason"]) for c in overview["health"]["components"]] == [
            (c["name"], c["score"], c["reason"]) for c in health["components"]]  # fmt: skip
        assert [c["name"] for c in overview["health"]["components"] if c["has_data"]] == ["financial"]
        acme = await call(client, "get_client_overview", {"client_id": registered[0]["id"]})  # by server id
        assert acme["client_id"] == "acme-corp"
        assert acme["contacts"] == [
            {"contact_id": acme["contacts"][0]["contact_id"], "name": "Ann Lee", "email": "ann@acme.example",
             "role": None, "primary": True}
        ]  # fmt: skip

        timeline = await call(client, "get_client_timeline", {"client_id": "initech"})
        assert [e["type"] for e in timeline["items"]] == ["customer.contract_changed", "customer.registered"]
        assert timeline["items"][0]["summary"] == "Contract changed: arr 9000.0 -> 12000.0; seats 12 -> 15"
        assert timeline["items"][0]["source"] == "mcp.update_client_info"
        only = await call(client, "get_client_timeline", {"client_id": "acme-corp", "types": ["customer.contact"]})
        assert [e["type"] for e in only["items"]] == ["customer.contact_added"]


async def test_pagination_walks_every_customer_once(settings: Settings) -> None:
    async with Client(build_server(settings, background=False)) as client:
        for i in range(7):
            await call(client, "register_client", {"client_name": f"Shop {i}", "arr": 100 * (i % 3)})
        seen, cursor, pages = [], None, 0
        while True:
            page = await call(client, "list_clients", {"limit": 3, "sort": "arr", **({"cursor": cursor} if cursor else {})})
            seen += [c["client_id"] for c in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == 3 and len(seen) == 7 and sorted(seen) == sorted(f"shop-{i}" for i in range(7))
        assert "cursor" in await error(client, "list_clients", {"cursor": "bm90LWEtY3Vyc29y"})


async def test_bad_input_names_the_field_and_records_nothing(settings: Settings) -> None:
    server = build_server(settings, background=False)
    async with Client(server) as client:
        await call(client, "register_client", CUSTOMERS[0])
        before = await call(client, "get_client_timeline", {"client_id": "acme-corp"})

        assert "arr" in await error(client, "register_client", {"client_name": "Neg", "arr": -1})
        assert "client_id: no customer 'nobody'" in await error(client, "get_client_overview", {"client_id": "nobody"})
        assert "client_id: no customer 'nobody'" in await error(
            client, "update_client_info", {"client_id": "nobody", "changes": {"arr": 1}}
        )
        message = await error(client, "update_client_info", {"client_id": "acme-corp", "changes": {"colour": "red"}})
        assert "changes.colour: unknown field" in message and "accepted fields are" in message
        assert "arr" in await error(client, "update_client_info", {"client_id": "acme-corp", "changes": {"arr": -3}})

        after = await call(client, "get_client_timeline", {"client_id": "acme-corp"})
        assert after == before
        listed = await call(client, "list_clients", {})
        assert [c["client_id"] for c in listed["items"]] == ["acme-corp"]
