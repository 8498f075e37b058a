"""An answer as of an instant after now says so: it is computed from what is recorded so far (the
days after now count as days without activity) and reads like data, so it must not pass for a
forecast. Instants up to now carry no such note."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from mcp import Client

from events.settings import Settings
from mcp_server.server import build_server
from mcp_server.services import open_services
from tests.integration.test_mcp_usage_tools import Use, ingest, register

pytestmark = pytest.mark.anyio


async def call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


def said_ahead(text: str | None, *names: str) -> bool:
    return bool(text) and "Not a forecast" in text and all(f"{n} " in text for n in names)  # type: ignore[operator]


async def test_answers_after_now_say_they_are_not_forecasts(settings: Settings) -> None:
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    with open_services(settings) as svc:
        register(svc, "beta", "acct-beta", seats=5)
        ingest(svc, [Use("acct-beta", f"u{n}", yesterday - timedelta(days=n)) for n in range(5)])
    later = (datetime.now(UTC) + timedelta(days=45)).isoformat()
    earlier = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    async with Client(build_server(settings, background=False)) as client:
        ahead = await call(client, "calculate_health_score", {"client_id": "beta", "as_of": later})
        assert said_ahead(ahead["note"], "as_of")
        assert ahead["customer"]["components"][0]["inputs"]["active_users_30d"] == 0  # what the note warns about
        both = await call(client, "calculate_health_score", {"client_id": "beta", "as_of": later, "compare_to": later})
        assert said_ahead(both["note"], "as_of", "compare_to")
        book = await call(client, "calculate_health_score", {"as_of": later})
        assert said_ahead(book["note"], "as_of")
        for args in ({"client_id": "beta"}, {"client_id": "beta", "as_of": earlier}, {"as_of": earlier}):
            assert (await call(client, "calculate_health_score", args))["note"] is None, args

        usage = await call(client, "track_usage_engagement", {"client_id": "beta", "as_of": later})
        assert said_ahead(usage["note"], "as_of") and usage["note"].startswith("no usage in this period")
        assert (await call(client, "track_usage_engagement", {"client_id": "beta"}))["note"] is None
        assert said_ahead((await call(client, "track_feature_adoption", {"as_of": later}))["note"], "as_of")
        assert said_ahead((await call(client, "analyze_engagement_patterns", {"as_of": later}))["note"], "as_of")
        assert said_ahead((await call(client, "backtest_health_model", {"as_of": later}))["note"], "as_of")

        stage = await call(client, "manage_lifecycle_stages", {"action": "get", "client_id": "beta", "as_of": later})
        assert said_ahead(stage["notes"][-1], "as_of")
        now_stage = await call(client, "manage_lifecycle_stages", {"action": "get", "client_id": "beta"})
        assert not any("Not a forecast" in n for n in now_stage["notes"])

        state = await call(client, "get_customer_state_as_of", {"client_id": "beta", "as_of": later})
        assert said_ahead(state["message"], "as_of")
        past = await call(client, "get_customer_state_as_of", {"client_id": "beta", "as_of": datetime.now(UTC).isoformat()})
        assert "Not a forecast" not in past["message"]
