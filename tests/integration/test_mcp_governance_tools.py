"""get_customer_state_as_of and verify_audit_trail through the official MCP client, on both backends."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from mcp import Client

from events.settings import Settings
from mcp_server.server import build_server
from tests.integration.test_audit_chain import on_event_table
from tests.integration.test_mcp_core_tools import call, error

pytestmark = pytest.mark.anyio


async def test_governance_tools_are_read_only_and_described(settings: Settings) -> None:
    async with Client(build_server(settings, background=False)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    for name in ("get_customer_state_as_of", "verify_audit_trail"):
        tool = tools[name]
        assert tool.description and tool.output_schema is not None
        assert tool.annotations is not None and tool.annotations.read_only_hint is True


async def test_state_as_of_replays_the_past(settings: Settings) -> None:
    async with Client(build_server(settings, background=False)) as client:
        before = datetime.now(timezone.utc).isoformat()
        await call(client, "register_client", {"client_name": "Acme Corp", "arr": 42000, "tier": "growth",
                                               "contact_name": "Ann Lee", "contact_email": "ann@acme.example"})  # fmt: skip
        t1 = datetime.now(timezone.utc).isoformat()
        await call(client, "update_client_info", {"client_id": "acme-corp", "changes": {"arr": 50000}})

        past = await call(client, "get_customer_state_as_of", {"client_id": "acme-corp", "as_of": t1})
        assert past["existed"] is True and past["state"]["profile"]["arr"] == 42000
        assert past["state"]["contacts"][0]["email"] == "ann@acme.example"
        # Health and stage as of t1 are the health model's answers for that instant.
        then = (await call(client, "calculate_health_score", {"client_id": "acme-corp", "as_of": t1}))["customer"]
        assert past["state"]["health"] == {"score": then["score"], "band": then["band"], "confidence": then["confidence"],
                                           "drivers": then["drivers"], "note": then["note"]}  # fmt: skip
        assert past["state"]["health"]["score"] is not None  # ARR was known: the financial component
        stage = await call(client, "manage_lifecycle_stages", {"action": "get", "client_id": "acme-corp", "as_of": t1})
        assert past["state"]["stage"] == stage["customer"]["stage"] is not None
        assert [e["type"] for e in past["state"]["events"]] == ["customer.registered", "customer.contact_added"]

        current = await call(
            client, "get_customer_state_as_of", {"client_id": "acme-corp", "as_of": "2999-01-01T00:00:00"}
        )
        assert current["state"]["profile"]["arr"] == 50000 and current["as_of"].startswith("2999-01-01T00:00:00")
        as_known = await call(client, "get_customer_state_as_of",
                              {"client_id": "acme-corp", "as_of": "2999-01-01T00:00:00Z", "known_at": t1})  # fmt: skip
        assert as_known["state"]["profile"]["arr"] == 42000
        assert as_known["state"]["health"]["score"] is None and as_known["state"]["stage"] is None
        assert "known_at" in as_known["state"]["health"]["note"]

        nothing = await call(client, "get_customer_state_as_of", {"client_id": "acme-corp", "as_of": before})
        assert nothing["existed"] is False and nothing["state"] is None and "did not exist yet" in nothing["message"]

        unknown = await error(client, "get_customer_state_as_of", {"client_id": "nobody", "as_of": t1})
        assert "client_id: no customer 'nobody'" in unknown
        bad_time = await error(client, "get_customer_state_as_of", {"client_id": "acme-corp", "as_of": "last tuesday"})
        assert "as_of" in bad_time


async def test_verify_audit_trail_reports_the_first_broken_link(settings: Settings) -> None:
    async with Client(build_server(settings, background=False)) as client:
        for name in ("Acme", "Globex", "Initech"):
            await call(client, "register_client", {"client_name": name})
        clean = await call(client, "verify_audit_trail", {})
        assert clean["ok"] is True and clean["first_broken"] is None
        assert clean["checked"] == clean["head"] == 3 and clean["unverified"] == 0
        assert clean["message"].startswith("intact: 3 event(s) checked")

        on_event_table(settings, "UPDATE {table} SET state = ? WHERE {position} = ?", (b"{}", 2))
        broken = await call(client, "verify_audit_trail", {})
        assert broken["ok"] is False and broken["first_broken"] == 2 and broken["checked"] == 1
        assert broken["message"].startswith("broken at position 2: stored event differs")
