"""End to end: `cs serve` as a subprocess, driven by the official MCP client over stdio."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from events.settings import Settings
from tests.conftest import MASTER_KEY

pytestmark = pytest.mark.anyio

CS = Path(sys.executable).with_name("cs")


def serve_params(settings: Settings) -> StdioServerParameters:
    assert CS.exists(), "the `cs` console script is installed with the package"
    env = {"CS_DATA_DIR": str(settings.data_dir), "CS_MASTER_KEY": MASTER_KEY}
    if settings.database_url:
        env["CS_DATABASE_URL"] = settings.database_url
    return StdioServerParameters(command=str(CS), args=["serve"], env=env)


async def call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def test_register_three_list_update_overview_timeline_over_stdio(settings: Settings) -> None:
    async with Client(serve_params(settings), read_timeout_seconds=60) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert "register_client" in names and "get_client_timeline" in names

        for name, arr in (("Northwind", 148000), ("Brightpath", 42000), ("Quillstack", 9600)):
            created = await call(client, "register_client", {"client_name": name, "arr": arr, "tier": "growth"})
            assert created["status"] == "created"

        listed = await call(client, "list_clients", {"sort": "arr"})
        assert [c["client_id"] for c in listed["items"]] == ["northwind", "brightpath", "quillstack"]

        updated = await call(client, "update_client_info", {"client_id": "quillstack", "changes": {"tier": "starter"}})
        assert updated["changes"] == [{"field": "tier", "old": "growth", "new": "starter"}]

        overview = await call(client, "get_client_overview", {"client_id": "quillstack"})
        assert overview["profile"]["tier"] == "starter" and overview["contract"]["arr"] == 9600

        timeline = await call(client, "get_client_timeline", {"client_id": "quillstack"})
        assert [e["type"] for e in timeline["items"]] == ["customer.profile_updated", "customer.registered"]

    # A second server process over the same store sees everything (the log is the truth).
    async with Client(serve_params(settings), read_timeout_seconds=60) as client:
        listed = await call(client, "list_clients", {})
        assert len(listed["items"]) == 3
